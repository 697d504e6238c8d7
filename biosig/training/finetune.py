"""`finetune`: a pretrained checkpoint (found through the registry) -> a staged fine-tune -> a pyfunc
classifier registered as `{pretrained name}_finetuned`.

Stages: 1 head only (+ new slices of channel-inflated tensors), 2 head + last `unfreeze_last_n` blocks,
3 (optional) everything at lr/10. Each stage has its own AdamW + cosine warm-up; early stopping ends a
stage after `patience` epochs without a better selection metric; the best model over all stages is the
one tested and registered.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import math
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import pandas as pd
import torch
from sklearn.utils.class_weight import compute_class_weight
from torch import nn

import biosig
from biosig.config import load_config, require_range
from biosig.data import SourceOptions, WindowSet
from biosig.data.adapt import ContextFit, ChannelStats, fit_context, select_channels
from biosig.data.channels import check_channels
from biosig.data.splits import manifest_digest, manifest_split, subject_split
from biosig.errors import ConfigError, DataError, TrainingError
from biosig.models.build import build_backbone
from biosig.models.checkpoint import save_checkpoint
from biosig.models.freezing import GradientMasks, apply_stage, check_unfreeze, param_groups, set_train_mode
from biosig.models.heads import Classifier
from biosig.models.inflation import map_channels
from biosig.registry.discovery import ResolvedCheckpoint, resolve_checkpoint
from biosig.registry.naming import FINETUNED_SUFFIX, is_conventional, parse_name
from biosig.registry.promotion import PromoteConfig, run_promote
from biosig.registry.publish import CANDIDATE_ALIAS, publish_version, unpublish_version
from biosig.registry.pyfunc import log_pyfunc
from biosig.tracking.datasets import TEST_DIGEST_TAG, use_dataset
from biosig.tracking.run import RunContext, tracked_run
from biosig.tracking.splits import SPLIT_DIGEST_TAG
from biosig.training import loop
from biosig.training.metrics import aggregate_by_subject, classification_metrics, collapsed_classes
from biosig.training.plots import confusion_png, roc_png
from biosig.training.pretrain import WARNING_TAG, PretrainConfig


@dataclasses.dataclass
class FinetuneConfig(loop.LoopConfig):
    """`finetune`: staged fine-tuning of a registered pretrained checkpoint for classification."""

    data: str = "synthetic:quality"  # source spec or .parquet/.npz path
    n_subjects: int = 0
    windows_per_subject: int = 0
    data_dir: str = "data"
    channels: list[str] | None = None  # default: every channel of the data, in its order
    checkpoint: str = "auto"  # auto | NAME[@alias|/version] | models:/… | runs:/… | s3://… | path
    pretrain_config: str = ""  # YAML of the pretrain run whose name `auto` derives (empty: its defaults)
    arch: Literal["auto", "ttm", "mamba2"] = "auto"  # auto: the pretrain config's (checkpoint=auto) or any
    context_fit: ContextFit = "crop"
    head: Literal["linear", "mlp"] = "linear"
    head_dropout: float = 0.1
    pooling: Literal["mean", "meanmax", "flatten"] = "meanmax"  # over patches; channels are always kept
    stage1_epochs: int = 3
    stage2_epochs: int = 5
    stage3_epochs: int = 0
    unfreeze_last_n: int = 2
    class_weights: str = "auto"  # auto (balanced) | none | comma-separated weights per class
    selection_metric: Literal["auroc", "f1", "balanced_accuracy", "loss"] = "auroc"
    # Window probabilities aggregated per participant (subject): metrics at both levels are logged as
    # {split}_window_* and {split}_participant_*; plain {split}_* are those of `selection_level`.
    aggregate: Literal["none", "mean", "median", "vote"] = "none"
    selection_level: Literal["window", "participant"] = "window"
    patience: int = 3
    collapse_threshold: float = 0.1
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    split_manifest: str = ""  # CSV subject,split (train/val/test); overrides the fractions
    task: str = ""  # recorded on the registered version; default: the dataset's label name
    register: bool = True
    promote: Literal["", "staging", "production"] = ""  # evaluate the registry policy for this target at the end
    policies: str = ""  # policy directory or file for `promote` (default: registry_policies/)

    @classmethod
    def preset(cls, values: dict[str, Any]) -> dict[str, Any]:
        return FINETUNE_MAMBA2_PRESET if _requested_arch(values) == "mamba2" else {}

    def validate(self) -> None:
        super().validate()
        if self.selection_level == "participant" and self.aggregate == "none":
            raise ConfigError("config key 'selection_level' participant needs aggregate=mean, median or vote")
        if self.promote and not self.register:
            raise ConfigError("config key 'promote' needs register=true: only registered versions are promoted")
        if self.channels is not None:
            check_channels(self.channels, "config key 'channels'")
        for key in ("stage1_epochs", "stage2_epochs", "stage3_epochs", "unfreeze_last_n"):
            require_range(key, getattr(self, key), 0)
        if self.stage1_epochs + self.stage2_epochs + self.stage3_epochs == 0:
            raise ConfigError("stage1_epochs, stage2_epochs and stage3_epochs are all 0: nothing to train")
        require_range("patience", self.patience, 1)
        require_range("collapse_threshold", self.collapse_threshold, 0, 1)
        require_range("head_dropout", self.head_dropout, 0, 1, high_open=True)
        require_range("val_fraction", self.val_fraction, 0, 1, low_open=True, high_open=True)
        require_range("test_fraction", self.test_fraction, 0, 1, low_open=True, high_open=True)
        if self.class_weights not in ("auto", "none"):
            _parse_weights(self.class_weights)

    def auto_name(self) -> str:
        return load_config(PretrainConfig, self.pretrain_config or None).model_name()

    def expected_arch(self) -> str | None:
        """The architecture the checkpoint must have: `arch`, else the pretrain config's for
        checkpoint=auto, else any."""
        if self.arch != "auto":
            return self.arch
        if self.checkpoint == "auto":
            return load_config(PretrainConfig, self.pretrain_config or None).arch
        return None


#: Defaults when the checkpoint is a Mamba-2 EEG model (remission: a participant-level label).
FINETUNE_MAMBA2_PRESET: dict[str, Any] = {"data": "synthetic:eeg", "selection_metric": "f1", "aggregate": "mean",
                                          "batch_size": 32}


def _requested_arch(values: dict[str, Any]) -> str | None:
    """The architecture named by `arch`, the pretrain config file or a conventional checkpoint name."""
    if values.get("arch") not in (None, "auto"):
        return values["arch"]
    checkpoint = str(values.get("checkpoint", "auto"))
    if checkpoint == "auto":
        return load_config(PretrainConfig, values.get("pretrain_config") or None).arch
    name = checkpoint.removeprefix("models:/").split("@")[0].split("/")[0]
    return parse_name(name).arch if is_conventional(name) else None


@dataclasses.dataclass
class FinetuneResult:
    run_id: str
    name: str
    version: str | None
    best_epoch: int
    val: dict[str, float]
    test: dict[str, float]
    mode_collapse: list[str]
    model_uri: str
    test_digest: str = ""
    trainable_params: int = 0  # the most any stage trained
    parent_name: str = ""


@dataclasses.dataclass
class FinetuneData:
    x: dict[str, np.ndarray]
    y: dict[str, np.ndarray]
    subject: dict[str, np.ndarray]
    class_names: list[str]
    channels: list[str]
    stats: ChannelStats
    test_digest: str  # content digest of the test split: champion comparisons need the same one


def finetune(config: FinetuneConfig, *, nested: bool = False, auto_name: str | None = None) -> FinetuneResult:
    """The `finetune` command: resolve the checkpoint first (fail fast), then train, test, register.
    `auto_name` overrides the name that checkpoint=auto derives from `pretrain_config`."""
    if config.checkpoint == "auto" and auto_name is None:
        auto_name = config.auto_name()
    with tracked_run("finetune", config, nested=nested) as ctx, tempfile.TemporaryDirectory(prefix="biosig-ft-") as tmp:
        parent = resolve_checkpoint(config.checkpoint, auto_name=auto_name, expected_arch=config.expected_arch())
        ctx.set_tags(parent.lineage())
        print(f"finetune from {parent.describe()}")
        parent_name = parent.name or parent.meta.get("name", "")
        logged = use_dataset(ctx, config.data, SourceOptions(n_subjects=config.n_subjects,
                             windows_per_subject=config.windows_per_subject, seed=config.seed),
                             output_dir=config.data_dir, context="training")
        data = prepare_data(logged.windows, logged.name, config, parent)
        ctx.set_tags({TEST_DIGEST_TAG: data.test_digest,
                      **({SPLIT_DIGEST_TAG: manifest_digest(config.split_manifest)} if config.split_manifest else {})})
        device = loop.resolve_device(config.device)
        generator = loop.seed_everything(config.seed)
        model, masks = build_model(ctx, parent, data, config)
        model.to(device)
        check_unfreeze(config.unfreeze_last_n, len(model.backbone.blocks()))
        trainer = Trainer(ctx, config, model, masks, data, device, generator)
        trainer.run()
        test = trainer.test(Path(tmp))
        meta = _finetuned_meta(config, parent, parent_name, data, logged, ctx.run_id, trainer, windows=logged.windows)
        checkpoint = save_checkpoint(Path(tmp) / "checkpoint", trainer.best_state, meta)
        model_info = log_pyfunc(checkpoint, meta)
        name = f"{parent_name}{FINETUNED_SUFFIX}"
        version = None
        if config.register:
            version = _register(ctx, name, model_info, parent, logged, test, meta["task"], data.test_digest)
            if config.promote:
                _promote(ctx, config, name, version)
        trainable = max(c["trainable"] for c in trainer.stage_counts.values())
        return FinetuneResult(ctx.run_id, name, version, trainer.best_epoch, trainer.best_val, test,
                              trainer.collapsed, model_info.model_uri, data.test_digest, trainable, parent_name)


def prepare_data(ws: WindowSet, where: str, config: FinetuneConfig, parent: ResolvedCheckpoint) -> FinetuneData:
    """Labels checked, subject split, channels by name, context fit, train-only normalisation."""
    if (ws.labels < 0).any():
        raise TrainingError(f"{where} has {(ws.labels < 0).sum()} unlabelled windows: fine-tuning needs labels")
    channels = config.channels or list(ws.channels)
    if set(channels) == set(parent.meta["channels"]):
        # Same montage in another order: take the checkpoint's, so channel-indexed weights (Mamba-2 channel
        # embeddings, TTM channel mixers) line up; inputs are selected by name either way.
        channels = list(parent.meta["channels"])
    missing = [c for c in parent.meta["channels"] if c not in channels]
    if missing:
        raise TrainingError(f"the checkpoint was pretrained on {parent.meta['channels']}; channels {missing} are "
                            f"missing from the fine-tuning data ({where} has {ws.channels}, selected {channels})")
    n_classes = max(len(ws.class_names), int(ws.labels.max()) + 1)
    class_names = ws.class_names or [str(k) for k in range(n_classes)]
    splits = (manifest_split(ws, config.split_manifest) if config.split_manifest
              else subject_split(ws, config.val_fraction, config.test_fraction, seed=config.seed))
    for needed in ("train", "val", "test"):
        if needed not in splits:
            raise DataError(f"the {needed} split of {where} is empty: check split_manifest or the fractions")
    train_classes = np.unique(splits["train"].labels)
    if len(train_classes) < 2:
        raise TrainingError(f"the training split of {where} holds only class {class_names[train_classes[0]]!r}: "
                            "a classifier needs at least two classes in training")
    x = {}
    for split, part in splits.items():
        selected = select_channels(part.signals, ws.channels, channels, where)
        x[split] = fit_context(selected, ws.fs, target_length=parent.meta["context_length"], target_fs=parent.meta["fs"],
                               policy=config.context_fit, where=where, patch_length=parent.meta["patch_length"])
    stats = ChannelStats.fit(x["train"], channels)
    return FinetuneData(x={s: stats.apply(v) for s, v in x.items()}, y={s: p.labels for s, p in splits.items()},
                 subject={s: p.subject for s, p in splits.items()}, class_names=class_names, channels=channels,
                 stats=stats, test_digest=splits["test"].digest)


def build_model(ctx: RunContext, parent: ResolvedCheckpoint, data: FinetuneData, config: FinetuneConfig):
    """Backbone for the new channel layout with the pretrained weights mapped by channel name."""
    from safetensors.torch import load_file

    spec = parent.meta["backbone"]
    try:
        backbone = build_backbone(spec["arch"], data.channels, spec["config"])
    except ConfigError as exc:
        raise TrainingError(f"checkpoint {parent.uri}: its biosig.json describes a {spec['arch']} backbone that "
                            f"cannot be built: {exc}") from None
    if not backbone.channel_flexible and data.channels != parent.meta["channels"]:
        raise TrainingError(f"checkpoint {parent.uri} embeds all channels of {parent.meta['channels']} jointly "
                            f"(tokenization=joint) and cannot take channels {data.channels}: select exactly those "
                            "channels, in that order (config key 'channels'), or pretrain with per_channel tokens")
    pretrained = load_file(Path(parent.path) / "model.safetensors")
    mapping = map_channels(pretrained, backbone.state_dict(), parent.meta["channels"], data.channels)
    try:
        backbone.load_state_dict(mapping.state_dict, strict=True)
    except RuntimeError as exc:
        raise TrainingError(f"checkpoint {parent.uri} does not fit a {spec['arch']} backbone: {exc}") from None
    layout = spec["config"].get("mode") or spec["config"].get("tokenization", "?")
    print(f"  channel mapping ({layout}): {mapping.describe()}")
    ctx.set_tags({"biosig.channel_mapping": mapping.describe()})
    model = Classifier(backbone, len(data.class_names), head=config.head, dropout=config.head_dropout,
                       pooling=config.pooling)
    masks = GradientMasks(model, {f"backbone.{k}": v for k, v in mapping.pretrained_masks.items()}) \
        if mapping.pretrained_masks else None
    return model, masks


class Trainer:
    """The staged loop: per-epoch metrics with step=epoch, early stopping, the best state kept."""

    def __init__(self, ctx: RunContext, config: FinetuneConfig, model: Classifier, masks: GradientMasks | None,
                 data: FinetuneData, device: torch.device, generator: torch.Generator,
                 on_epoch: Callable[[int, dict[str, float]], None] | None = None) -> None:
        self.ctx, self.config, self.model, self.masks, self.data = ctx, config, model, masks, data
        self.on_epoch = on_epoch  # e.g. an Optuna trial's report/prune check
        self.device, self.generator = device, generator
        weights = _class_weights(config.class_weights, data.y["train"], len(data.class_names))
        self.criterion = nn.CrossEntropyLoss(weight=None if weights is None else torch.tensor(weights).to(device))
        if weights is not None:
            ctx.set_tags({"biosig.class_weights": ",".join(f"{w:.4g}" for w in weights)})
        self.train_loader = loop.loader([data.x["train"], data.y["train"]], config.batch_size, shuffle=True,
                                        generator=generator)
        self.epoch = 0
        self.best_epoch = 0
        self.best_score = -math.inf
        self.best_val: dict[str, float] = {}
        self.best_state: dict[str, torch.Tensor] = {}
        self.history: list[dict[str, float]] = []
        self.collapsed: list[str] = []
        self.stage_counts: dict[int, dict[str, Any]] = {}
        self.warned_nan_selection = False

    def run(self) -> None:
        c = self.config
        stages = [(1, c.stage1_epochs, c.lr), (2, c.stage2_epochs, c.lr), (3, c.stage3_epochs, c.lr / 10)]
        for stage, epochs, lr in stages:
            if epochs:
                self._stage(stage, epochs, lr)
            if stage == 1 and epochs:
                self._check_collapse()
        self.ctx.metrics.flush()
        self.ctx.log_dict(self.history, "history.json")
        self.ctx.log_dict(self.stage_counts, "stages.json")

    def _stage(self, stage: int, epochs: int, lr: float) -> None:
        counts = apply_stage(self.model, stage, self.config.unfreeze_last_n, self.masks)
        self.stage_counts[stage] = dataclasses.asdict(counts)
        print(f"  {counts.describe()}")
        self.ctx.log_metrics({f"stage{stage}.trainable_params": counts.trainable,
                              f"stage{stage}.frozen_params": counts.frozen}, step=self.epoch)
        optimizer, scheduler = loop.optimizer_and_schedule(param_groups(self.model, self.masks), lr, self.config.weight_decay,
                                                           epochs * len(self.train_loader), self.config.warmup_fraction)
        stale = 0
        for _ in range(epochs):
            self.epoch += 1
            started = time.perf_counter()
            train_loss = self._train_epoch(stage, optimizer, scheduler)
            val = self.evaluate("val")[0]
            row = {"stage": stage, "train_loss": train_loss, "lr": scheduler.get_last_lr()[0],
                   **{f"val_{k}": v for k, v in val.items()}}
            self.ctx.log_metrics(row, step=self.epoch)
            self.ctx.metrics.flush(wait=False)  # per epoch, in the background: the UI shows live curves
            self.history.append({"epoch": self.epoch, **row})
            score = self._score(val)
            improved = score > self.best_score or not self.best_state
            if improved:
                self.best_score, self.best_epoch, self.best_val = score, self.epoch, val
                self.best_state = copy.deepcopy({k: v.detach().cpu() for k, v in self.model.state_dict().items()})
                stale = 0
            else:
                stale += 1
            print(f"  epoch {self.epoch} (stage {stage}): train_loss {train_loss:.4f}  val_loss {val['loss']:.4f}  "
                  f"val_auroc {val['auroc']:.3f}  val_f1 {val['f1']:.3f}{'  *best' if improved else ''}  "
                  f"({time.perf_counter() - started:.1f} s)")
            if self.on_epoch is not None:
                self.on_epoch(self.epoch, val)
            if stale >= self.config.patience:
                print(f"  early stop of stage {stage}: no better val {self.config.selection_metric} in "
                      f"{stale} epochs")
                break

    def _score(self, val: dict[str, float]) -> float:
        """Higher is better. A validation split with one class has no AUROC: select on loss then."""
        metric = self.config.selection_metric
        if metric != "loss" and math.isnan(val[metric]):
            if not self.warned_nan_selection:
                print(f"  note: val {metric} is undefined (the val split lacks a class); selecting on val loss")
                self.ctx.set_tags({"biosig.selection_fallback": "val_loss"})
                self.warned_nan_selection = True
            metric = "loss"
        return -val["loss"] if metric == "loss" else val[metric]

    def _train_epoch(self, stage: int, optimizer, scheduler) -> float:
        set_train_mode(self.model, stage, self.config.unfreeze_last_n)
        total, count = 0.0, 0
        for i, (x, y) in enumerate(self.train_loader):
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with loop.autocast(self.device, self.config.amp):
                logits = self.model(x)
            loss = self.criterion(logits.float(), y)
            loop.check_finite(loss, f"stage {stage}, epoch {self.epoch}, step {i + 1}")
            loop.step(self.model, loss, optimizer, scheduler, self.config.grad_clip)
            total += loss.item() * len(y)
            count += len(y)
        return total / count

    @torch.no_grad()
    def evaluate(self, split: str) -> tuple[dict[str, float], np.ndarray]:
        self.model.eval()
        probs, losses = [], []
        batches = loop.loader([self.data.x[split], self.data.y[split]], 256, shuffle=False)
        for x, y in batches:
            x, y = x.to(self.device), y.to(self.device)
            with loop.autocast(self.device, self.config.amp):
                logits = self.model(x).float()
            losses.append(nn.functional.cross_entropy(logits, y, reduction="sum").item())
            probs.append(torch.softmax(logits, dim=-1).cpu().numpy())
        prob = np.concatenate(probs)
        y_true = self.data.y[split]
        loss = sum(losses) / len(y_true)
        if not math.isfinite(loss):
            raise TrainingError(f"{split} loss is {loss} at epoch {self.epoch}: lower lr or set amp=off")
        window = classification_metrics(y_true, prob, self.data.class_names)
        if self.config.aggregate == "none":
            return {"loss": loss, **window}, prob
        _, y_subject, p_subject = aggregate_by_subject(self.data.subject[split], y_true, prob, self.config.aggregate)
        participant = classification_metrics(y_subject, p_subject, self.data.class_names)
        selected = participant if self.config.selection_level == "participant" else window
        return {"loss": loss, **selected, **{f"window_{k}": v for k, v in window.items()},
                **{f"participant_{k}": v for k, v in participant.items()}}, prob

    def _check_collapse(self) -> None:
        metrics = self.history[-1]
        val = {k[len("val_"):]: v for k, v in metrics.items() if k.startswith("val_")}
        self.collapsed = collapsed_classes(val, self.data.class_names, self.config.collapse_threshold)
        if self.collapsed:
            self.ctx.set_tags({WARNING_TAG: "mode_collapse", "biosig.collapsed_classes": ",".join(self.collapsed)})
            print("!" * 78)
            print(f"!! MODE COLLAPSE after stage 1: val recall of {self.collapsed} is below "
                  f"{self.config.collapse_threshold} -- the model (nearly) never predicts them.")
            print("!! Check class_weights, lr and the label balance; the run is tagged biosig.warning=mode_collapse")
            print("!" * 78)

    def test(self, tmp: Path) -> dict[str, float]:
        """Evaluate the best (not the last) state on test; log metrics, plots and predictions."""
        self.model.load_state_dict(self.best_state)
        metrics, prob = self.evaluate("test")
        self.ctx.log_metrics({f"test_{k}": v for k, v in metrics.items()}, step=self.best_epoch)
        self.ctx.log_metrics({"best_epoch": self.best_epoch})
        self.ctx.metrics.flush()
        y_true = self.data.y["test"]
        names = self.data.class_names
        title = f"test, best epoch {self.best_epoch}"
        for png in (confusion_png(y_true, prob, names, tmp / "confusion_matrix.png", title),
                    roc_png(y_true, prob, names, tmp / "roc.png", title)):
            self.ctx.log_artifact(png, "evaluation")
        predictions = pd.DataFrame({"subject": self.data.subject["test"], "y_true": y_true,
                                    "y_pred": prob.argmax(axis=1), "prob": list(prob.astype(np.float32))})
        predictions.to_parquet(tmp / "predictions.parquet", index=False)
        self.ctx.log_artifact(tmp / "predictions.parquet", "evaluation")
        if self.config.aggregate != "none":
            subjects, y_subject, p_subject = aggregate_by_subject(self.data.subject["test"], y_true, prob,
                                                                  self.config.aggregate)
            pd.DataFrame({"subject": subjects, "y_true": y_subject, "y_pred": p_subject.argmax(axis=1),
                          "prob": list(p_subject.astype(np.float32))}).to_parquet(tmp / "participant_predictions.parquet",
                                                                                  index=False)
            self.ctx.log_artifact(tmp / "participant_predictions.parquet", "evaluation")
        print(f"  test (best epoch {self.best_epoch}): auroc {metrics['auroc']:.3f}  f1 {metrics['f1']:.3f}  "
              f"balanced_accuracy {metrics['balanced_accuracy']:.3f}  ece {metrics['ece']:.3f}")
        return metrics


def _promote(ctx: RunContext, config: FinetuneConfig, name: str, version: str) -> None:
    """Evaluate the policy in a child run; a rejection is recorded and reported, not a failure."""
    decision = run_promote(load_config(PromoteConfig, None, {
        "model": name, "version": version, "to": config.promote, "policies": config.policies,
        "experiment": config.experiment, "tracking_uri": config.tracking_uri,
        "run_name": f"promote to {config.promote}"}), nested=True)
    ctx.set_tags({f"biosig.promote.{config.promote}": "promoted" if decision.applied else "rejected"})


def _class_weights(spec: str, y: np.ndarray, n_classes: int) -> np.ndarray | None:
    if spec == "none":
        return None
    if spec == "auto":
        present = np.unique(y)
        weights = np.ones(n_classes, dtype=np.float32)
        weights[present] = compute_class_weight("balanced", classes=present, y=y)
        return weights
    weights = _parse_weights(spec)
    if len(weights) != n_classes:
        raise ConfigError(f"config key 'class_weights' lists {len(weights)} weights for {n_classes} classes")
    return weights


def _parse_weights(spec: str) -> np.ndarray:
    try:
        weights = np.array([float(w) for w in spec.split(",")], dtype=np.float32)
    except ValueError:
        raise ConfigError(f"config key 'class_weights' must be auto, none or comma-separated numbers, got {spec!r}") \
            from None
    if (weights <= 0).any():
        raise ConfigError(f"config key 'class_weights' must be positive, got {spec!r}")
    return weights


def _finetuned_meta(config: FinetuneConfig, parent: ResolvedCheckpoint, parent_name: str, data: FinetuneData, logged,
                    run_id: str, trainer: Trainer, windows: WindowSet) -> dict[str, Any]:
    backbone = trainer.model.backbone
    return {
        "kind": "finetuned",
        "name": f"{parent_name}{FINETUNED_SUFFIX}",
        "task": config.task or windows.label_name,
        "backbone": backbone.describe(),
        "head": {"kind": config.head, "dropout": config.head_dropout, "pooling": config.pooling},
        "class_names": data.class_names,
        "channels": data.channels,
        "fs": parent.meta["fs"],
        "context_length": parent.meta["context_length"],
        "patch_length": parent.meta["patch_length"],
        "context_fit": config.context_fit,
        "normalisation": data.stats.to_dict(),
        "input": {"channels": list(windows.channels), "fs": windows.fs, "n_samples": windows.n_samples},
        "provenance": {"run_id": run_id, "parent": parent.lineage(), "dataset": logged.name,
                       "dataset_digest": logged.digest, "best_epoch": trainer.best_epoch,
                       "biosig_version": biosig.__version__,
                       "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")},
    }


def _register(ctx: RunContext, name: str, model_info, parent: ResolvedCheckpoint, logged, test: dict[str, float],
              task: str, test_digest: str) -> str:
    tags = {
        "biosig.kind": "finetuned", "biosig.arch": parent.arch, "biosig.run_id": ctx.run_id, "biosig.task": task,
        "biosig.parent.name": parent.name or parent.meta.get("name", ""), "biosig.parent.version": parent.version or "",
        "biosig.parent.uri": parent.uri, "biosig.dataset.name": logged.name, "biosig.dataset.digest": logged.digest,
        **{f"biosig.test.{k}": f"{v:.6g}" for k, v in test.items() if "." not in k},
        TEST_DIGEST_TAG: test_digest,
    }
    version = publish_version(name, source=model_info.model_uri, model_id=model_info.model_id, run_id=ctx.run_id,
                              tags=tags, description=f"{task} classifier fine-tuned from {parent.uri}; see run "
                                                     f"{ctx.run_id}", model_tags={"biosig.kind": "finetuned"})
    ctx.on_failure(lambda: unpublish_version(name, version.version))  # a failed run registers nothing
    ctx.set_tags({"biosig.registered_model": name, "biosig.registered_version": version.version})
    print(f"registered {name} version {version.version} (alias @{CANDIDATE_ALIAS}); load it with "
          f"mlflow.pyfunc.load_model('models:/{name}@{CANDIDATE_ALIAS}')")
    return str(version.version)
