"""Pretraining's loop, below the commands: where batches come from (arrays in memory or streams over a
sharded dataset), AdamW with cosine warm-up over every epoch, DDP (a stream's uneven batch counts joined),
validation with fixed masks, the best epoch by val loss, and the `last/` state that `resume` continues from,
mid-epoch for a stream. It shares its pieces with the fine-tuning `fit` (biosig.training.loop's `train_epoch`,
`TrainingProgress`, `optimizer_and_schedule`, the `TrainingLog` protocol) and, like it, imports no MLflow:
the command publishes files and reads probes through the `PretrainHooks` it passes in.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import math
import time
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch
import yaml
from torch import nn

from biosig.data.adapt import ChannelStats, WindowTransform, fit_context, require_channels, select_channels
from biosig.data.shards import Manifest, verify_all
from biosig.data.splits import manifest_subject_split, subject_split
from biosig.data.windowset import WindowSet
from biosig.errors import TrainingError
from biosig.logs import get_logger
from biosig.models.checkpoint import load_weights, read_meta, save_checkpoint
from biosig.training import loop
from biosig.training.settings import PretrainSettings
from biosig.training.stream import ShardStream, StreamPosition, stream_loader
from biosig.training.trainer import TrainingLog

log = get_logger(__name__)

NORMALISATION_SAMPLE = 16384  # training windows a streamed dataset's channel mean/std are fitted on
HISTORY_METRICS = ("train_loss", "val_loss", "val_pred_var_ratio", "lr")


@dataclasses.dataclass
class PretrainFeed:
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

    def loaders(self, settings: PretrainSettings, generator: torch.Generator, dist: loop.Distributed):
        """(train batches, val batches, optimiser steps per epoch)."""
        if self.streams is not None:
            train = stream_loader(self.streams["train"], settings.data_workers)
            val = stream_loader(self.streams["val"], settings.data_workers)
            return train, val, self.streams["train"].batches_per_epoch(max(1, settings.data_workers))
        train = loop.loader([self.arrays["train"]], settings.batch_size, shuffle=True, generator=generator, dist=dist,
                            seed=settings.seed)
        return train, loop.loader([self.arrays["val"]], settings.batch_size, shuffle=False), len(train)

    def readers(self, data_workers: int) -> int:
        return self.streams["train"].readers(data_workers) if self.streams else 1

    def set_epoch(self, loader, epoch: int) -> None:
        if self.streams is not None:
            self.streams["train"].set_epoch(epoch)
        elif isinstance(loader.sampler, torch.utils.data.DistributedSampler):
            loader.sampler.set_epoch(epoch)


def in_memory_feed(settings: PretrainSettings, ws: WindowSet, where: str) -> PretrainFeed:
    """Train/val arrays of a subject split, fitted to the context and normalised on the training windows."""
    splits = subject_split(ws, settings.val_fraction, 0.0, seed=settings.seed)
    arrays = {split: fit_context(select_channels(part.signals, ws.channels, settings.channels, where), ws.fs,
                                 target_length=settings.window_length, target_fs=ws.fs, policy=settings.context_fit,
                                 where=where, patch_length=settings.patch_length)
              for split, part in splits.items() if split != "test"}
    stats = ChannelStats.fit(arrays["train"], settings.channels)
    arrays = {split: stats.apply(x) for split, x in arrays.items()}
    return PretrainFeed(ws.fs, stats, len(arrays["train"]), len(arrays["val"]), arrays=arrays)


def streamed_feed(settings: PretrainSettings, manifest: Manifest, where: str, dist: loop.Distributed) -> PretrainFeed:
    """Train/val streams over the subjects of a manifest split; the normalisation is fitted on a sample
    of NORMALISATION_SAMPLE training windows from randomly drawn row groups (not a pass over the corpus)."""
    verify_all(manifest)  # every shard's bytes against the manifest (remembered per machine)
    subjects = manifest_subject_split(manifest, settings.val_fraction, 0.0, seed=settings.seed)
    channels = settings.channels
    require_channels(manifest.channels, channels, where)  # only these columns are read
    transform = WindowTransform(channels, channels, manifest.fs, settings.window_length, settings.context_fit,
                                settings.patch_length, where)
    sample, held = [], 0
    for x, _ in ShardStream(manifest, 1024, subjects=subjects["train"], transform=transform, seed=settings.seed,
                            verify=False, channels=channels):
        sample.append(x.numpy())
        held += len(x)
        if held >= NORMALISATION_SAMPLE:
            break
    transform.stats = ChannelStats.fit(np.concatenate(sample), channels)
    streams = {
        "train": ShardStream(manifest, settings.batch_size, subjects=subjects["train"], transform=transform,
                             seed=settings.seed, rank=dist.rank, world_size=dist.world_size, verify=False,
                             channels=channels),
        "val": ShardStream(manifest, settings.batch_size, subjects=subjects["val"], transform=transform, shuffle=False,
                           verify=False, channels=channels),
    }
    log.info(f"  streamed: {streams['train'].use_cache(settings.stream_cache, settings.epochs)}")
    streams["val"].use_cache(settings.stream_cache, settings.epochs)  # read every epoch too
    return PretrainFeed(manifest.fs, transform.stats, streams["train"].windows, streams["val"].windows,
                        streams=streams)


@dataclasses.dataclass
class MidEpoch:
    """Where an epoch stood when last/ was saved inside it: the stream's position and the loss sums so far."""

    position: StreamPosition
    total: float
    count: int


