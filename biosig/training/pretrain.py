"""`pretrain`: self-supervised pretraining of a backbone, registered under its conventional name.

Objectives: masked-patch reconstruction (`mae`, loss on masked patches only) and forecasting
(`fcst`: the backbone sees `context_length` samples and a linear head predicts the next
`prediction_length`). Each epoch logs train/val loss and writes `last/` (weights + optimiser state,
for resume) as run artifacts; the best epoch by val loss is the `checkpoint/` directory that becomes a
version of the registered model `ttm_{channels}_c{context}_p{patch}_...` with the alias `candidate`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml
from torch import nn

import biosig
from biosig.config import require_range
from biosig.data import SourceOptions
from biosig.data.adapt import ContextFit, ChannelStats, fit_context, select_channels
from biosig.data.channels import check_channels
from biosig.data.splits import subject_split
from biosig.errors import ConfigError, TrainingError
from biosig.models.build import build_backbone
from biosig.models.checkpoint import load_weights, read_meta, save_checkpoint
from biosig.models.ttm import check_patching
from biosig.registry.naming import parse_name, ttm_name
from biosig.registry.publish import CANDIDATE_ALIAS, publish_version, unpublish_version
from biosig.tracking.datasets import use_dataset
from biosig.tracking.run import RunContext, tracked_run
from biosig.training import loop
from biosig.training.masking import PatchReconstructionHead, apply_mask, masked_mse, patchify, random_patch_mask

BACKBONE_KEYS = ("context_length", "patch_length", "d_model", "num_layers", "expansion_factor", "dropout", "mode")
HISTORY_METRICS = ("train_loss", "val_loss", "lr")


@dataclasses.dataclass
class PretrainConfig(loop.LoopConfig):
    """`pretrain`: self-supervised pretraining; the defaults are the PPG+ECG TTM of the product brief."""

    data: str = "synthetic:ppg-ecg"  # source spec or .parquet/.npz path (see log_dataset)
    n_subjects: int = 0  # synthetic sizes; 0 keeps the source's default
    windows_per_subject: int = 0
    data_dir: str = "data"  # where synthetic/npz sources are written as parquet
    channels: list[str] = dataclasses.field(default_factory=lambda: ["PPG", "ECG"])
    arch: Literal["ttm"] = "ttm"
    context_length: int = 1024
    patch_length: int = 128
    d_model: int = 64
    num_layers: int = 3
    expansion_factor: int = 2
    dropout: float = 0.1
    mode: Literal["common_channel", "mix_channel"] = "common_channel"
    objective: Literal["mae", "fcst"] = "mae"
    mask_ratio: float = 0.4
    prediction_length: int = 96
    context_fit: ContextFit = "crop_or_pad"
    epochs: int = 10
    val_fraction: float = 0.2
    register: bool = True
    resume: str = ""  # run id of an earlier pretrain run to continue from its last epoch

    def validate(self) -> None:
        super().validate()
        check_channels(self.channels, "config key 'channels'")
        check_patching(self.context_length, self.patch_length)
        require_range("mask_ratio", self.mask_ratio, 0, 1, low_open=True, high_open=True)
        require_range("val_fraction", self.val_fraction, 0, 1, low_open=True, high_open=True)
        require_range("dropout", self.dropout, 0, 1, high_open=True)
        for key in ("epochs", "d_model", "num_layers", "expansion_factor", "prediction_length"):
            require_range(key, getattr(self, key), 1)

    def model_name(self) -> str:
        return ttm_name(channels=self.channels, context_length=self.context_length, patch_length=self.patch_length,
                        objective=self.objective, mask_ratio=self.mask_ratio,
                        prediction_length=self.prediction_length, mode=self.mode)

    def backbone_config(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in BACKBONE_KEYS}

    @property
    def window_length(self) -> int:
        return self.context_length + (self.prediction_length if self.objective == "fcst" else 0)


class ForecastHead(nn.Module):
    """Per channel: flattened patch embeddings [B, C, P*d] -> the next `horizon` samples."""

    def __init__(self, num_patches: int, d_model: int, horizon: int) -> None:
        super().__init__()
        self.proj = nn.Linear(num_patches * d_model, horizon)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.proj(embeddings.flatten(2))


class PretrainModel(nn.Module):
    def __init__(self, backbone: nn.Module, config: PretrainConfig) -> None:
        super().__init__()
        self.backbone = backbone
        self.objective = config.objective
        self.mask_ratio = config.mask_ratio
        self.head = (PatchReconstructionHead(backbone.d_model, backbone.patch_length) if config.objective == "mae"
                     else ForecastHead(backbone.num_patches, backbone.d_model, config.prediction_length))

    def loss(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.objective == "fcst":
            context = self.backbone.context_length
            prediction = self.head(self.backbone(x[..., :context]))
            return nn.functional.mse_loss(prediction.float(), x[..., context:].float())
        patch = self.backbone.patch_length
        mask = random_patch_mask((x.shape[0], x.shape[1], x.shape[2] // patch), self.mask_ratio,
                                 generator=generator).to(x.device)
        prediction = self.head(self.backbone(apply_mask(x, mask, patch)))
        return masked_mse(prediction.float(), patchify(x, patch).float(), mask)


@dataclasses.dataclass
class PretrainResult:
    run_id: str
    name: str
    version: str | None
    best_epoch: int
    best_val_loss: float
    history: list[dict[str, float]]


def pretrain(config: PretrainConfig, *, nested: bool = False) -> PretrainResult:
    """The `pretrain` command: one run, one checkpoint, one registered version (unless register=false)."""
    name = config.model_name()
    with tracked_run("pretrain", config, nested=nested, tags={"biosig.model_name": name}) as ctx, \
            tempfile.TemporaryDirectory(prefix="biosig-pretrain-") as tmp:
        work = Path(tmp)
        previous = _fetch_resume(ctx, config, work) if config.resume else None  # fail before any data work
        device = loop.resolve_device(config.device)
        logged = use_dataset(ctx, config.data, SourceOptions(n_subjects=config.n_subjects,
                             windows_per_subject=config.windows_per_subject, seed=config.seed),
                             output_dir=config.data_dir, context="training")
        ws = logged.windows
        splits = subject_split(ws, config.val_fraction, 0.0, seed=config.seed)
        arrays = {split: fit_context(select_channels(part.signals, ws.channels, config.channels, logged.name), ws.fs,
                                     target_length=config.window_length, target_fs=ws.fs,
                                     policy=config.context_fit, where=logged.name)
                  for split, part in splits.items() if split != "test"}
        stats = ChannelStats.fit(arrays["train"], config.channels)
        arrays = {split: stats.apply(x) for split, x in arrays.items()}
        generator = loop.seed_everything(config.seed)
        model = PretrainModel(build_backbone(config.arch, config.channels, config.backbone_config()), config).to(device)
        train_loader = loop.loader([arrays["train"]], config.batch_size, shuffle=True, generator=generator)
        val_loader = loop.loader([arrays["val"]], config.batch_size, shuffle=False)
        optimizer, scheduler = loop.optimizer_and_schedule(
            [{"params": list(model.parameters())}], config.lr, config.weight_decay,
            config.epochs * len(train_loader), config.warmup_fraction)
        meta = _meta(config, name, ws.fs, stats, logged, ctx.run_id)
        n_params = sum(p.numel() for p in model.backbone.parameters())
        ctx.log_metrics({"backbone_params": n_params, "train_windows": len(arrays["train"]),
                         "val_windows": len(arrays["val"])})
        print(f"pretrain {name}: {n_params:,} backbone parameters, {len(arrays['train'])} train / "
              f"{len(arrays['val'])} val windows of {logged.name}, device {device}, run {ctx.run_id}")
        state = {"epoch": 0, "best_val_loss": math.inf, "best_epoch": 0, "history": []}
        if previous is not None:
            state = _restore(ctx, previous, model, optimizer, scheduler, generator, work)
        for epoch in range(state["epoch"] + 1, config.epochs + 1):
            started = time.perf_counter()
            train_loss = _train_epoch(model, train_loader, optimizer, scheduler, generator, device, config, epoch)
            val_loss = _evaluate(model, val_loader, device, config)
            row = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "lr": scheduler.get_last_lr()[0]}
            state["history"].append(row)
            ctx.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch)
            ctx.metrics.flush(wait=False)  # per epoch, in the background: the UI shows live curves
            improved = val_loss < state["best_val_loss"]
            if improved:
                state.update(best_val_loss=val_loss, best_epoch=epoch)
                _save(work / "checkpoint", model.backbone.state_dict(), meta, epoch=epoch, val_loss=val_loss)
                ctx.log_artifacts(work / "checkpoint", "checkpoint")
            state["epoch"] = epoch
            _save_last(work / "last", model, optimizer, scheduler, generator, meta, state)
            ctx.log_artifacts(work / "last", "last")
            print(f"  epoch {epoch}/{config.epochs}: train_loss {train_loss:.4f}  val_loss {val_loss:.4f}"
                  f"{'  *best' if improved else ''}  ({time.perf_counter() - started:.1f} s)")
        ctx.metrics.flush()
        ctx.log_dict(state["history"], "history.json")
        if state["best_epoch"] == 0:
            raise TrainingError(f"run {config.resume} already trained {state['epoch']} epochs and no best "
                                "checkpoint exists; raise epochs to continue")
        ctx.set_tags({"biosig.best_epoch": state["best_epoch"]})
        version = _register(ctx, config, name, logged, state) if config.register else None
        return PretrainResult(ctx.run_id, name, version, state["best_epoch"], state["best_val_loss"], state["history"])


def _train_epoch(model: PretrainModel, batches, optimizer, scheduler, generator, device, config, epoch) -> float:
    model.train()
    total, count = 0.0, 0
    for i, (x,) in enumerate(batches):
        x = x.to(device, non_blocking=True)
        with loop.autocast(device, config.amp):
            loss = model.loss(x, generator)
        loop.check_finite(loss, f"epoch {epoch} step {i + 1}")
        loop.step(model, loss, optimizer, scheduler, config.grad_clip)
        total += loss.item() * len(x)
        count += len(x)
    return total / count


@torch.no_grad()
def _evaluate(model: PretrainModel, batches, device, config) -> float:
    """Val loss with the same masks every epoch (a fixed generator), so epochs are comparable."""
    model.eval()
    generator = torch.Generator().manual_seed(config.seed + 1)
    total, count = 0.0, 0
    for (x,) in batches:
        x = x.to(device, non_blocking=True)
        with loop.autocast(device, config.amp):
            loss = model.loss(x, generator)
        total += loss.item() * len(x)
        count += len(x)
    loss = total / count
    if not math.isfinite(loss):
        raise TrainingError(f"validation loss is {loss}: lower lr or check the data for extreme values")
    return loss


def _meta(config: PretrainConfig, name: str, fs: float, stats: ChannelStats, logged, run_id: str) -> dict[str, Any]:
    return {
        "kind": "pretrained",
        "name": name,
        "backbone": {"arch": config.arch, "channels": list(config.channels), "config": config.backbone_config()},
        "channels": list(config.channels),
        "fs": fs,
        "context_length": config.context_length,
        "patch_length": config.patch_length,
        "normalisation": stats.to_dict(),
        "objective": {"type": config.objective, "mask_ratio": config.mask_ratio,
                      "prediction_length": config.prediction_length},
        "provenance": {"run_id": run_id, "dataset": logged.name, "dataset_digest": logged.digest,
                       "dataset_uri": str(Path(logged.path).resolve()), "biosig_version": biosig.__version__},
    }


def _save(path: Path, state_dict: dict, meta: dict, **provenance: Any) -> None:
    meta = {**meta, "provenance": {**meta["provenance"], **provenance,
                                   "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}}
    save_checkpoint(path, state_dict, meta)


def _save_last(path: Path, model, optimizer, scheduler, generator, meta: dict, state: dict) -> None:
    _save(path, model.state_dict(), {**meta, "kind": "pretrain-state"}, epoch=state["epoch"])
    loop.save_training_state(path, {
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
        "epoch": state["epoch"], "best_val_loss": state["best_val_loss"], "best_epoch": state["best_epoch"],
        "history": yaml.safe_dump(state["history"]),
    })


def _fetch_resume(ctx: RunContext, config: PretrainConfig, work: Path) -> Path:
    """Download `last/` of run `config.resume` and check that it trained the model configured here."""
    run_id = config.resume
    run = ctx.find_run(run_id)
    if run is None:
        raise ConfigError(f"config key 'resume': no run with id {run_id!r} in this tracking store")
    if run.data.tags.get("biosig.command") != "pretrain":
        raise ConfigError(f"config key 'resume': run {run_id} is not a pretrain run")
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
    return last


def _restore(ctx: RunContext, last: Path, model, optimizer, scheduler, generator, work: Path) -> dict:
    """Continue from `last/`: weights, optimiser, schedule, RNG, the best checkpoint and the loss curve."""
    run_id = read_meta(last)["provenance"]["run_id"]
    load_weights(last, model)
    saved = loop.load_training_state(last)
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
        ctx.log_metrics({k: row[k] for k in HISTORY_METRICS}, step=row["epoch"])
    ctx.set_tags({"biosig.resumed_from": run_id, "biosig.resumed_at_epoch": saved["epoch"]})
    print(f"  resuming run {run_id} after epoch {saved['epoch']} (best epoch {saved['best_epoch']}, "
          f"val_loss {saved['best_val_loss']:.4f})")
    return {"epoch": int(saved["epoch"]), "best_val_loss": float(saved["best_val_loss"]),
            "best_epoch": int(saved["best_epoch"]), "history": history}


def _register(ctx: RunContext, config: PretrainConfig, name: str, logged, state: dict) -> str:
    source = f"{ctx.run.info.artifact_uri.rstrip('/')}/checkpoint"
    tags = {
        "biosig.arch": config.arch, "biosig.kind": "pretrained", "biosig.run_id": ctx.run_id,
        "biosig.dataset.name": logged.name, "biosig.dataset.digest": logged.digest,
        "biosig.best_epoch": state["best_epoch"], "biosig.val_loss": f"{state['best_val_loss']:.6g}",
        **{f"biosig.field.{k}": ",".join(v) if isinstance(v, list) else v for k, v in _name_fields(config).items()},
    }
    version = publish_version(name, source=source, run_id=ctx.run_id, tags=tags,
                              description=f"Pretrained {config.arch} backbone ({config.objective}); see run "
                                          f"{ctx.run_id}", model_tags={"biosig.arch": config.arch})
    ctx.on_failure(lambda: unpublish_version(name, version.version))  # a failed run registers nothing
    ctx.set_tags({"biosig.registered_model": name, "biosig.registered_version": version.version})
    print(f"registered {name} version {version.version} (alias @{CANDIDATE_ALIAS})")
    return str(version.version)


def _name_fields(config: PretrainConfig) -> dict[str, Any]:
    return parse_name(config.model_name()).fields
