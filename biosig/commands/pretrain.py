"""`pretrain`: self-supervised pretraining of a backbone, registered under its conventional name.

Objectives: TTM masked-patch reconstruction (`mae`, masked patches filled in the input, loss on them
only) or forecasting (`fcst`: the backbone sees `context_length` samples and a linear head predicts the
next `prediction_length`); Mamba-2 masked-token reconstruction (`masking_style` mae: masked tokens
removed from the encoder, or bert: replaced by a mask token). Each epoch logs train/val loss and the
val prediction/target variance ratio (mean-collapse guard) and writes `last/` (weights + optimiser
state, for resume) as run artifacts; the best epoch by val loss is the `checkpoint/` directory that
becomes a version of the registered model `ttm_…` / `mamba2_…` with the alias `candidate`. The loop itself
is biosig.training.pretrainer; this command coordinates: data, run, probe evidence, registration.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path
from typing import Any

from torch import nn

import biosig
from biosig.backbones import build_backbone
from biosig.commands.configs import PretrainConfig
from biosig.commands.probing import ProbeMonitor, start_probe_monitor
from biosig.data import SourceOptions
from biosig.data.adapt import ChannelStats
from biosig.data.shards import is_sharded
from biosig.errors import ConfigError, TrainingError
from biosig.logs import banner, get_logger
from biosig.models.checkpoint import load_weights, read_meta
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
from biosig.training.pretrainer import HISTORY_METRICS, Pretrainer, in_memory_feed, streamed_feed

log = get_logger(__name__)


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
    settings = config.pretrain_settings()
    logged = _load_data(ctx, config, dist)
    feed = (streamed_feed(settings, logged.manifest, logged.name, dist) if logged.manifest is not None
            else in_memory_feed(settings, logged.windows, logged.name))
    generator = loop.seed_everything(config.seed)
    model = pretrain_model(config, config.channels).to(device)
    hooks = _RunHooks(ctx)
    trainer = Pretrainer(ctx, settings, model, feed, _meta(config, name, feed.fs, feed.stats, logged, ctx.run_id, model),
                         work, hooks, device=device, generator=generator, dist=dist)
    n_params = sum(p.numel() for p in model.backbone.parameters())
    ctx.log_sizes({"backbone_params": n_params, "train_windows": feed.n_train, "val_windows": feed.n_val})
    # before any weight is trained or restored: the probe's random-initialisation floor
    hooks.monitor = start_probe_monitor(ctx, config, feed.fs, feed.stats, model.backbone, device) if dist.leader \
        else None
    if dist.leader:
        log.info(f"pretrain {name}: {n_params:,} backbone parameters, {feed.n_train} train / "
                 f"{feed.n_val} val windows of {logged.name}{feed.how}, device {device}"
                 f"{f', {dist.world_size} processes' if dist.active else ''}, run {ctx.run_id}")
    ctx.begin_model(name, model_type=f"pretrained {config.arch}", dataset=logged.mlflow_ref,
                    params={"arch": config.arch, "objective": config.objective, **_name_fields(config),
                            "dataset": logged.name})
    if previous is not None:
        _continue(ctx, trainer, previous, work)
    if config.checkpoint_every and (dist.active or not feed.streamed):  # e.g. a folder that became sharded
        raise ConfigError(CHECKPOINT_EVERY_NEEDS)
    progress = trainer.run()
    if not dist.leader:
        return PretrainResult("", name, None, 0, math.nan, [])
    ctx.log_dict(progress.history, "history.json")
    if progress.best_epoch == 0:
        raise TrainingError(f"run {config.resume} already trained {progress.epoch} epochs and no best "
                            "checkpoint exists; raise epochs to continue")
    ctx.set_tags({BEST_EPOCH_TAG: progress.best_epoch})
    ctx.log_metrics({"best_epoch": progress.best_epoch, "best_val_loss": -progress.best_score},  # the model's result
                    step=progress.best_epoch, result=True)
    _check_mean_collapse(ctx, progress.best_row().get("val_pred_var_ratio", math.nan), config.collapse_ratio)
    evidence = _probe_evidence(ctx, config, hooks.monitor, progress.best_epoch, work / "checkpoint")
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


@dataclasses.dataclass
class _RunHooks:
    """The loop's side of the run: written directories become run artifacts; the probe runs after epochs."""

    ctx: RunContext | FollowerContext
    monitor: ProbeMonitor | None = None

    def publish(self, directory: Path, artifact_path: str) -> None:
        self.ctx.log_artifacts(directory, artifact_path)

    def after_epoch(self, backbone: nn.Module, epoch: int) -> str | None:
        return self.monitor.after_epoch(self.ctx, backbone, epoch) if self.monitor else None


def _load_data(ctx: RunContext | FollowerContext, config: PretrainConfig, dist: loop.Distributed) -> LoggedDataset:
    """The leader logs the dataset (and writes its parquet); other processes read the same source. A
    sharded dataset stays where it is and is streamed."""
    options = SourceOptions(n_subjects=config.n_subjects, windows_per_subject=config.windows_per_subject,
                            seed=config.seed)
    if dist.leader:
        return use_dataset(ctx, config.data, options, output_dir=config.data_dir, context="training", stream=True)
    return follow_dataset(config.data, options, stream=True)


def _check_mean_collapse(ctx: RunContext, ratio: float, threshold: float) -> None:
    """Masked reconstruction's known failure: predicting the mean (variance ratio near 0)."""
    if not ratio < threshold:
        return
    ctx.set_tags({WARNING_TAG: "mean_collapse", PRED_VAR_RATIO_TAG: f"{ratio:.4g}"})
    banner(log, [f"MEAN COLLAPSE: at the best epoch the reconstructions' variance is {ratio:.3g} of the targets' "
                 f"(< {threshold}).",
                 "The model predicts (nearly) the mean; the embeddings are unlikely to be useful. Try a lower mask_ratio,",
                 "a higher lr or more epochs. The run is tagged biosig.warning=mean_collapse."])


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


def _continue(ctx: RunContext, trainer: Pretrainer, last: Path, work: Path) -> None:
    """Resume from `last/`: the trainer takes its state; this run takes the earlier run's best checkpoint
    and its loss curve, so the whole curve is in one run."""
    run_id = read_meta(last)["provenance"]["run_id"]
    saved = trainer.restore(last)
    if saved["best_epoch"]:
        best = ctx.download_artifacts(run_id, "checkpoint", work / "previous")
        if best is None:
            raise TrainingError(f"run {run_id} records a best epoch but logged no checkpoint/ directory")
        shutil.copytree(best, work / "checkpoint")
        ctx.log_artifacts(work / "checkpoint", "checkpoint")
    for row in trainer.progress.history:
        ctx.log_metrics({k: row[k] for k in HISTORY_METRICS if k in row}, step=row["epoch"])
    ctx.set_tags({RESUMED_FROM_TAG: run_id, RESUMED_AT_EPOCH_TAG: saved["epoch"]})


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
