"""`finetune`: a pretrained checkpoint (found through the registry) -> a staged fine-tune -> a pyfunc
classifier registered as `{pretrained name}_finetuned`.

Stages: 1 head only (+ new slices of channel-inflated tensors), 2 head + last `unfreeze_last_n` blocks,
3 (optional) everything at lr/10. Each stage has its own AdamW + cosine warm-up; early stopping ends a
stage after `patience` epochs without a better selection metric; the best model over all stages is the
one tested and registered.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime as dt
import hashlib
import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from sklearn.utils.class_weight import compute_class_weight
from torch import nn
from torch.utils.data import DistributedSampler

import biosig
from biosig import backbones
from biosig.backbones import build_backbone
from biosig.commands.configs import FinetuneConfig, parse_class_weights
from biosig.commands.finetune_data import FinetuneData, prepare_data, prepare_streamed
from biosig.commands.promote import PromoteConfig, run_promote
from biosig.config import load_config
from biosig.data import SourceOptions
from biosig.data.shards import read_sharded
from biosig.data.splits import cv_folds, manifest_digest, subject_split
from biosig.errors import ConfigError, TrainingError
from biosig.logs import banner, get_logger
from biosig.models.checkpoint import PRETRAINED_KEYS, read_weights, require_keys, save_checkpoint, write_meta
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
from biosig.models.inflation import drop_channels, map_channels
from biosig.models.lora import LORA_MARK, add_lora, has_lora, merge_lora
from biosig.registry.card import model_card
from biosig.registry.discovery import ResolvedCheckpoint, resolve_checkpoint
from biosig.registry.naming import FINETUNED_SUFFIX
from biosig.registry.publish import CANDIDATE_ALIAS, register_from_run
from biosig.registry.pyfunc import FEATURES_KIND, log_pyfunc
from biosig.tracking.datasets import follow_dataset, use_dataset
from biosig.tracking.liveness import scratch_dir
from biosig.tracking.run import FollowerContext, RunContext, configure_tracking, tracked_run
from biosig.tracking.tags import (
    ARCH_TAG,
    CHANNEL_MAPPING_TAG,
    CHANNELS_DROPPED_TAG,
    CLASS_WEIGHTS_TAG,
    COLLAPSED_CLASSES_TAG,
    CV_EVIDENCE_RUN_TAG,
    CV_FOLD_TAG,
    CV_FOLDS_TAG,
    CV_REFIT_TAG,
    CV_TAG,
    DATASET_DIGEST_TAG,
    DATASET_NAME_TAG,
    KIND_TAG,
    NORMALISATION_TAG,
    NOTE_CHANNELS_TAG,
    NOTE_NORMALISATION_TAG,
    PARENT_NAME_TAG,
    PARENT_URI_TAG,
    PARENT_VERSION_TAG,
    PROMOTE_TARGET_TAG_PREFIX,
    REFERENCE_CHOICE_TAG,
    REFERENCE_TAG,
    RUN_ID_TAG,
    SELECTION_FALLBACK_TAG,
    SPLIT_DIGEST_TAG,
    TASK_TAG,
    TEST_DIGEST_TAG,
    TEST_METRIC_TAG_PREFIX,
    WARNING_TAG,
    WORLD_SIZE_TAG,
)
from biosig.training import loop
from biosig.training.metrics import (
    INTERVAL_METRICS,
    aggregate_by_subject,
    classification_metrics,
    collapsed_classes,
    predictions_table,
    subject_bootstrap,
    summary_table,
)
from biosig.training.plots import confusion_png, roc_png
from biosig.training.reference import fit_feature_model
from biosig.training.stream import stream_loader

log = get_logger(__name__)


@dataclasses.dataclass
class FinetuneResult:
    run_id: str
    name: str
    version: str | None
    best_epoch: int
    val: dict[str, float]
    test: dict[str, float]  # test metrics (pooled over folds under cv), with *_ci_low/high and *_mean/std
    mode_collapse: list[str]
    model_uri: str
    test_digest: str = ""
    trainable_params: int = 0  # the most any stage trained
    parent_name: str = ""
    references: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)  # name -> test metrics
    train_subjects: int = 0  # subjects the model was trained on (the training split, or train_subjects of it)


@dataclasses.dataclass
class Tested:
    """One trained model's outcome on one split: what the evidence (intervals, CV pooling) is built from."""

    metrics: dict[str, float]
    prob: np.ndarray
    y: np.ndarray
    subject: np.ndarray


def run_finetune(config: FinetuneConfig, *, nested: bool = False, auto_name: str | None = None) -> FinetuneResult:
    """The `finetune` command: resolve the checkpoint first (fail fast), then train, test (one split or
    cross-validated), train the reference models on the same split(s), register with a model card.
    `auto_name` overrides the name that checkpoint=auto derives from `pretrain_config`."""
    if config.checkpoint == "auto" and auto_name is None:
        auto_name = config.auto_name()
    with loop.distributed(config.device) if not nested else contextlib.nullcontext(loop.Distributed()) as dist:
        if dist.active and config.cv:
            raise ConfigError("config key 'cv' trains its folds one after another in one process: start it "
                              "without torchrun")
        parent = resolve_parent(config, auto_name)
        if not dist.leader:
            return _follow(config, parent, dist)
        return _finetune(config, parent, nested, dist)


