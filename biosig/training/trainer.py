"""The staged fine-tuning loop, below the commands: `fit` trains a classifier through a schedule of stages
(1 head only, 2 head + the last blocks or LoRA adapters, 3 everything), each with its own AdamW + cosine
warm-up and early stopping on the selection metric, keeps the best state over all stages, merges LoRA, and
re-wraps DDP per stage. It logs metrics through a `TrainingLog` (a tracked run, a torchrun follower, or a
plain list in tests) and returns what happened (`FitOutcome`): the command turns that into tags.

`finetune` (its model, the scratch reference, every CV fold and the refit) and `tune` (each trial) all
call `fit`; `score` is how every one of them evaluates a split.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import time
from typing import Any, Callable, Protocol

import numpy as np
import torch
from sklearn.utils.class_weight import compute_class_weight
from torch import nn
from torch.utils.data import DistributedSampler

from biosig import backbones
from biosig.errors import ConfigError, TrainingError
from biosig.logs import banner, get_logger
from biosig.models.freezing import (
    GradientMasks,
    StageCounts,
    apply_stage,
    check_unfreeze,
    count_stage,
    param_groups,
    set_train_mode,
)
from biosig.models.heads import Classifier
from biosig.models.lora import LORA_MARK, add_lora, has_lora, merge_lora
from biosig.training import loop
from biosig.training.labelled import LabelledSplits
from biosig.training.metrics import collapsed_classes, split_metrics
from biosig.training.settings import FitSettings, Stage, parse_class_weights
from biosig.training.stream import EpochBatches, stream_loader

log = get_logger(__name__)


class TrainingLog(Protocol):
    """Where the loop's per-epoch metrics go (step = epoch): a tracked run, a follower process, a list."""

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None: ...

    def flush_metrics(self, wait: bool = True) -> None: ...


@dataclasses.dataclass
class ListLog:
    """A `TrainingLog` kept in memory: tests and untracked callers read `rows` as (step, metrics)."""

    rows: list[tuple[int, dict[str, float]]] = dataclasses.field(default_factory=list)

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        self.rows.append((step, dict(metrics)))

    def flush_metrics(self, wait: bool = True) -> None:
        pass

    def series(self, key: str) -> list[float]:
        return [metrics[key] for _, metrics in self.rows if key in metrics]


@dataclasses.dataclass
class FitOutcome:
    """What a fit did. `model` holds the best state (LoRA merged)."""

    model: Classifier
    best_state: dict[str, torch.Tensor]
    best_epoch: int
    best_val: dict[str, float]
    epochs_run: int
    history: list[dict[str, Any]]
    stage_counts: dict[int, dict[str, Any]]
    collapsed: list[str]  # classes the model (nearly) never predicted after stage 1
    class_weights: np.ndarray | None  # the loss's class weights, when any
    selection_fallback: bool  # the selection metric was undefined on val at least once: selected on val loss
    lora_layers: list[str]
    stopped: bool = False  # `on_epoch` asked to stop (a pruned trial)

    @property
    def trainable(self) -> int:
        """The most parameters any stage trained."""
        return max((c["trainable"] for c in self.stage_counts.values()), default=0)

    def best_value(self, metric: str) -> float:
        """The best val `metric` of any epoch (lowest loss), ignoring epochs where it was undefined."""
        values = [row[f"val_{metric}"] for row in self.history if not math.isnan(row[f"val_{metric}"])]
        if not values:
            raise ValueError(f"val_{metric} is undefined for every epoch (the val split lacks a class)")
        return min(values) if metric == "loss" else max(values)


#: called after each epoch with (epoch, val metrics); returning True stops training (an Optuna prune)
EpochCallback = Callable[[int, dict[str, float]], bool]


