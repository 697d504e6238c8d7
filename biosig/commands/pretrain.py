"""`pretrain`: self-supervised pretraining of a backbone, registered under its conventional name.

Objectives: TTM masked-patch reconstruction (`mae`, masked patches filled in the input, loss on them
only) or forecasting (`fcst`: the backbone sees `context_length` samples and a linear head predicts the
next `prediction_length`); Mamba-2 masked-token reconstruction (`masking_style` mae: masked tokens
removed from the encoder, or bert: replaced by a mask token). Each epoch logs train/val loss and the
val prediction/target variance ratio (mean-collapse guard) and writes `last/` (weights + optimiser
state, for resume) as run artifacts; the best epoch by val loss is the `checkpoint/` directory that
becomes a version of the registered model `ttm_…` / `mamba2_…` with the alias `candidate`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import math
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import yaml
from torch import nn

import biosig
from biosig.backbones import build_backbone
from biosig.commands.configs import PretrainConfig
from biosig.commands.probing import ProbeMonitor, start_probe_monitor
from biosig.data import SourceOptions
from biosig.data.adapt import ChannelStats, WindowTransform, fit_context, require_channels, select_channels
from biosig.data.shards import is_sharded, verify_all
from biosig.data.splits import manifest_subject_split, subject_split
from biosig.errors import ConfigError, TrainingError
from biosig.logs import banner, get_logger
from biosig.models.checkpoint import load_weights, read_meta, save_checkpoint
from biosig.registry.card import pretrained_card
from biosig.registry.naming import parse_name
from biosig.registry.publish import CANDIDATE_ALIAS, publish_model_files, register_from_run
from biosig.tracking.datasets import LoggedDataset, follow_dataset, use_dataset
from biosig.tracking.liveness import liveness, scratch_dir
from biosig.tracking.run import FollowerContext, RunContext, close_dead_run, tracked_run
from biosig.tracking.tags import (
    ARCH_TAG,
    BEST_EPOCH_TAG,
    COMMAND_TAG,
    DATASET_DIGEST_TAG,
    DATASET_NAME_TAG,
    FIELD_TAG_PREFIX,
    KIND_TAG,
    MODEL_NAME_TAG,
    PRED_VAR_RATIO_TAG,
    RESUMED_AT_EPOCH_TAG,
    RESUMED_FROM_TAG,
    RUN_ID_TAG,
    VAL_LOSS_TAG,
    WARNING_TAG,
    WORLD_SIZE_TAG,
)
from biosig.training import loop
from biosig.training.stream import ShardStream, StreamPosition, stream_loader

log = get_logger(__name__)

HISTORY_METRICS = ("train_loss", "val_loss", "val_pred_var_ratio", "lr")
NORMALISATION_SAMPLE = 16384  # training windows a streamed dataset's channel mean/std are fitted on

def pretrain_model(config: PretrainConfig, channels: list[str]) -> nn.Module:
    """Backbone + self-supervised objective: forward(x, generator) -> (loss, variance ratio)."""
    return config.spec.pretraining(build_backbone(config.arch, channels, config.backbone_config()), config)


@dataclasses.dataclass
class PretrainResult:
    run_id: str
    name: str
    version: str | None
    best_epoch: int
    best_val_loss: float
    history: list[dict[str, float]]


CHECKPOINT_EVERY_NEEDS = ("config key 'checkpoint_every' saves mid-epoch positions of a streamed (sharded) dataset "
                          "in one process: use a sharded dataset and no torchrun, or set it to 0")


def run_pretrain(config: PretrainConfig, *, nested: bool = False) -> PretrainResult:
    """The `pretrain` command: one run, one checkpoint, one registered version (unless register=false).

    Under torchrun with several processes the model trains with DDP (gloo on CPU, nccl on CUDA), each
    process on its shard of the training windows; rank 0 owns the MLflow run, validation, the checkpoint
    and the registration, so N processes still make one run and one registered version."""
    name = config.model_name()
    with loop.distributed(config.device) as dist, scratch_dir("pretrain") as tmp:
        if dist.active and config.resume:
            raise ConfigError("config key 'resume' continues a run in one process: start it without torchrun")
        if config.checkpoint_every and (dist.active or not is_sharded(config.data)):
            raise ConfigError(CHECKPOINT_EVERY_NEEDS)  # known before any run: no FAILED run left for it
        if not dist.leader:
            return _pretrain(FollowerContext(), config, name, dist, Path(tmp))
        tags = {MODEL_NAME_TAG: name, **({WORLD_SIZE_TAG: dist.world_size} if dist.active else {})}
        with tracked_run("pretrain", config, nested=nested, tags=tags) as ctx:
            ctx.name_run(f"pretrain {name}")
            return _pretrain(ctx, config, name, dist, Path(tmp))


def _pretrain(ctx: RunContext | FollowerContext, config: PretrainConfig, name: str, dist: loop.Distributed,
              work: Path) -> PretrainResult:
    previous = _fetch_resume(ctx, config, work) if config.resume else None  # fail before any data work
    device = dist.device(config.device)
    logged = _load_data(ctx, config, dist)
    feed = _streamed(config, logged, dist) if logged.manifest is not None else _in_memory(config, logged)
    generator = loop.seed_everything(config.seed)
    model = pretrain_model(config, config.channels).to(device)
    train_loader, val_loader, steps_per_epoch = feed.loaders(config, generator, dist)
    if dist.active:  # different masks per process; DDP copies rank 0's initial weights to all
        generator.manual_seed(config.seed * 1000 + dist.rank)
    optimizer, scheduler = loop.optimizer_and_schedule(
        _decay_groups(model), config.lr, config.weight_decay, config.epochs * steps_per_epoch,
        config.warmup_fraction)
    trained = torch.nn.parallel.DistributedDataParallel(model) if dist.active else model
    meta = _meta(config, name, feed.fs, feed.stats, logged, ctx.run_id, model)
    n_params = sum(p.numel() for p in model.backbone.parameters())
    ctx.log_metrics({"backbone_params": n_params, "train_windows": feed.n_train, "val_windows": feed.n_val})
    # before any weight is trained or restored: the probe's random-initialisation floor
    monitor = start_probe_monitor(ctx, config, feed.fs, feed.stats, model.backbone, device) if dist.leader else None
    if dist.leader:
        log.info(f"pretrain {name}: {n_params:,} backbone parameters, {feed.n_train} train / "
                 f"{feed.n_val} val windows of {logged.name}{feed.how}, device {device}"
                 f"{f', {dist.world_size} processes' if dist.active else ''}, run {ctx.run_id}")
    progress = loop.TrainingProgress()  # best_score: -val_loss
    ctx.begin_model(name, model_type=f"pretrained {config.arch}", dataset=logged.mlflow_ref,
                    params={"arch": config.arch, "objective": config.objective, **_name_fields(config),
                            "dataset": logged.name})
    midway: MidEpoch | None = None
    if previous is not None:
        progress, midway = _restore(ctx, previous, model, optimizer, scheduler, generator, work)
    if config.checkpoint_every and (dist.active or not feed.streamed):  # e.g. a folder that became sharded
        raise ConfigError(CHECKPOINT_EVERY_NEEDS)

    def loss_of(batch: list[torch.Tensor]) -> torch.Tensor:
        return trained(batch[0], generator)[0]

    def save_midway(midway: MidEpoch) -> None:
        _save_last(work / "last", model, optimizer, scheduler, generator, meta, progress, midway)
        ctx.log_artifacts(work / "last", "last")

    for epoch in range(progress.epoch + 1, config.epochs + 1):
        started = time.perf_counter()
        trained.train()
        feed.set_epoch(train_loader, epoch)
        midway = midway if midway is not None and midway.position.epoch == epoch else None
        if midway is not None:
            feed.streams["train"].resume(midway.position)
        position = midway.position if midway else StreamPosition(epoch, feed.readers(config.data_workers))
        after_step = _mid_epoch_hook(position, config.checkpoint_every, save_midway)

        # a stream deals whole row groups to ranks, so ranks may get unequal batch counts: DDP's join
        # lets a rank that ran out shadow the collective calls of those still training
        with trained.join() if dist.active and feed.streamed else contextlib.nullcontext():
            total, count = loop.train_epoch(trained, train_loader, optimizer, scheduler, loss_of, device=device,
                                            amp=config.amp, grad_clip=config.grad_clip, where=f"epoch {epoch}",
                                            totals=(midway.total, midway.count) if midway else (0.0, 0),
                                            after_step=after_step if feed.streamed else None)
        midway = None
        train_s = time.perf_counter() - started
        train_loss, seen = dist.mean_and_count(total, count)
        progress.epoch = epoch
        if not dist.leader:
            continue
        val_loss, ratio = _validation_loss(model, val_loader, device, config)
        row = {"train_loss": train_loss, "val_loss": val_loss, "val_pred_var_ratio": ratio,
               "lr": scheduler.get_last_lr()[0],
               "train_windows_seen": seen, "train_windows_per_s": seen / train_s}  # all processes together
        ctx.log_metrics(row, step=epoch)
        probed = monitor.after_epoch(ctx, model.backbone, epoch) if monitor else None
        ctx.metrics.flush(wait=False)  # per epoch, in the background: the UI shows live curves
        improved = progress.record(row, -val_loss)
        if improved:
            _save(work / "checkpoint", model.backbone.state_dict(), meta, epoch=epoch, val_loss=val_loss)
            ctx.log_artifacts(work / "checkpoint", "checkpoint")
        _save_last(work / "last", model, optimizer, scheduler, generator, meta, progress)
        ctx.log_artifacts(work / "last", "last")
        log.info(f"  epoch {epoch}/{config.epochs}: train_loss {train_loss:.4f}  val_loss {val_loss:.4f}  "
                 f"pred/target var {ratio:.3f}{f'  probe AUROC {probed}' if probed else ''}"
                 f"{'  *best' if improved else ''}  ({time.perf_counter() - started:.1f} s)")
    if not dist.leader:
        return PretrainResult("", name, None, 0, math.nan, [])
    ctx.metrics.flush()
    ctx.log_dict(progress.history, "history.json")
    if progress.best_epoch == 0:
        raise TrainingError(f"run {config.resume} already trained {progress.epoch} epochs and no best "
                            "checkpoint exists; raise epochs to continue")
    ctx.set_tags({BEST_EPOCH_TAG: progress.best_epoch})
    ctx.log_metrics({"best_epoch": progress.best_epoch, "best_val_loss": -progress.best_score},  # the model's result
                    step=progress.best_epoch, result=True)
    _check_mean_collapse(ctx, progress.best_row().get("val_pred_var_ratio", math.nan), config.collapse_ratio)
    evidence = _probe_evidence(ctx, config, monitor, progress.best_epoch, work / "checkpoint")
    card = pretrained_card(name=name, meta=read_meta(work / "checkpoint"), history=progress.history,
                           best_epoch=progress.best_epoch, probe=evidence.rows, probe_line=evidence.sentence)
    ctx.log_text(card, "model_card.md")
    model = publish_model_files(ctx.model_id, work / "checkpoint", run_id=ctx.run_id, step=progress.best_epoch)
    version = _register(ctx, config, name, logged, progress, model.model_id, evidence) if config.register else None
    ctx.describe(f"Pretrained **{name}** ({config.objective}) on `{logged.name}` (digest `{logged.digest[:12]}`): "
                 f"best epoch {progress.best_epoch} of {progress.epoch}, val_loss {-progress.best_score:.4f}. "
                 + (f"{evidence.sentence} " if evidence.sentence else "")
                 + (f"Registered as {name} version {version} (@{CANDIDATE_ALIAS})." if version else "Not registered."))
    return PretrainResult(ctx.run_id, name, version, progress.best_epoch, -progress.best_score, progress.history)


def _load_data(ctx: RunContext | FollowerContext, config: PretrainConfig, dist: loop.Distributed) -> LoggedDataset:
    """The leader logs the dataset (and writes its parquet); other processes read the same source. A
    sharded dataset stays where it is and is streamed."""
    options = SourceOptions(n_subjects=config.n_subjects, windows_per_subject=config.windows_per_subject,
                            seed=config.seed)
    if dist.leader:
        return use_dataset(ctx, config.data, options, output_dir=config.data_dir, context="training", stream=True)
    return follow_dataset(config.data, options, stream=True)


@dataclasses.dataclass
class _Feed:
    """Where training batches come from: arrays in memory, or streams over a sharded dataset."""

    fs: float
    stats: ChannelStats
    n_train: int
    n_val: int
    arrays: dict[str, Any] | None = None
    streams: dict[str, ShardStream] | None = None

    @property
    def streamed(self) -> bool:
        return self.streams is not None

    @property
    def how(self) -> str:
        return f" (streamed from {len(self.streams['train'].units)} row groups)" if self.streams else ""

    def loaders(self, config: PretrainConfig, generator: torch.Generator, dist: loop.Distributed):
        """(train batches, val batches, optimiser steps per epoch)."""
        if self.streams is not None:
            train = stream_loader(self.streams["train"], config.data_workers)
            val = stream_loader(self.streams["val"], config.data_workers)
            return train, val, self.streams["train"].batches_per_epoch(max(1, config.data_workers))
        train = loop.loader([self.arrays["train"]], config.batch_size, shuffle=True, generator=generator, dist=dist,
                            seed=config.seed)
        return train, loop.loader([self.arrays["val"]], config.batch_size, shuffle=False), len(train)

    def readers(self, data_workers: int) -> int:
        return self.streams["train"].readers(data_workers) if self.streams else 1

    def set_epoch(self, loader, epoch: int) -> None:
        if self.streams is not None:
            self.streams["train"].set_epoch(epoch)
        elif isinstance(loader.sampler, torch.utils.data.DistributedSampler):
            loader.sampler.set_epoch(epoch)


def _in_memory(config: PretrainConfig, logged: LoggedDataset) -> _Feed:
    ws = logged.windows
    splits = subject_split(ws, config.val_fraction, 0.0, seed=config.seed)
    arrays = {split: fit_context(select_channels(part.signals, ws.channels, config.channels, logged.name), ws.fs,
                                 target_length=config.window_length, target_fs=ws.fs, policy=config.context_fit,
                                 where=logged.name, patch_length=config.patch_length)
              for split, part in splits.items() if split != "test"}
    stats = ChannelStats.fit(arrays["train"], config.channels)
    arrays = {split: stats.apply(x) for split, x in arrays.items()}
    return _Feed(ws.fs, stats, len(arrays["train"]), len(arrays["val"]), arrays=arrays)


def _streamed(config: PretrainConfig, logged: LoggedDataset, dist: loop.Distributed) -> _Feed:
    """Train/val streams over the subjects of a manifest split; the normalisation is fitted on a sample
    of NORMALISATION_SAMPLE training windows from randomly drawn row groups (not a pass over the corpus)."""
    manifest = logged.manifest
    verify_all(manifest)  # every shard's bytes against the manifest (remembered per machine)
    subjects = manifest_subject_split(manifest, config.val_fraction, 0.0, seed=config.seed)
    require_channels(manifest.channels, config.channels, logged.name)  # only these columns are read
    transform = WindowTransform(config.channels, config.channels, manifest.fs, config.window_length,
                                config.context_fit, config.patch_length, logged.name)
    sample, held = [], 0
    for x, _ in ShardStream(manifest, 1024, subjects=subjects["train"], transform=transform, seed=config.seed,
                            verify=False, channels=config.channels):
        sample.append(x.numpy())
        held += len(x)
        if held >= NORMALISATION_SAMPLE:
            break
    transform.stats = ChannelStats.fit(np.concatenate(sample), config.channels)
    streams = {
        "train": ShardStream(manifest, config.batch_size, subjects=subjects["train"], transform=transform,
                             seed=config.seed, rank=dist.rank, world_size=dist.world_size, verify=False,
                             channels=config.channels),
        "val": ShardStream(manifest, config.batch_size, subjects=subjects["val"], transform=transform, shuffle=False,
                           verify=False, channels=config.channels),
    }
    return _Feed(manifest.fs, transform.stats, streams["train"].windows, streams["val"].windows, streams=streams)


def _decay_groups(model: nn.Module) -> list[dict[str, Any]]:
    """AdamW groups: parameters marked `_no_weight_decay` (Mamba-2's A_log, D, dt_bias) get none."""
    params = list(model.parameters())
    exempt = [p for p in params if getattr(p, "_no_weight_decay", False)]
    groups = [{"params": [p for p in params if not getattr(p, "_no_weight_decay", False)]}]
    return groups + ([{"params": exempt, "weight_decay": 0.0}] if exempt else [])


def _check_mean_collapse(ctx: RunContext, ratio: float, threshold: float) -> None:
    """Masked reconstruction's known failure: predicting the mean (variance ratio near 0)."""
    if not ratio < threshold:
        return
    ctx.set_tags({WARNING_TAG: "mean_collapse", PRED_VAR_RATIO_TAG: f"{ratio:.4g}"})
    banner(log, [f"MEAN COLLAPSE: at the best epoch the reconstructions' variance is {ratio:.3g} of the targets' "
                 f"(< {threshold}).",
                 "The model predicts (nearly) the mean; the embeddings are unlikely to be useful. Try a lower mask_ratio,",
                 "a higher lr or more epochs. The run is tagged biosig.warning=mean_collapse."])


@torch.no_grad()
def _validation_loss(model: nn.Module, batches, device, config) -> tuple[float, float]:
    """Val loss and prediction/target variance ratio with the same masks every epoch (a fixed
    generator), so epochs are comparable."""
    model.eval()
    generator = torch.Generator().manual_seed(config.seed + 1)
    total, ratio_total, count = 0.0, 0.0, 0
    for x, *_ in batches:  # a stream's batches also carry their reader's id
        x = x.to(device, non_blocking=True)
        with loop.autocast(device, config.amp):
            loss, ratio = model(x, generator)
        total += loss.item() * len(x)
        ratio_total += ratio.item() * len(x)
        count += len(x)
    loss = total / count
    if not math.isfinite(loss):
        raise TrainingError(f"validation loss is {loss}: lower lr or check the data for extreme values")
    return loss, ratio_total / count


def _meta(config: PretrainConfig, name: str, fs: float, stats: ChannelStats, logged, run_id: str,
          model: nn.Module) -> dict[str, Any]:
    """biosig.json of the pretrained checkpoint (`model`: the backbone with its pretraining objective)."""
    return {
        "kind": "pretrained",
        "name": name,
        "backbone": model.backbone.describe(),
        "channels": list(config.channels),
        "fs": fs,
        "context_length": config.context_length,
        "patch_length": config.patch_length,
        "normalisation": stats.to_dict(),
        "objective": {"type": config.objective, "mask_ratio": config.mask_ratio,
                      "masking_style": getattr(model, "style", "fill"),  # token models mask by removal/replacement
                      "prediction_length": config.prediction_length},
        "provenance": {"run_id": run_id, "dataset": logged.name, "dataset_digest": logged.digest,
                       "dataset_uri": logged.uri, "biosig_version": biosig.__version__},
    }


def _save(path: Path, state_dict: dict, meta: dict, **provenance: Any) -> None:
    meta = {**meta, "provenance": {**meta["provenance"], **provenance,
                                   "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}}
    save_checkpoint(path, state_dict, meta)


@dataclasses.dataclass
class MidEpoch:
    """Where an epoch stood when last/ was saved inside it: the stream's position and the loss sums so far."""

    position: StreamPosition
    total: float
    count: int


def _mid_epoch_hook(position: StreamPosition, every: int,
                    save: Callable[[MidEpoch], None]) -> Callable[[list[torch.Tensor], float, int], None]:
    """after_step of a streamed epoch: count each batch's reader; every `every` batches, save last/."""
    def after_step(batch: list[torch.Tensor], total: float, count: int) -> None:
        position.count(batch[-1])  # the reader id comes last
        if every and position.batches % every == 0:
            save(MidEpoch(position, total, count))
    return after_step


def _save_last(path: Path, model, optimizer, scheduler, generator, meta: dict, progress: loop.TrainingProgress,
               midway: MidEpoch | None = None) -> None:
    """last/: weights + optimiser, schedule, RNG and history after `progress.epoch` complete epochs (plus,
    saved inside an epoch, the stream position and loss sums of the epoch under way)."""
    step = midway.position.batches if midway else 0
    _save(path, model.state_dict(), {**meta, "kind": "pretrain-state"}, epoch=progress.epoch, step=step)
    mid = {"position": midway.position.to_dict(), "total": midway.total, "count": midway.count} if midway else {}
    loop.save_training_state(path, {
        "midway": mid, "step": step,
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
        "epoch": progress.epoch, "best_val_loss": -progress.best_score, "best_epoch": progress.best_epoch,
        "history": yaml.safe_dump(progress.history),
    })


def _fetch_resume(ctx: RunContext, config: PretrainConfig, work: Path) -> Path:
    """Download `last/` of run `config.resume` and check that it trained the model configured here."""
    run_id = config.resume
    run = ctx.find_run(run_id)
    if run is None:
        raise ConfigError(f"config key 'resume': no run with id {run_id!r} in this tracking store")
    if run.data.tags.get(COMMAND_TAG) != "pretrain":
        raise ConfigError(f"config key 'resume': run {run_id} is not a pretrain run")
    if run.info.status == "RUNNING" and (state := liveness(run)).alive:
        raise ConfigError(f"config key 'resume': run {run_id} is still running ({state.reason}); stop it first, "
                          "or let `biosig doctor --fix` close it once its process is gone")
    last = ctx.download_artifacts(run_id, "last", work / "previous")
    if last is None:
        raise TrainingError(f"run {run_id} logged no last/ checkpoint (it stopped before its first epoch ended)")
    previous = read_meta(last)
    wanted = {"name": config.model_name(), **config.backbone_config()}
    had = {"name": previous["name"], **previous["backbone"]["config"]}
    differing = [k for k in wanted if wanted[k] != had.get(k)]
    if differing:
        raise ConfigError(f"config key 'resume': run {run_id} trained a different model "
                          f"({', '.join(f'{k}: {had.get(k)!r} there, {wanted[k]!r} here' for k in differing)})")
    if run.info.status == "RUNNING":  # its process died (kill -9, a lost node): this run takes over
        close_dead_run(ctx.client, run_id, f"interrupted; continued by run {ctx.run_id}")
    return last


def _restore(ctx: RunContext, last: Path, model, optimizer, scheduler, generator,
             work: Path) -> tuple[loop.TrainingProgress, MidEpoch | None]:
    """Continue from `last/`: weights, optimiser, schedule, RNG, the best checkpoint and the loss curve,
    and, when it was saved inside an epoch, where that epoch stood."""
    run_id = read_meta(last)["provenance"]["run_id"]
    saved = loop.load_training_state(last)
    weights = read_meta(last)["provenance"]
    if (weights.get("epoch"), weights.get("step", 0)) != (saved["epoch"], saved.get("step", 0)):
        # kill -9 while last/ was being uploaded: files of two saves
        raise TrainingError(f"last/ of run {run_id} mixes the weights of epoch {weights.get('epoch')} step "
                            f"{weights.get('step', 0)} with the training state of epoch {saved['epoch']} step "
                            f"{saved.get('step', 0)} (its upload was interrupted): resume from another run")
    load_weights(last, model)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    generator.set_state(saved["generator"])
    torch.set_rng_state(saved["torch_rng"])
    if saved["best_epoch"]:
        best = ctx.download_artifacts(run_id, "checkpoint", work / "previous")
        if best is None:
            raise TrainingError(f"run {run_id} records a best epoch but logged no checkpoint/ directory")
        shutil.copytree(best, work / "checkpoint")
        ctx.log_artifacts(work / "checkpoint", "checkpoint")
    history = yaml.safe_load(saved["history"]) or []
    for row in history:  # the whole curve in one run
        ctx.log_metrics({k: row[k] for k in HISTORY_METRICS if k in row}, step=row["epoch"])
    ctx.set_tags({RESUMED_FROM_TAG: run_id, RESUMED_AT_EPOCH_TAG: saved["epoch"]})
    mid = saved.get("midway") or {}
    midway = MidEpoch(StreamPosition.from_dict(mid["position"]), float(mid["total"]), int(mid["count"])) if mid \
        else None
    where = f"at batch {midway.position.batches} of epoch {midway.position.epoch}" if midway else \
        f"after epoch {saved['epoch']}"
    log.info(f"  resuming run {run_id} {where} (best epoch {saved['best_epoch']}, "
             f"val_loss {saved['best_val_loss']:.4f})")
    progress = loop.TrainingProgress(epoch=int(saved["epoch"]), best_epoch=int(saved["best_epoch"]),
                                     best_score=-float(saved["best_val_loss"]), history=history)
    return progress, midway


@dataclasses.dataclass
class ProbeEvidence:
    tags: dict[str, str] = dataclasses.field(default_factory=dict)
    sentence: str = ""
    rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)


def _probe_evidence(ctx: RunContext, config: PretrainConfig, monitor: ProbeMonitor | None, best_epoch: int,
                    checkpoint: Path) -> ProbeEvidence:
    """The probe of the registered weights against its baselines (nothing without a probe)."""
    if monitor is None:
        return ProbeEvidence()
    best = build_backbone(config.arch, config.channels, config.backbone_config())
    load_weights(checkpoint, best)
    final = monitor.final(best_epoch, best.to(monitor.device))
    tags = monitor.evidence(ctx, final, best_epoch)
    ctx.set_tags(tags)
    ctx.log_dict(monitor.curve_rows(), "probe/curve.json")
    log.info(f"  {monitor.sentence(final)}")
    return ProbeEvidence(tags, monitor.sentence(final), monitor.curve_rows())


def _register(ctx: RunContext, config: PretrainConfig, name: str, logged, progress: loop.TrainingProgress,
              model_id: str, evidence: ProbeEvidence) -> str:
    tags = {
        **evidence.tags,
        ARCH_TAG: config.arch, KIND_TAG: "pretrained", RUN_ID_TAG: ctx.run_id,
        DATASET_NAME_TAG: logged.name, DATASET_DIGEST_TAG: logged.digest,
        BEST_EPOCH_TAG: progress.best_epoch, VAL_LOSS_TAG: f"{-progress.best_score:.6g}",
        **{FIELD_TAG_PREFIX + k: ",".join(v) if isinstance(v, list) else v for k, v in _name_fields(config).items()},
    }
    version = register_from_run(ctx, name, source=f"models:/{model_id}", model_id=model_id, tags=tags,
                                model_tags={ARCH_TAG: config.arch},
                                description=f"Pretrained {config.arch} backbone ({config.objective}) on {logged.name}: "
                                            f"val_loss {-progress.best_score:.4f} at epoch {progress.best_epoch}. "
                                            f"{evidence.sentence + ' ' if evidence.sentence else ''}"
                                            f"Model card: model_card.md of run {ctx.run_id}")
    log.info(f"registered {name} version {version} (alias @{CANDIDATE_ALIAS})")
    return version


def _name_fields(config: PretrainConfig) -> dict[str, Any]:
    return parse_name(config.model_name()).fields