def _follow(config: FinetuneConfig, parent: ResolvedCheckpoint, dist: loop.Distributed) -> FinetuneResult:
    """A torchrun process other than rank 0: the same rows and split, its share of every training batch;
    rank 0 owns the run, validation, the test, the references and the registration."""
    logged = follow_dataset(config.data, SourceOptions(n_subjects=config.n_subjects,
                            windows_per_subject=config.windows_per_subject, seed=config.seed), stream=not config.cv)
    data = _prepare(logged, config, parent)
    trainer = _train(FollowerContext(), config, parent, data, dist=dist)
    return FinetuneResult("", "", None, trainer.best_epoch, trainer.best_val, {}, trainer.collapsed, "")


def _finetune(config: FinetuneConfig, parent: ResolvedCheckpoint, nested: bool,
              dist: loop.Distributed) -> FinetuneResult:
    tags = {WORLD_SIZE_TAG: dist.world_size} if dist.active else {}
    with tracked_run("finetune", config, nested=nested, tags=tags) as ctx, scratch_dir("finetune") as tmp:
        ctx.set_tags(parent.lineage())
        ctx.name_run(f"finetune → {parent.name or parent.meta.get('name', 'checkpoint')}{FINETUNED_SUFFIX}")
        log.info(f"finetune from {parent.describe()} (run {ctx.run_id})")
        parent_name = parent.name or parent.meta.get("name", "")
        logged = use_dataset(ctx, config.data, SourceOptions(n_subjects=config.n_subjects,
                             windows_per_subject=config.windows_per_subject, seed=config.seed),
                             output_dir=config.data_dir, context="training", stream=not config.cv)
        if config.split_manifest:
            ctx.set_tags({SPLIT_DIGEST_TAG: manifest_digest(config.split_manifest)})
        ctx.begin_model(f"{parent_name}{FINETUNED_SUFFIX}", model_type="finetuned", dataset=logged.mlflow_ref)
        evidence = (_cross_validate(ctx, config, parent, logged, Path(tmp)) if config.cv
                    else _single_split(ctx, config, parent, logged, Path(tmp), dist))
        trainer, meta, model_info = evidence.trainer, evidence.meta, evidence.model_info
        name = f"{parent_name}{FINETUNED_SUFFIX}"
        version = None
        card = model_card(name=name, meta=meta, parent=parent, dataset=logged, evidence=evidence, config=config)
        ctx.log_table(summary_table({"fine-tuned": evidence.test, **{f"reference: {k}": v.metrics
                                                                     for k, v in evidence.references.items()}}),
                      "evaluation/test_summary.json")
        ctx.log_text(card.text, "model_card.md")
        if config.register:
            version = _register(ctx, name, model_info, parent, logged, evidence.test, meta["task"], evidence.test_digest,
                                card)
            if config.promote:
                _promote(ctx, config, name, version)
        ctx.describe(f"Fine-tuned `{parent.describe()}` on `{logged.name}` (digest `{logged.digest[:12]}`). "
                     f"{card.headline}. " + (f"Registered as {name} version {version}; the model card is model_card.md."
                                             if version else "Not registered."))
        trainable = max(c["trainable"] for c in trainer.stage_counts.values())
        return FinetuneResult(ctx.run_id, name, version, trainer.best_epoch, trainer.best_val, evidence.test,
                              trainer.collapsed, model_info.model_uri, evidence.test_digest, trainable, parent_name,
                              {k: v.metrics for k, v in evidence.references.items()},
                              len(np.unique(evidence.data.subject.get("train", []))))


def resolve_parent(config: FinetuneConfig, auto_name: str | None = None) -> ResolvedCheckpoint:
    """The pretrained checkpoint, resolved and checked before any run exists: a wrong name, path or
    architecture is one line and no FAILED run."""
    configure_tracking(config.tracking_uri)
    parent = resolve_checkpoint(config.checkpoint, auto_name=auto_name, expected_arch=config.expected_arch())
    require_keys(parent.meta, PRETRAINED_KEYS, f"checkpoint {parent.uri}: biosig.json")
    return parent


@dataclasses.dataclass
class Evidence:
    """What a finetune run knows at the end: the model to register (trainer, data, its biosig.json and the
    logged pyfunc), its test metrics with intervals, the references' outcomes, split sizes for the card."""

    trainer: "Trainer"
    data: FinetuneData
    test: dict[str, float]
    test_digest: str
    references: dict[str, Tested]
    meta: dict[str, Any]  # the registered model's biosig.json
    model_info: Any  # the logged pyfunc model (mlflow ModelInfo)
    folds: int = 0
    subjects: dict[str, int] = dataclasses.field(default_factory=dict)
    windows: dict[str, int] = dataclasses.field(default_factory=dict)


def _single_split(ctx: RunContext, config: FinetuneConfig, parent: ResolvedCheckpoint, logged, tmp: Path,
                  dist: loop.Distributed | None = None) -> Evidence:
    data = _prepare(logged, config, parent)
    ctx.set_tags({TEST_DIGEST_TAG: data.test_digest})
    trainer, tested = _train_and_test(ctx, config, parent, data, tmp, dist)
    test = {**tested.metrics, **_interval(ctx, config, tested, data.class_names)}
    references = run_references(ctx, config, parent, data, logged, tmp)
    _log_reference_deltas(ctx, test, references)
    meta, model_info = _log_model(ctx, config, parent, logged, trainer, data, tmp)
    return Evidence(trainer, data, test, data.test_digest, references, meta, model_info,
                    subjects={s: len(np.unique(v)) for s, v in data.subject.items()},
                    windows={s: len(v) for s, v in data.y.items()})