def fit(log_to: TrainingLog, settings: FitSettings, model: Classifier, data: LabelledSplits, schedule: list[Stage], *,
        masks: GradientMasks | None = None, device: torch.device | None = None, generator: torch.Generator | None = None,
        dist: loop.Distributed | None = None, on_epoch: EpochCallback | None = None) -> FitOutcome:
    """Train `model` (already on `device`) through `schedule`; see the module docstring."""
    device = device or torch.device("cpu")
    check_unfreeze(settings.unfreeze_last_n, len(model.backbone.blocks()))
    trainer = _Trainer(log_to, settings, model, masks, data, device, generator or loop.seed_everything(settings.seed),
                       schedule, dist or loop.Distributed(), on_epoch)
    return trainer.run()


@torch.no_grad()
def score(model: nn.Module, data: LabelledSplits, split: str, settings: FitSettings, device: torch.device,
          epoch: int = 0) -> tuple[dict[str, float], np.ndarray]:
    """Loss and metrics of `model` on `split` (in memory or streamed), and its class probabilities."""
    model.eval()
    scores = []
    for x in data.inputs(split):  # in the order of y
        with loop.autocast(device, settings.amp):
            scores.append(model(torch.from_numpy(x).to(device)).float().cpu())
    logits = torch.cat(scores)
    y_true = data.y[split]
    loss = nn.functional.cross_entropy(logits, torch.from_numpy(y_true), reduction="mean").item()
    prob = torch.softmax(logits, dim=-1).numpy()
    if not math.isfinite(loss):
        raise TrainingError(f"{split} loss is {loss} at epoch {epoch}: lower lr or set amp=off")
    metrics = split_metrics(y_true, prob, data.subject[split], data.class_names, settings.aggregate,
                            settings.selection_level)
    return {"loss": loss, **metrics}, prob


def class_weights(spec: str, y: np.ndarray, n_classes: int) -> np.ndarray | None:
    """The loss's class weights: auto balances the classes present in `y` (absent ones weigh 1)."""
    if spec == "none":
        return None
    if spec == "auto":
        present = np.unique(y)
        weights = np.ones(n_classes, dtype=np.float32)
        weights[present] = compute_class_weight("balanced", classes=present, y=y)
        return weights
    weights = parse_class_weights(spec)
    if len(weights) != n_classes:
        raise ConfigError(f"config key 'class_weights' lists {len(weights)} weights for {n_classes} classes")
    return weights