class PretrainHooks(Protocol):
    """What the command does around the loop: publish a written directory (checkpoint/, last/) as run
    artifacts, and probe the backbone after an epoch (a short text for the epoch's line, or None)."""

    def publish(self, directory: Path, artifact_path: str) -> None: ...

    def after_epoch(self, backbone: nn.Module, epoch: int) -> str | None: ...


class Pretrainer:
    """One pretraining run's state: the model (a backbone with its objective), its DDP wrapper, the feed,
    the optimiser and schedule, the RNG and the progress. `run` trains the epochs left; `checkpoint/`
    (the best epoch's backbone) and `last/` (everything resume needs) are written under `work`."""

    def __init__(self, log_to: TrainingLog, settings: PretrainSettings, model: nn.Module, feed: PretrainFeed,
                 meta: dict[str, Any], work: Path, hooks: PretrainHooks, *, device: torch.device,
                 generator: torch.Generator, dist: loop.Distributed) -> None:
        self.log_to, self.settings, self.model, self.feed, self.meta = log_to, settings, model, feed, meta
        self.work, self.hooks, self.device, self.generator, self.dist = work, hooks, device, generator, dist
        self.train_loader, self.val_loader, steps_per_epoch = feed.loaders(settings, generator, dist)
        if dist.active:  # different masks per process; DDP copies rank 0's initial weights to all
            generator.manual_seed(settings.seed * 1000 + dist.rank)
        self.optimizer, self.scheduler = loop.optimizer_and_schedule(
            decay_groups(model), settings.lr, settings.weight_decay, settings.epochs * steps_per_epoch,
            settings.warmup_fraction)
        self.trained = torch.nn.parallel.DistributedDataParallel(model) if dist.active else model
        self.progress = loop.TrainingProgress()  # best_score: -val_loss
        self.midway: MidEpoch | None = None

    def run(self) -> loop.TrainingProgress:
        """Train from the epoch after `progress.epoch` (a restored one continues) to `settings.epochs`."""
        for epoch in range(self.progress.epoch + 1, self.settings.epochs + 1):
            self._epoch(epoch)
        self.log_to.flush_metrics()
        return self.progress

    def _epoch(self, epoch: int) -> None:
        s, dist, feed = self.settings, self.dist, self.feed
        started = time.perf_counter()
        self.trained.train()
        feed.set_epoch(self.train_loader, epoch)
        midway = self.midway if self.midway is not None and self.midway.position.epoch == epoch else None
        if midway is not None:
            feed.streams["train"].resume(midway.position)
        position = midway.position if midway else StreamPosition(epoch, feed.readers(s.data_workers))

        def loss_of(batch: list[torch.Tensor]) -> torch.Tensor:
            return self.trained(batch[0], self.generator)[0]

        # a stream deals whole row groups to ranks, so ranks may get unequal batch counts: DDP's join
        # lets a rank that ran out shadow the collective calls of those still training
        with self.trained.join() if dist.active and feed.streamed else contextlib.nullcontext():
            total, count = loop.train_epoch(self.trained, self.train_loader, self.optimizer, self.scheduler, loss_of,
                                            device=self.device, amp=s.amp, grad_clip=s.grad_clip,
                                            where=f"epoch {epoch}",
                                            totals=(midway.total, midway.count) if midway else (0.0, 0),
                                            after_step=self._mid_epoch_hook(position) if feed.streamed else None)
        self.midway = None
        train_s = time.perf_counter() - started
        train_loss, seen = dist.mean_and_count(total, count)
        self.progress.epoch = epoch
        if dist.leader:
            self._validate(epoch, train_loss, seen, train_s, started)

    def _validate(self, epoch: int, train_loss: float, seen: int, train_s: float, started: float) -> None:
        val_loss, ratio = validation_loss(self.model, self.val_loader, self.device, self.settings)
        row = {"train_loss": train_loss, "val_loss": val_loss, "val_pred_var_ratio": ratio,
               "lr": self.scheduler.get_last_lr()[0],
               "train_windows_seen": seen, "train_windows_per_s": seen / train_s}  # all processes together
        self.log_to.log_metrics(row, step=epoch)
        probed = self.hooks.after_epoch(self.model.backbone, epoch)
        self.log_to.flush_metrics(wait=False)  # per epoch, in the background: the UI shows live curves
        improved = self.progress.record(row, -val_loss)
        if improved:
            save_stamped(self.work / "checkpoint", self.model.backbone.state_dict(), self.meta, epoch=epoch,
                         val_loss=val_loss)
            self.hooks.publish(self.work / "checkpoint", "checkpoint")
        self.save_last()
        log.info(f"  epoch {epoch}/{self.settings.epochs}: train_loss {train_loss:.4f}  val_loss {val_loss:.4f}  "
                 f"pred/target var {ratio:.3f}{f'  probe AUROC {probed}' if probed else ''}"
                 f"{'  *best' if improved else ''}  ({time.perf_counter() - started:.1f} s)")

    def _mid_epoch_hook(self, position: StreamPosition) -> Callable[[list[torch.Tensor], float, int], None]:
        """after_step of a streamed epoch: count each batch's reader; every `checkpoint_every` batches, save last/."""
        every = self.settings.checkpoint_every

        def after_step(batch: list[torch.Tensor], total: float, count: int) -> None:
            position.count(batch[-1])  # the reader id comes last
            if every and position.batches % every == 0:
                self.save_last(MidEpoch(position, total, count))
        return after_step

    def save_last(self, midway: MidEpoch | None = None) -> None:
        """last/: weights + optimiser, schedule, RNG and history after `progress.epoch` complete epochs (plus,
        saved inside an epoch, the stream position and loss sums of the epoch under way), then published."""
        path, progress = self.work / "last", self.progress
        step = midway.position.batches if midway else 0
        save_stamped(path, self.model.state_dict(), {**self.meta, "kind": "pretrain-state"}, epoch=progress.epoch,
                     step=step)
        mid = {"position": midway.position.to_dict(), "total": midway.total, "count": midway.count} if midway else {}
        loop.save_training_state(path, {
            "midway": mid, "step": step,
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state(), "torch_rng": torch.get_rng_state(),
            "epoch": progress.epoch, "best_val_loss": -progress.best_score, "best_epoch": progress.best_epoch,
            "history": yaml.safe_dump(progress.history),
        })
        self.hooks.publish(path, "last")

    def restore(self, last: Path) -> dict[str, Any]:
        """Continue from `last/` (downloaded by the command): weights, optimiser, schedule, RNG and the loss
        curve, and, when it was saved inside an epoch, where that epoch stood. Returns the saved state."""
        run_id = read_meta(last)["provenance"]["run_id"]
        saved = loop.load_training_state(last)
        weights = read_meta(last)["provenance"]
        if (weights.get("epoch"), weights.get("step", 0)) != (saved["epoch"], saved.get("step", 0)):
            # kill -9 while last/ was being uploaded: files of two saves
            raise TrainingError(f"last/ of run {run_id} mixes the weights of epoch {weights.get('epoch')} step "
                                f"{weights.get('step', 0)} with the training state of epoch {saved['epoch']} step "
                                f"{saved.get('step', 0)} (its upload was interrupted): resume from another run")
        load_weights(last, self.model)
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.generator.set_state(saved["generator"])
        torch.set_rng_state(saved["torch_rng"])
        mid = saved.get("midway") or {}
        self.midway = MidEpoch(StreamPosition.from_dict(mid["position"]), float(mid["total"]), int(mid["count"])) \
            if mid else None
        self.progress = loop.TrainingProgress(epoch=int(saved["epoch"]), best_epoch=int(saved["best_epoch"]),
                                              best_score=-float(saved["best_val_loss"]),
                                              history=yaml.safe_load(saved["history"]) or [])
        where = f"at batch {self.midway.position.batches} of epoch {self.midway.position.epoch}" if self.midway else \
            f"after epoch {saved['epoch']}"
        log.info(f"  resuming run {run_id} {where} (best epoch {saved['best_epoch']}, "
                 f"val_loss {saved['best_val_loss']:.4f})")
        return saved