def _prepare(logged, config: FinetuneConfig, parent: ResolvedCheckpoint) -> FinetuneData:
    """The splits of the run's dataset: prepared in memory, or (a sharded dataset) streamed."""
    if logged.windows is None:
        return prepare_streamed(logged.manifest, logged.name, config, parent)
    return prepare_data(logged.windows, logged.name, config, parent)


def _train(ctx: RunContext | FollowerContext, config: FinetuneConfig, parent: ResolvedCheckpoint,
           data: FinetuneData, *, pretrained: bool = True, schedule: list[tuple[int, int, float]] | None = None,
           dist: loop.Distributed | None = None) -> "Trainer":
    """Build the classifier (pretrained weights, or random for the scratch reference) and run its schedule
    (with `dist` active: data-parallel over the torchrun processes)."""
    dist = dist or loop.Distributed()
    device = dist.device(config.device)
    generator = loop.seed_everything(config.seed)
    model, masks = build_model(ctx, parent, data, config, pretrained=pretrained)
    model.to(device)
    check_unfreeze(config.unfreeze_last_n, len(model.backbone.blocks()))
    trainer = Trainer(ctx, config, model, masks, data, device, generator, schedule=schedule, dist=dist)
    trainer.run()
    return trainer


def _train_and_test(ctx: RunContext, config: FinetuneConfig, parent: ResolvedCheckpoint, data: FinetuneData,
                    tmp: Path, dist: loop.Distributed | None = None) -> tuple["Trainer", Tested]:
    trainer = _train(ctx, config, parent, data, dist=dist)
    return trainer, trainer.test(tmp)


def _interval(ctx: RunContext, config: FinetuneConfig, tested: Tested, class_names: list[str]) -> dict[str, float]:
    """Subject-level bootstrap interval of the test metrics (at the selection level), logged as test_*_ci_*."""
    ci = _interval_values(config, tested, class_names)
    ctx.log_metrics({f"test_{k}": v for k, v in ci.items()})
    return ci


def _cross_validate(ctx: RunContext, config: FinetuneConfig, parent: ResolvedCheckpoint, logged, tmp: Path) -> Evidence:
    """Each fold a nested run (model + references); the parent logs pooled test metrics over every
    fold's test predictions, per-fold mean/sd and a subject bootstrap interval; then one model is refit
    on all subjects (train/val only) with the same settings and registered with this evidence."""
    ws = logged.windows if logged.windows is not None else read_sharded(logged.uri)  # folds hold their signals
    folds = cv_folds(ws, config.cv, config.val_fraction, seed=config.seed)
    log.info(f"cross-validation: {len(folds)} subject folds (cv={config.cv})")
    outcomes: list[Tested] = []
    ref_outcomes: dict[str, list[Tested]] = {name: [] for name in config.reference}
    digests = []
    for i, splits in enumerate(folds, start=1):
        fold_config = dataclasses.replace(config, run_name=f"fold {i}/{len(folds)}", cv="", register=False)
        with tracked_run("finetune", fold_config, nested=True, tags={CV_FOLD_TAG: str(i)}) as fold_ctx:
            log.info(f"fold {i}/{len(folds)}: test subjects {', '.join(map(str, np.unique(splits['test'].subject)))}")
            data = prepare_data(ws, logged.name, fold_config, parent, splits=splits)
            fold_ctx.set_tags({TEST_DIGEST_TAG: data.test_digest, **parent.lineage()})
            _, tested = _train_and_test(fold_ctx, fold_config, parent, data, tmp)
            outcomes.append(tested)
            digests.append(data.test_digest)
            for name, ref in run_references(fold_ctx, fold_config, parent, data, logged, tmp).items():
                ref_outcomes[name].append(ref)
    class_names = data.class_names
    test_digest = hashlib.sha256("".join(digests).encode()).hexdigest()
    ctx.set_tags({TEST_DIGEST_TAG: test_digest, CV_TAG: config.cv, CV_FOLDS_TAG: str(len(folds))})
    pooled = _pool(ctx, config, outcomes, class_names, "test_")
    references = {}
    for name, parts in ref_outcomes.items():
        metrics = _pool(None, config, parts, class_names, "")
        ctx.log_metrics({f"reference.{name}.test_{k}": v for k, v in metrics.items() if k in _REFERENCE_KEYS})
        references[name] = Tested(metrics, np.concatenate([p.prob for p in parts]),
                                  np.concatenate([p.y for p in parts]), np.concatenate([p.subject for p in parts]))
    _log_reference_deltas(ctx, pooled, references)
    log.info(f"  cross-validated test (pooled over {len(folds)} folds): auroc {pooled['auroc']:.3f} "
             f"[{pooled.get('auroc_ci_low', math.nan):.3f}, {pooled.get('auroc_ci_high', math.nan):.3f}]  "
             f"per-fold {pooled['auroc_mean']:.3f} +- {pooled['auroc_std']:.3f}")
    refit_config = dataclasses.replace(config, run_name="refit on all subjects", cv="", register=False)
    with tracked_run("finetune", refit_config, nested=True, tags={CV_REFIT_TAG: "true"}) as refit_ctx:
        log.info("refit on all subjects (train/val only) with the same settings")
        splits = subject_split(ws, config.val_fraction, 0.0, seed=config.seed)
        data = prepare_data(ws, logged.name, refit_config, parent, splits=splits)
        refit_ctx.set_tags({**parent.lineage(), CV_EVIDENCE_RUN_TAG: ctx.run_id})
        trainer = _train(refit_ctx, refit_config, parent, data)
        meta, model_info = _log_model(refit_ctx, config, parent, logged, trainer, data, tmp, model_id=ctx.model_id)
    counts = [len(np.unique(o.subject)) for o in outcomes]
    return Evidence(trainer, data, pooled, test_digest, references, meta, model_info, folds=len(folds),
                    subjects={"train": len(np.unique(data.subject["train"])), "val": len(np.unique(data.subject["val"])),
                              "test (pooled over folds)": sum(counts)},
                    windows={"train": len(data.y["train"]), "val": len(data.y["val"]),
                             "test (pooled over folds)": sum(len(o.y) for o in outcomes)})