class _Trainer:
    """One fit's state: the loaders, the criterion, the progress and the best state so far."""

    def __init__(self, log_to: TrainingLog, settings: FitSettings, model: Classifier, masks: GradientMasks | None,
                 data: LabelledSplits, device: torch.device, generator: torch.Generator, schedule: list[Stage],
                 dist: loop.Distributed, on_epoch: EpochCallback | None) -> None:
        self.log_to, self.settings, self.model, self.masks, self.data = log_to, settings, model, masks, data
        self.device, self.schedule, self.dist, self.on_epoch = device, schedule, dist, on_epoch
        self.trained: nn.Module = model  # what the training step calls: the model, or its DDP wrapper
        s = settings
        self.weights = class_weights(s.class_weights, data.y["train"], len(data.class_names))
        self.criterion = nn.CrossEntropyLoss(weight=None if self.weights is None
                                             else torch.tensor(self.weights).to(device))
        self.planned_epochs = sum(stage.epochs for stage in schedule)  # early stopping may end sooner
        self.stream = data.streamed.train_stream(s.batch_size, s.seed, dist) if data.streamed is not None else None
        if self.stream is not None:
            log.info(f"  streamed: {self.stream.use_cache(s.stream_cache, self.planned_epochs)}")
        self.train_loader = (stream_loader(self.stream, s.data_workers) if self.stream is not None else
                             loop.loader([data.x["train"], data.y["train"]], s.batch_size, shuffle=True,
                                         generator=generator, dist=dist, seed=s.seed))
        self.streamed_epochs = EpochBatches(self.stream, self.train_loader) if self.stream is not None else None
        self.steps_per_epoch = (self.stream.batches_per_epoch(max(1, s.data_workers)) if self.stream is not None
                                else len(self.train_loader))
        self.progress = loop.TrainingProgress()  # epochs count on across stages
        self.best_val: dict[str, float] = {}
        self.best_state: dict[str, torch.Tensor] = {}
        self.collapsed: list[str] = []
        self.stage_counts: dict[int, dict[str, Any]] = {}
        self.selection_fallback = False
        self.stopped = False
        self.lora_layers: list[str] = []

    @property
    def epoch(self) -> int:
        return self.progress.epoch

    def run(self) -> FitOutcome:
        for stage in self.schedule:
            if stage.epochs and not self.stopped:
                self._stage(stage)
                if stage.number == 1:
                    self._check_collapse()
        if has_lora(self.model.backbone):
            self._merge_lora()
        elif self.best_state:
            self.model.load_state_dict(self.best_state)
        self.log_to.flush_metrics()
        return FitOutcome(self.model, self.best_state, self.progress.best_epoch, self.best_val, self.epoch,
                          self.progress.history, self.stage_counts, self.collapsed, self.weights,
                          self.selection_fallback, self.lora_layers, self.stopped)

    def _stage(self, stage: Stage) -> None:
        s = self.settings
        lora = stage.number == 2 and s.adaptation == "lora"
        counts = self._add_lora() if lora else apply_stage(self.model, stage.number, s.unfreeze_last_n, self.masks)
        self.stage_counts[stage.number] = dataclasses.asdict(counts)
        self.trained = self._data_parallel()
        log.info(f"  {counts.describe()}")
        optimizer, scheduler = loop.optimizer_and_schedule(param_groups(self.model, self.masks), stage.lr,
                                                           s.weight_decay, stage.epochs * self.steps_per_epoch,
                                                           s.warmup_fraction)
        stale = 0
        for _ in range(stage.epochs):
            improved = self._epoch(stage.number, optimizer, scheduler, lora)
            stale = 0 if improved else stale + 1
            if self.stopped:
                break
            if stale >= s.patience:
                log.info(f"  early stop of stage {stage.number}: no better val {s.selection_metric} in {stale} epochs")
                break

    def _epoch(self, stage: int, optimizer, scheduler, lora: bool) -> bool:
        """One epoch and its validation; True when it is the best so far."""
        self.progress.epoch += 1
        started = time.perf_counter()
        batches = self.train_loader
        if self.streamed_epochs is not None:
            batches = self.streamed_epochs.epoch(self.epoch)
        elif isinstance(self.train_loader.sampler, DistributedSampler):
            self.train_loader.sampler.set_epoch(self.epoch)
        train_loss, seen = self._train_epoch(stage, optimizer, scheduler, lora, batches)
        train_s = time.perf_counter() - started
        if self.streamed_epochs is not None and self.epoch < self.planned_epochs:
            self.streamed_epochs.prepare(self.epoch + 1)  # readers fill the next epoch's buffer during validation
        # rank 0 validates and every process follows its verdict (best state, early stop)
        val = self.dist.from_leader(
            score(self.model, self.data, "val", self.settings, self.device, self.epoch)[0] if self.dist.leader else None)
        row = {"stage": stage, "train_loss": train_loss, "lr": scheduler.get_last_lr()[0],
               "train_windows_per_s": seen / train_s,  # all processes together, validation excluded
               **{f"val_{k}": v for k, v in val.items()}}
        self.log_to.log_metrics(row, step=self.epoch)
        self.log_to.flush_metrics(wait=False)  # per epoch, in the background: the UI shows live curves
        improved = self.progress.record(row, self._selection_score(val))
        if improved:
            self.best_val = val
            self.best_state = _copy_state(self.model)
        log.info(f"  epoch {self.epoch}/{self.planned_epochs} (stage {stage}): train_loss {train_loss:.4f}  "
                 f"val_loss {val['loss']:.4f}  val_auroc {val['auroc']:.3f}  val_f1 {val['f1']:.3f}"
                 f"{'  *best' if improved else ''}  ({time.perf_counter() - started:.1f} s)")
        if self.on_epoch is not None and self.on_epoch(self.epoch, val):
            self.stopped = True
        return improved

    def _data_parallel(self) -> nn.Module:
        """The model under DDP when several processes train; wrapped anew each stage, because DDP reduces
        the gradients of the parameters that were trainable when it was built."""
        if not self.dist.active:
            return self.model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(self.model, device_ids=ids)

    def _add_lora(self) -> StageCounts:
        """Stage 2 of adaptation=lora: the backbone frozen (head trainable), LoRA adapters on the layers its
        spec names (`lora_targets`), trained with the head."""
        s = self.settings
        apply_stage(self.model, 1, 0, self.masks)
        targets = backbones.get(self.model.backbone.arch).lora_targets
        layers = add_lora(self.model.backbone, targets, s.lora_rank, s.lora_alpha, s.lora_dropout)
        self.model.to(self.device)
        self.lora_layers = layers
        return count_stage(self.model, self.masks, 2, [f"LoRA r={s.lora_rank} alpha={s.lora_alpha:g} on "
                                                       f"{len(layers)} layers ({', '.join(targets) or 'Linear'})"])

    def _merge_lora(self) -> None:
        """The best state as a plain model: a stage-2 best (with adapters) is merged into the weights; a
        stage-1 best never had adapters, so they are dropped."""
        adapted_best = any(LORA_MARK in key for key in self.best_state)
        if adapted_best:
            self.model.load_state_dict(self.best_state)
        merge_lora(self.model.backbone)
        if not adapted_best:
            self.model.load_state_dict(self.best_state)
        self.best_state = _copy_state(self.model)

    def _selection_score(self, val: dict[str, float]) -> float:
        """Higher is better. A validation split with one class has no AUROC: select on loss then."""
        metric = self.settings.selection_metric
        if metric != "loss" and math.isnan(val[metric]):
            if not self.selection_fallback:
                log.info(f"  note: val {metric} is undefined (the val split lacks a class); selecting on val loss")
                self.selection_fallback = True
            metric = "loss"
        return -val["loss"] if metric == "loss" else val[metric]

    def _train_epoch(self, stage: int, optimizer, scheduler, lora: bool, batches) -> tuple[float, int]:
        """(mean training loss, windows trained on) over every process."""
        if lora:  # frozen base layers, trained adapters: dropout (the adapters' too) as in any training pass
            self.model.train()
        else:
            set_train_mode(self.model, stage, self.settings.unfreeze_last_n)

        def loss_of(batch: list[torch.Tensor]) -> torch.Tensor:
            return self.criterion(self.trained(batch[0]).float(), batch[1])

        # a stream deals whole row groups to ranks, so ranks may get unequal batch counts: DDP's join lets a
        # rank that ran out shadow the collective calls of those still training
        uneven = self.dist.active and self.stream is not None
        with self.trained.join() if uneven else contextlib.nullcontext():
            total, count = loop.train_epoch(self.trained, batches, optimizer, scheduler, loss_of,
                                            device=self.device, amp=self.settings.amp, grad_clip=self.settings.grad_clip,
                                            where=f"stage {stage}, epoch {self.epoch},")
        return self.dist.mean_and_count(total, count)

    def _check_collapse(self) -> None:
        metrics = self.progress.history[-1]
        val = {k[len("val_"):]: v for k, v in metrics.items() if k.startswith("val_")}
        self.collapsed = collapsed_classes(val, self.data.class_names, self.settings.collapse_threshold)
        if self.collapsed:
            banner(log, [f"MODE COLLAPSE after stage 1: val recall of {self.collapsed} is below "
                         f"{self.settings.collapse_threshold} -- the model (nearly) never predicts them.",
                         "Check class_weights, lr and the label balance; the run is tagged biosig.warning=mode_collapse"])


def _copy_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