def decay_groups(model: nn.Module) -> list[dict[str, Any]]:
    """AdamW groups: parameters marked `_no_weight_decay` (Mamba-2's A_log, D, dt_bias) get none."""
    params = list(model.parameters())
    exempt = [p for p in params if getattr(p, "_no_weight_decay", False)]
    groups = [{"params": [p for p in params if not getattr(p, "_no_weight_decay", False)]}]
    return groups + ([{"params": exempt, "weight_decay": 0.0}] if exempt else [])


@torch.no_grad()
def validation_loss(model: nn.Module, batches, device: torch.device, settings: PretrainSettings) -> tuple[float, float]:
    """Val loss and prediction/target variance ratio with the same masks every epoch (a fixed
    generator), so epochs are comparable."""
    model.eval()
    generator = torch.Generator().manual_seed(settings.seed + 1)
    total, ratio_total, count = 0.0, 0.0, 0
    for x, *_ in batches:  # a stream's batches also carry their reader's id
        x = x.to(device, non_blocking=True)
        with loop.autocast(device, settings.amp):
            loss, ratio = model(x, generator)
        total += loss.item() * len(x)
        ratio_total += ratio.item() * len(x)
        count += len(x)
    loss = total / count
    if not math.isfinite(loss):
        raise TrainingError(f"validation loss is {loss}: lower lr or check the data for extreme values")
    return loss, ratio_total / count


def save_stamped(path: Path, state_dict: dict, meta: dict, **provenance: Any) -> None:
    """A checkpoint directory whose provenance also records `provenance` (epoch, step, val_loss) and when."""
    meta = {**meta, "provenance": {**meta["provenance"], **provenance,
                                   "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}}
    save_checkpoint(path, state_dict, meta)