_REFERENCE_KEYS = ("auroc", "f1", "balanced_accuracy", "auroc_ci_low", "auroc_ci_high")




def run_references(ctx: RunContext, config: FinetuneConfig, parent: ResolvedCheckpoint, data: FinetuneData, logged,
                   tmp: Path) -> dict[str, Tested]:
    """Each reference of `config.reference` as a nested run on exactly this split (same test digest),
    logged as a pyfunc with the fine-tuned model's input signature; the calling run gets
    `reference.<name>.test_<metric>`."""
    out: dict[str, Tested] = {}
    for name in config.reference:
        ref_config = dataclasses.replace(config, run_name=f"reference: {name}", register=False, reference=[], cv="")
        tags = {REFERENCE_TAG: name, TEST_DIGEST_TAG: data.test_digest}
        with tracked_run("finetune", ref_config, nested=True, tags=tags) as ref_ctx:
            log.info(f"reference model '{name}' on the same split")
            train = _features_reference if name == "features" else _scratch_reference
            work = tmp / f"reference-{name}"
            work.mkdir(parents=True, exist_ok=True)
            tested = train(ref_ctx, ref_config, parent, data, logged, work)
            tested.metrics.update(_interval(ref_ctx, ref_config, tested, data.class_names))
        ctx.log_metrics({f"reference.{name}.test_{k}": tested.metrics[k] for k in _REFERENCE_KEYS
                         if k in tested.metrics})
        out[name] = tested
    return out


def _features_reference(ctx: RunContext, config: FinetuneConfig, parent: ResolvedCheckpoint, data: FinetuneData,
                        logged, tmp: Path) -> Tested:
    """Window features of the raw windows (full length) + the scikit-learn model chosen on val."""
    model, scores = fit_feature_model({s: data.raw_inputs(s) for s in ("train", "val")}, data.y, data.fs, data.channels,
                                      len(data.class_names), seed=config.seed)
    ctx.log_metrics({f"selection.val_auroc.{name}": value for name, value in scores.items()})
    ctx.set_tags({REFERENCE_CHOICE_TAG: model.choice})
    tested = {}
    for split in ("val", "test"):
        prob = model.predict_proba(data.raw_inputs(split))
        metrics = split_metrics(data.y[split], prob, data.subject[split], data.class_names, config.aggregate,
                                config.selection_level)
        ctx.log_metrics({f"{split}_{k}": v for k, v in metrics.items()})
        tested[split] = Tested(metrics, prob, data.y[split], data.subject[split])
    log.info(f"  features reference ({model.choice}, chosen on val AUROC {scores[model.choice]:.3f}): test auroc "
             f"{tested['test'].metrics['auroc']:.3f}  f1 {tested['test'].metrics['f1']:.3f}")
    meta = {"kind": FEATURES_KIND, "name": f"{parent.name or parent.meta.get('name', '')}_features_reference",
            "task": config.task or logged.label_name, "class_names": data.class_names, "channels": data.channels,
            "fs": data.fs, "reference": model.describe(), "input": logged.input_spec,
            "provenance": {"run_id": ctx.run_id, "dataset": logged.name, "dataset_digest": logged.digest,
                           "biosig_version": biosig.__version__}}
    write_meta(model.save(tmp), meta)
    log_pyfunc(tmp, meta)
    return tested["test"]


def _scratch_reference(ctx: RunContext, config: FinetuneConfig, parent: ResolvedCheckpoint, data: FinetuneData,
                       logged, tmp: Path) -> Tested:
    """The fine-tuned model's architecture and head from random weights, every parameter trained for as
    many epochs as all fine-tuning stages together (freezing random blocks would teach nothing)."""
    epochs = config.stage1_epochs + config.stage2_epochs + config.stage3_epochs
    trainer = _train(ctx, config, parent, data, pretrained=False, schedule=[(3, epochs, config.lr)])
    tested = trainer.test(tmp)
    meta = {**_finetuned_meta(config, parent, parent.name or parent.meta.get("name", ""), data, logged, ctx.run_id,
                              trainer), "kind": "scratch_reference"}
    log_pyfunc(save_checkpoint(tmp / "checkpoint", trainer.best_state, meta), meta)
    return tested


def _log_reference_deltas(ctx: RunContext, test: dict[str, float], references: dict[str, Tested]) -> None:
    """`reference.<name>.delta_test_auroc` (model minus reference) and a side-by-side table on stdout."""
    if not references:
        return
    ctx.log_metrics({f"reference.{name}.delta_test_{m}": test[m] - ref.metrics[m]
                     for name, ref in references.items() for m in ("auroc", "f1") if m in ref.metrics})
    rows = [("fine-tuned", test)] + [(f"reference: {name}", ref.metrics) for name, ref in references.items()]
    log.info("  on the same test split:")
    for label, metrics in rows:
        ci = (f" [{metrics['auroc_ci_low']:.3f}, {metrics['auroc_ci_high']:.3f}]"
              if math.isfinite(metrics.get("auroc_ci_low", math.nan)) else "")
        log.info(f"    {label:<22} auroc {metrics['auroc']:.3f}{ci}  f1 {metrics['f1']:.3f}  "
                 f"balanced_accuracy {metrics['balanced_accuracy']:.3f}")


def _log_model(ctx: RunContext, config: FinetuneConfig, parent: ResolvedCheckpoint, logged, trainer: "Trainer",
               data: FinetuneData, tmp: Path, model_id: str | None = None) -> tuple[dict[str, Any], Any]:
    """The best state as a checkpoint directory, logged as the pyfunc model `model_id` (default: the one
    the run began; the cross-validation refit fills its parent's)."""
    parent_name = parent.name or parent.meta.get("name", "")
    meta = _finetuned_meta(config, parent, parent_name, data, logged, ctx.run_id, trainer)
    checkpoint = save_checkpoint(tmp / "checkpoint", trainer.best_state, meta)
    return meta, log_pyfunc(checkpoint, meta, model_id=model_id or ctx.model_id)


def _pool(ctx: RunContext | None, config: FinetuneConfig, parts: list[Tested], class_names: list[str],
          prefix: str) -> dict[str, float]:
    """Metrics of all folds' test predictions together (each subject tested once), per-fold mean/sd of
    the interval metrics, and the subject bootstrap interval of the pooled predictions."""
    y = np.concatenate([p.y for p in parts])
    prob = np.concatenate([p.prob for p in parts])
    subject = np.concatenate([p.subject for p in parts])
    tested = Tested(split_metrics(y, prob, subject, class_names, config.aggregate, config.selection_level), prob, y,
                    subject)
    metrics = dict(tested.metrics)
    for metric in INTERVAL_METRICS:
        values = np.array([p.metrics[metric] for p in parts], dtype=float)
        finite = values[np.isfinite(values)]
        metrics[f"{metric}_mean"] = float(finite.mean()) if len(finite) else math.nan
        metrics[f"{metric}_std"] = float(finite.std(ddof=1)) if len(finite) > 1 else math.nan
    if ctx is not None:
        ctx.log_metrics({f"{prefix}{k}": v for k, v in metrics.items()})
        metrics.update(_interval(ctx, config, tested, class_names))
    else:
        metrics.update(_interval_values(config, tested, class_names))
    return metrics


def _interval_values(config: FinetuneConfig, tested: Tested, class_names: list[str]) -> dict[str, float]:
    if not config.bootstrap:
        return {}
    y, prob, subject = tested.y, tested.prob, tested.subject
    if config.aggregate != "none" and config.selection_level == "participant":
        subject, y, prob = aggregate_by_subject(subject, y, prob, config.aggregate)
    return subject_bootstrap(y, prob, subject, class_names, n_resamples=config.bootstrap, seed=config.seed)


def split_metrics(y: np.ndarray, prob: np.ndarray, subject: np.ndarray, class_names: list[str], aggregate: str,
                  selection_level: str) -> dict[str, float]:
    """Window metrics, and with `aggregate` the participant-level ones too: plain names are those of
    `selection_level`, both levels are also given as window_* and participant_*."""
    window = classification_metrics(y, prob, class_names)
    if aggregate == "none":
        return window
    _, y_subject, p_subject = aggregate_by_subject(subject, y, prob, aggregate)
    participant = classification_metrics(y_subject, p_subject, class_names)
    selected = participant if selection_level == "participant" else window
    return {**selected, **{f"window_{k}": v for k, v in window.items()},
            **{f"participant_{k}": v for k, v in participant.items()}}


def build_model(ctx: RunContext, parent: ResolvedCheckpoint, data: FinetuneData, config: FinetuneConfig,
                pretrained: bool = True):
    """Backbone for the new channel layout with the pretrained weights mapped by channel name
    (`pretrained=False`: the same architecture randomly initialised, for the scratch reference)."""
    spec = parent.meta["backbone"]
    if data.note:
        log.info(f"  note: {data.note}")
        ctx.set_tags({NOTE_NORMALISATION_TAG: data.note})
    ctx.set_tags({NORMALISATION_TAG: data.stats.kind})
    try:
        backbone = build_backbone(spec["arch"], data.channels, spec["config"])
    except ConfigError as exc:
        raise TrainingError(f"checkpoint {parent.uri}: its biosig.json describes a {spec['arch']} backbone that "
                            f"cannot be built: {exc}") from None
    if not backbone.channel_flexible and data.channels != parent.meta["channels"]:
        raise TrainingError(f"checkpoint {parent.uri} embeds all channels of {parent.meta['channels']} jointly "
                            f"(tokenization=joint) and cannot take channels {data.channels}: select exactly those "
                            "channels, in that order (config key 'channels'), or pretrain with per_channel tokens")
    if not pretrained:
        return Classifier(backbone, len(data.class_names), head=config.head, dropout=config.head_dropout,
                          pooling=config.pooling), None
    weights = read_weights(parent.path)
    old_channels = list(parent.meta["channels"])
    dropped = [c for c in old_channels if c not in data.channels]
    if dropped:  # a subset of the pretrained montage: keep the present channels' weights, by name
        kept = [c for c in old_channels if c in data.channels]
        weights, resliced = drop_channels(weights, build_backbone(spec["arch"], kept, spec["config"]).state_dict(),
                                          old_channels, kept)
        note = (f"pretrained channels {dropped} are absent from the data and were dropped"
                + (f"; {len(resliced)} channel-dependent tensors re-sliced by name" if resliced
                   else " (no channel-dependent tensors)"))
        log.info(f"  note: {note}")
        ctx.set_tags({CHANNELS_DROPPED_TAG: ",".join(dropped), NOTE_CHANNELS_TAG: note})
        old_channels = kept
    mapping = map_channels(weights, backbone.state_dict(), old_channels, data.channels)
    try:
        backbone.load_state_dict(mapping.state_dict, strict=True)
    except RuntimeError as exc:
        raise TrainingError(f"checkpoint {parent.uri} does not fit a {spec['arch']} backbone: {exc}") from None
    layout = spec["config"].get("mode") or spec["config"].get("tokenization", "?")
    log.info(f"  channel mapping ({layout}): {mapping.describe()}")
    ctx.set_tags({CHANNEL_MAPPING_TAG: mapping.describe()})
    model = Classifier(backbone, len(data.class_names), head=config.head, dropout=config.head_dropout,
                       pooling=config.pooling)
    masks = GradientMasks(model, {f"backbone.{k}": v for k, v in mapping.pretrained_masks.items()}) \
        if mapping.pretrained_masks else None
    return model, masks


class Trainer:
    """The staged loop: per-epoch metrics with step=epoch, early stopping, the best state kept."""

    def __init__(self, ctx: RunContext, config: FinetuneConfig, model: Classifier, masks: GradientMasks | None,
                 data: FinetuneData, device: torch.device, generator: torch.Generator,
                 on_epoch: Callable[[int, dict[str, float]], None] | None = None,
                 schedule: list[tuple[int, int, float]] | None = None, dist: loop.Distributed | None = None) -> None:
        self.ctx, self.config, self.model, self.masks, self.data = ctx, config, model, masks, data
        self.dist = dist or loop.Distributed()
        self.trained: nn.Module = model  # what the training step calls: the model, or its DDP wrapper
        c = config
        #: (stage, epochs, lr): staged unfreezing by default; the scratch reference trains everything throughout
        self.schedule = schedule or [(1, c.stage1_epochs, c.lr), (2, c.stage2_epochs, c.lr), (3, c.stage3_epochs, c.lr / 10)]
        self.on_epoch = on_epoch  # e.g. an Optuna trial's report/prune check
        self.device, self.generator = device, generator
        weights = _class_weights(config.class_weights, data.y["train"], len(data.class_names))
        self.criterion = nn.CrossEntropyLoss(weight=None if weights is None else torch.tensor(weights).to(device))
        if weights is not None:
            ctx.set_tags({CLASS_WEIGHTS_TAG: ",".join(f"{w:.4g}" for w in weights)})
        self.stream = (data.streamed.train_stream(config.batch_size, config.seed, self.dist)
                       if data.streamed is not None else None)
        self.train_loader = (stream_loader(self.stream, config.data_workers) if self.stream is not None else
                             loop.loader([data.x["train"], data.y["train"]], config.batch_size, shuffle=True,
                                         generator=generator, dist=self.dist, seed=config.seed))
        self.steps_per_epoch = (self.stream.batches_per_epoch(max(1, config.data_workers)) if self.stream is not None
                                else len(self.train_loader))
        self.progress = loop.TrainingProgress()  # epochs count on across stages
        self.planned_epochs = sum(epochs for _, epochs, _ in self.schedule)  # early stopping may end sooner
        self.best_val: dict[str, float] = {}
        self.best_state: dict[str, torch.Tensor] = {}
        self.collapsed: list[str] = []
        self.stage_counts: dict[int, dict[str, Any]] = {}
        self.warned_nan_selection = False
        self.lora_layers: list[str] = []  # adaptation=lora: the adapted layers, once stage 2 added them

    @property
    def epoch(self) -> int:
        return self.progress.epoch

    @property
    def best_epoch(self) -> int:
        return self.progress.best_epoch

    @property
    def history(self) -> list[dict[str, Any]]:
        return self.progress.history

    def run(self) -> None:
        for stage, epochs, lr in self.schedule:
            if epochs:
                self._stage(stage, epochs, lr)
            if stage == 1 and epochs:
                self._check_collapse()
        if has_lora(self.model.backbone):
            self._merge_lora()
        self.ctx.metrics.flush()
        self.ctx.log_dict(self.history, "history.json")
        self.ctx.log_dict(self.stage_counts, "stages.json")

    def _stage(self, stage: int, epochs: int, lr: float) -> None:
        lora = stage == 2 and self.config.adaptation == "lora"
        counts = self._add_lora() if lora else apply_stage(self.model, stage, self.config.unfreeze_last_n, self.masks)
        self.stage_counts[stage] = dataclasses.asdict(counts)
        self.trained = self._data_parallel()
        log.info(f"  {counts.describe()}")
        self.ctx.log_metrics({f"stage{stage}.trainable_params": counts.trainable,
                              f"stage{stage}.frozen_params": counts.frozen}, step=self.epoch)
        optimizer, scheduler = loop.optimizer_and_schedule(param_groups(self.model, self.masks), lr, self.config.weight_decay,
                                                           epochs * self.steps_per_epoch, self.config.warmup_fraction)
        stale = 0
        for _ in range(epochs):
            self.progress.epoch += 1
            started = time.perf_counter()
            if self.stream is not None:
                self.stream.set_epoch(self.epoch)
            elif isinstance(self.train_loader.sampler, DistributedSampler):
                self.train_loader.sampler.set_epoch(self.epoch)
            train_loss, seen = self._train_epoch(stage, optimizer, scheduler, lora)
            train_s = time.perf_counter() - started
            # rank 0 validates and every process follows its verdict (best state, early stop)
            val = self.dist.from_leader(self.score("val")[0] if self.dist.leader else None)
            row = {"stage": stage, "train_loss": train_loss, "lr": scheduler.get_last_lr()[0],
                   "train_windows_per_s": seen / train_s,  # all processes together, validation excluded
                   **{f"val_{k}": v for k, v in val.items()}}
            self.ctx.log_metrics(row, step=self.epoch)
            self.ctx.metrics.flush(wait=False)  # per epoch, in the background: the UI shows live curves
            improved = self.progress.record(row, self._score(val))
            if improved:
                self.best_val = val
                self.best_state = copy.deepcopy({k: v.detach().cpu() for k, v in self.model.state_dict().items()})
                stale = 0
            else:
                stale += 1
            log.info(f"  epoch {self.epoch}/{self.planned_epochs} (stage {stage}): train_loss {train_loss:.4f}  "
                     f"val_loss {val['loss']:.4f}  val_auroc {val['auroc']:.3f}  val_f1 {val['f1']:.3f}"
                     f"{'  *best' if improved else ''}  ({time.perf_counter() - started:.1f} s)")
            if self.on_epoch is not None:
                self.on_epoch(self.epoch, val)
            if stale >= self.config.patience:
                log.info(f"  early stop of stage {stage}: no better val {self.config.selection_metric} in "
                         f"{stale} epochs")
                break

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
        c = self.config
        apply_stage(self.model, 1, 0, self.masks)
        targets = backbones.get(self.model.backbone.arch).lora_targets
        layers = add_lora(self.model.backbone, targets, c.lora_rank, c.lora_alpha, c.lora_dropout)
        self.model.to(self.device)
        self.lora_layers = layers
        return count_stage(self.model, self.masks, 2, [f"LoRA r={c.lora_rank} alpha={c.lora_alpha:g} on "
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
        self.best_state = copy.deepcopy({k: v.detach().cpu() for k, v in self.model.state_dict().items()})

    def _score(self, val: dict[str, float]) -> float:
        """Higher is better. A validation split with one class has no AUROC: select on loss then."""
        metric = self.config.selection_metric
        if metric != "loss" and math.isnan(val[metric]):
            if not self.warned_nan_selection:
                log.info(f"  note: val {metric} is undefined (the val split lacks a class); selecting on val loss")
                self.ctx.set_tags({SELECTION_FALLBACK_TAG: "val_loss"})
                self.warned_nan_selection = True
            metric = "loss"
        return -val["loss"] if metric == "loss" else val[metric]

    def _train_epoch(self, stage: int, optimizer, scheduler, lora: bool = False) -> tuple[float, int]:
        """(mean training loss, windows trained on) over every process."""
        if lora:  # frozen base layers, trained adapters: dropout (the adapters' too) as in any training pass
            self.model.train()
        else:
            set_train_mode(self.model, stage, self.config.unfreeze_last_n)

        def loss_of(batch: list[torch.Tensor]) -> torch.Tensor:
            return self.criterion(self.trained(batch[0]).float(), batch[1])

        # a stream deals whole row groups to ranks, so ranks may get unequal batch counts: DDP's join lets a
        # rank that ran out shadow the collective calls of those still training
        uneven = self.dist.active and self.stream is not None
        with self.trained.join() if uneven else contextlib.nullcontext():
            total, count = loop.train_epoch(self.trained, self.train_loader, optimizer, scheduler, loss_of,
                                            device=self.device, amp=self.config.amp, grad_clip=self.config.grad_clip,
                                            where=f"stage {stage}, epoch {self.epoch},")
        return self.dist.mean_and_count(total, count)

    @torch.no_grad()
    def score(self, split: str) -> tuple[dict[str, float], np.ndarray]:
        self.model.eval()
        scores = []
        for x in self.data.inputs(split):  # in memory or streamed, in the order of y
            with loop.autocast(self.device, self.config.amp):
                scores.append(self.model(torch.from_numpy(x).to(self.device)).float().cpu())
        logits = torch.cat(scores)
        y_true = self.data.y[split]
        loss = nn.functional.cross_entropy(logits, torch.from_numpy(y_true), reduction="mean").item()
        prob = torch.softmax(logits, dim=-1).numpy()
        if not math.isfinite(loss):
            raise TrainingError(f"{split} loss is {loss} at epoch {self.epoch}: lower lr or set amp=off")
        metrics = split_metrics(y_true, prob, self.data.subject[split], self.data.class_names, self.config.aggregate,
                                self.config.selection_level)
        return {"loss": loss, **metrics}, prob

    def _check_collapse(self) -> None:
        metrics = self.history[-1]
        val = {k[len("val_"):]: v for k, v in metrics.items() if k.startswith("val_")}
        self.collapsed = collapsed_classes(val, self.data.class_names, self.config.collapse_threshold)
        if self.collapsed:
            self.ctx.set_tags({WARNING_TAG: "mode_collapse", COLLAPSED_CLASSES_TAG: ",".join(self.collapsed)})
            banner(log, [f"MODE COLLAPSE after stage 1: val recall of {self.collapsed} is below "
                         f"{self.config.collapse_threshold} -- the model (nearly) never predicts them.",
                         "Check class_weights, lr and the label balance; the run is tagged biosig.warning=mode_collapse"])

    def test(self, tmp: Path) -> Tested:
        """Evaluate the best (not the last) state on test; log metrics, plots and predictions."""
        self.model.load_state_dict(self.best_state)
        metrics, prob = self.score("test")
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
        self.ctx.log_table(predictions_table(self.data.subject["test"], y_true, prob, names),
                           "evaluation/predictions_preview.json")
        if self.config.aggregate != "none":
            subjects, y_subject, p_subject = aggregate_by_subject(self.data.subject["test"], y_true, prob,
                                                                  self.config.aggregate)
            pd.DataFrame({"subject": subjects, "y_true": y_subject, "y_pred": p_subject.argmax(axis=1),
                          "prob": list(p_subject.astype(np.float32))}).to_parquet(tmp / "participant_predictions.parquet",
                                                                                  index=False)
            self.ctx.log_artifact(tmp / "participant_predictions.parquet", "evaluation")
        log.info(f"  test (best epoch {self.best_epoch}): auroc {metrics['auroc']:.3f}  f1 {metrics['f1']:.3f}  "
                 f"balanced_accuracy {metrics['balanced_accuracy']:.3f}  ece {metrics['ece']:.3f}")
        return Tested(metrics, prob, y_true, self.data.subject["test"])


def _promote(ctx: RunContext, config: FinetuneConfig, name: str, version: str) -> None:
    """Evaluate the policy in a child run; a rejection is recorded and reported, not a failure."""
    decision = run_promote(load_config(PromoteConfig, None, {
        "model": name, "version": version, "to": config.promote, "policies": config.policies,
        "experiment": config.experiment, "tracking_uri": config.tracking_uri,
        "run_name": f"promote to {config.promote}"}), nested=True)
    ctx.set_tags({PROMOTE_TARGET_TAG_PREFIX + config.promote: "promoted" if decision.applied else "rejected"})


def _class_weights(spec: str, y: np.ndarray, n_classes: int) -> np.ndarray | None:
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


def _finetuned_meta(config: FinetuneConfig, parent: ResolvedCheckpoint, parent_name: str, data: FinetuneData, logged,
                    run_id: str, trainer: Trainer) -> dict[str, Any]:
    backbone = trainer.model.backbone
    return {
        "kind": "finetuned",
        "name": f"{parent_name}{FINETUNED_SUFFIX}",
        "task": config.task or logged.label_name,
        "backbone": backbone.describe(),
        "head": {"kind": config.head, "dropout": config.head_dropout, "pooling": config.pooling},
        "adaptation": ({"kind": "lora", "rank": config.lora_rank, "alpha": config.lora_alpha,
                        "layers": len(trainer.lora_layers), "merged": True} if trainer.lora_layers
                       else {"kind": "unfreeze", "unfreeze_last_n": config.unfreeze_last_n}),
        "class_names": data.class_names,
        "channels": data.channels,
        "fs": parent.meta["fs"],
        "context_length": parent.meta["context_length"],
        "patch_length": parent.meta["patch_length"],
        "context_fit": config.context_fit,
        "normalisation": data.stats.to_dict(),
        "input": logged.input_spec,
        "provenance": {"run_id": run_id, "parent": parent.lineage(), "dataset": logged.name,
                       "dataset_digest": logged.digest, "best_epoch": trainer.best_epoch,
                       "biosig_version": biosig.__version__,
                       "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")},
    }


def _register(ctx: RunContext, name: str, model_info, parent: ResolvedCheckpoint, logged, test: dict[str, float],
              task: str, test_digest: str, card) -> str:
    tags = {
        KIND_TAG: "finetuned", ARCH_TAG: parent.arch, RUN_ID_TAG: ctx.run_id, TASK_TAG: task,
        PARENT_NAME_TAG: parent.name or parent.meta.get("name", ""), PARENT_VERSION_TAG: parent.version or "",
        PARENT_URI_TAG: parent.uri, DATASET_NAME_TAG: logged.name, DATASET_DIGEST_TAG: logged.digest,
        **{TEST_METRIC_TAG_PREFIX + k: f"{v:.6g}" for k, v in test.items() if "." not in k},
        TEST_DIGEST_TAG: test_digest,
    }
    version = register_from_run(ctx, name, source=model_info.model_uri, model_id=model_info.model_id, tags=tags,
                                description=f"{card.headline}. Model card: run {ctx.run_id}, model_card.md",
                                model_tags={KIND_TAG: "finetuned"})
    log.info(f"registered {name} version {version} (alias @{CANDIDATE_ALIAS}); load it with "
             f"mlflow.pyfunc.load_model('models:/{name}@{CANDIDATE_ALIAS}')")
    return version
