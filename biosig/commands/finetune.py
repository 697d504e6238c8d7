"""`finetune`: a pretrained checkpoint (found through the registry) -> a staged fine-tune -> a pyfunc
classifier registered as `{pretrained name}_finetuned`.

Stages: 1 head only (+ new slices of channel-inflated tensors), 2 head + last `unfreeze_last_n` blocks,
3 (optional) everything at lr/10. Each stage has its own AdamW + cosine warm-up; early stopping ends a
stage after `patience` epochs without a better selection metric; the best model over all stages is the
one tested and registered.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import biosig
from biosig.commands.configs import FinetuneConfig
from biosig.commands.finetune_data import prepare_data, prepare_streamed
from biosig.commands.promote import PromoteConfig, run_promote
from biosig.config import load_config
from biosig.data import SourceOptions
from biosig.data.shards import read_sharded
from biosig.data.splits import cv_folds, manifest_digest, subject_split
from biosig.errors import ConfigError
from biosig.logs import get_logger
from biosig.models.checkpoint import save_checkpoint, write_meta
from biosig.registry.candidate import claim_candidate
from biosig.registry.card import model_card
from biosig.registry.discovery import ResolvedCheckpoint, resolve_pretrained
from biosig.registry.naming import FINETUNED_SUFFIX
from biosig.registry.publish import register_from_run
from biosig.registry.pyfunc import FEATURES_KIND, log_pyfunc
from biosig.tracking.datasets import LoggedDataset, follow_dataset, log_windowset, use_dataset
from biosig.tracking.liveness import scratch_dir
from biosig.tracking.run import (
    FollowerContext,
    RunContext,
    configure_tracking,
    record_classifier,
    record_fit,
    tracked_run,
)
from biosig.tracking.tags import (
    ARCH_TAG,
    CANDIDATE_REASON_TAG,
    CANDIDATE_TAG,
    CV_EVIDENCE_RUN_TAG,
    CV_FOLD_TAG,
    CV_FOLDS_TAG,
    CV_REFIT_TAG,
    CV_TAG,
    DATASET_DIGEST_TAG,
    DATASET_NAME_TAG,
    KIND_TAG,
    PARENT_NAME_TAG,
    PARENT_URI_TAG,
    PARENT_VERSION_TAG,
    PROMOTE_TARGET_TAG_PREFIX,
    REFERENCE_CHOICE_TAG,
    REFERENCE_TAG,
    RUN_ID_TAG,
    SPLIT_DIGEST_TAG,
    TASK_TAG,
    TEST_DIGEST_TAG,
    TEST_METRIC_TAG_PREFIX,
    WORLD_SIZE_TAG,
)
from biosig.training import loop
from biosig.training.classifier import build_classifier
from biosig.training.labelled import LabelledSplits
from biosig.training.metrics import (
    INTERVAL_METRICS,
    aggregate_by_subject,
    predictions_table,
    split_metrics,
    subject_bootstrap,
    summary_table,
)
from biosig.training.plots import confusion_png, roc_png
from biosig.training.reference import fit_feature_model
from biosig.training.settings import Stage
from biosig.training.trainer import FitOutcome, fit, score

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


@dataclasses.dataclass
class Job:
    """One finetune run's fixed context, handed down instead of six parallel arguments: the run, its
    config, the resolved checkpoint, the dataset it logged, its scratch folder and its process group."""

    ctx: RunContext | FollowerContext
    config: FinetuneConfig
    parent: ResolvedCheckpoint
    logged: LoggedDataset
    tmp: Path
    dist: loop.Distributed = dataclasses.field(default_factory=loop.Distributed)

    @property
    def parent_name(self) -> str:
        return self.parent.model_name

    @property
    def name(self) -> str:
        """The fine-tuned model's registered name."""
        return f"{self.parent_name}{FINETUNED_SUFFIX}"

    def nested(self, ctx: RunContext, config: FinetuneConfig) -> "Job":
        """The same job in a nested run (a fold, a reference, the refit): one process, its own config."""
        return dataclasses.replace(self, ctx=ctx, config=config, dist=loop.Distributed())


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
    logged = follow_dataset(config.data, _source_options(config), stream=not config.cv)
    job = Job(FollowerContext(), config, parent, logged, Path(), dist)
    outcome = _train(job, _prepare(job))
    return FinetuneResult("", "", None, outcome.best_epoch, outcome.best_val, {}, outcome.collapsed, "")


def _source_options(config: FinetuneConfig) -> SourceOptions:
    return SourceOptions(n_subjects=config.n_subjects, windows_per_subject=config.windows_per_subject, seed=config.seed)


def _finetune(config: FinetuneConfig, parent: ResolvedCheckpoint, nested: bool,
              dist: loop.Distributed) -> FinetuneResult:
    tags = {WORLD_SIZE_TAG: dist.world_size} if dist.active else {}
    with tracked_run("finetune", config, nested=nested, tags=tags) as ctx, scratch_dir("finetune") as tmp:
        ctx.set_tags(parent.lineage())
        ctx.name_run(f"finetune → {parent.model_name or 'checkpoint'}{FINETUNED_SUFFIX}")
        log.info(f"finetune from {parent.describe()} (run {ctx.run_id})")
        logged = use_dataset(ctx, config.data, _source_options(config), output_dir=config.data_dir,
                             context="training", stream=not config.cv)
        job = Job(ctx, config, parent, logged, Path(tmp), dist)
        if config.split_manifest:
            ctx.set_tags({SPLIT_DIGEST_TAG: manifest_digest(config.split_manifest)})
        ctx.begin_model(job.name, model_type="finetuned", dataset=logged.mlflow_ref)
        evidence = _cross_validate(job) if config.cv else _single_split(job)
        version = None
        card = model_card(name=job.name, meta=evidence.meta, parent=parent, dataset=logged, evidence=evidence,
                          config=config)
        ctx.log_table(summary_table({"fine-tuned": evidence.test, **{f"reference: {k}": v.metrics
                                                                     for k, v in evidence.references.items()}}),
                      "evaluation/test_summary.json")
        ctx.log_text(card.text, "model_card.md")
        if config.register:
            version = _register(job, evidence, card)
            if config.promote:
                _promote(ctx, config, job.name, version)
        ctx.describe(f"Fine-tuned `{parent.describe()}` on `{logged.name}` (digest `{logged.digest[:12]}`). "
                     f"{card.headline}. " + (f"Registered as {job.name} version {version}; the model card is "
                                             "model_card.md." if version else "Not registered."))
        outcome = evidence.outcome
        return FinetuneResult(ctx.run_id, job.name, version, outcome.best_epoch, outcome.best_val, evidence.test,
                              outcome.collapsed, evidence.model_info.model_uri, evidence.test_digest,
                              outcome.trainable, job.parent_name,
                              {k: v.metrics for k, v in evidence.references.items()},
                              len(np.unique(evidence.data.subject.get("train", []))))


def resolve_parent(config: FinetuneConfig, auto_name: str | None = None) -> ResolvedCheckpoint:
    """The pretrained checkpoint, resolved and checked before any run exists: a wrong name, path or
    architecture is one line and no FAILED run."""
    configure_tracking(config.tracking_uri)
    return resolve_pretrained(config.checkpoint, auto_name=auto_name, expected_arch=config.expected_arch())


@dataclasses.dataclass
class Evidence:
    """What a finetune run knows at the end: the model to register (its fit, data, biosig.json and the
    logged pyfunc), its test metrics with intervals, the references' outcomes, split sizes for the card."""

    outcome: FitOutcome
    data: LabelledSplits
    test: dict[str, float]
    test_digest: str
    references: dict[str, Tested]
    meta: dict[str, Any]  # the registered model's biosig.json
    model_info: Any  # the logged pyfunc model (mlflow ModelInfo)
    folds: int = 0
    subjects: dict[str, int] = dataclasses.field(default_factory=dict)
    windows: dict[str, int] = dataclasses.field(default_factory=dict)


def _single_split(job: Job) -> Evidence:
    data = _prepare(job)
    job.ctx.set_tags({TEST_DIGEST_TAG: data.test_digest})
    outcome = _train(job, data)
    tested = _test(job, outcome, data, "fine-tuned")
    test = {**tested.metrics, **_interval(job, tested, data.class_names)}
    references = run_references(job, data)
    _log_reference_deltas(job.ctx, test, references)
    meta, model_info = _log_model(job, outcome, data)
    return Evidence(outcome, data, test, data.test_digest, references, meta, model_info,
                    subjects={s: len(np.unique(v)) for s, v in data.subject.items()},
                    windows={s: len(v) for s, v in data.y.items()})


def _prepare(job: Job) -> LabelledSplits:
    """The splits of the run's dataset: prepared in memory, or (a sharded dataset) streamed."""
    if job.logged.windows is None:
        return prepare_streamed(job.logged.manifest, job.logged.name, job.config, job.parent)
    return prepare_data(job.logged.windows, job.logged.name, job.config, job.parent)


def _train(job: Job, data: LabelledSplits, *, pretrained: bool = True,
           schedule: list[Stage] | None = None) -> FitOutcome:
    """Build the classifier (pretrained weights, or random for the scratch reference) and fit it through
    its schedule (with `job.dist` active: data-parallel over the torchrun processes); the outcome's
    decisions become tags and its history an artifact."""
    config, ctx = job.config, job.ctx
    device = job.dist.device(config.device)
    generator = loop.seed_everything(config.seed)
    built = build_classifier(job.parent.meta, job.parent.path if pretrained else None, job.parent.uri, data.channels,
                             len(data.class_names), config.head_settings())
    record_classifier(ctx, built, data)
    built.model.to(device)
    outcome = fit(ctx, config.fit_settings(), built.model, data, schedule or config.schedule(), masks=built.masks,
                  device=device, generator=generator, dist=job.dist)
    record_fit(ctx, outcome)
    return outcome


def _test(job: Job, outcome: FitOutcome, data: LabelledSplits, label: str) -> Tested:
    """The best state tested: metrics (step = best epoch), confusion matrix, ROC, predictions."""
    ctx, config, tmp = job.ctx, job.config, job.tmp
    device = next(outcome.model.parameters()).device
    metrics, prob = score(outcome.model, data, "test", config.fit_settings(), device, outcome.best_epoch)
    ctx.log_metrics({f"test_{k}": v for k, v in metrics.items()}, step=outcome.best_epoch, result=True)
    ctx.log_metrics({"best_epoch": outcome.best_epoch})
    ctx.flush_metrics()
    y_true, names, subject = data.y["test"], data.class_names, data.subject["test"]
    title = f"test, best epoch {outcome.best_epoch}"
    for png in (confusion_png(y_true, prob, names, tmp / "confusion_matrix.png", title),
                roc_png(y_true, prob, names, tmp / "roc.png", title)):
        ctx.log_artifact(png, "evaluation")
    predictions = pd.DataFrame({"subject": subject, "y_true": y_true, "y_pred": prob.argmax(axis=1),
                                "prob": list(prob.astype(np.float32))})
    predictions.to_parquet(tmp / "predictions.parquet", index=False)
    ctx.log_artifact(tmp / "predictions.parquet", "evaluation")
    ctx.log_table(predictions_table(subject, y_true, prob, names), "evaluation/predictions_preview.json")
    if config.aggregate != "none":
        subjects, y_subject, p_subject = aggregate_by_subject(subject, y_true, prob, config.aggregate)
        pd.DataFrame({"subject": subjects, "y_true": y_subject, "y_pred": p_subject.argmax(axis=1),
                      "prob": list(p_subject.astype(np.float32))}).to_parquet(tmp / "participant_predictions.parquet",
                                                                              index=False)
        ctx.log_artifact(tmp / "participant_predictions.parquet", "evaluation")
    log.info(f"  {label} test (best epoch {outcome.best_epoch}): auroc {metrics['auroc']:.3f}  f1 {metrics['f1']:.3f}  "
             f"balanced_accuracy {metrics['balanced_accuracy']:.3f}  ece {metrics['ece']:.3f}")
    return Tested(metrics, prob, y_true, subject)


def _interval(job: Job, tested: Tested, class_names: list[str]) -> dict[str, float]:
    """Subject-level bootstrap interval of the test metrics (at the selection level), logged as test_*_ci_*."""
    ci = _interval_values(job.config, tested, class_names)
    job.ctx.log_metrics({f"test_{k}": v for k, v in ci.items()})
    return ci


def _cross_validate(job: Job) -> Evidence:
    """Each fold a nested run (model + references); the parent logs pooled test metrics over every
    fold's test predictions, per-fold mean/sd and a subject bootstrap interval; then one model is refit
    on all subjects (train/val only) with the same settings and registered with this evidence."""
    ctx, config, logged, parent = job.ctx, job.config, job.logged, job.parent
    ws = logged.windows if logged.windows is not None else read_sharded(logged.uri)  # folds hold their signals
    folds = cv_folds(ws, config.cv, config.val_fraction, seed=config.seed)
    log.info(f"cross-validation: {len(folds)} subject folds (cv={config.cv})")
    outcomes: list[Tested] = []
    ref_outcomes: dict[str, list[Tested]] = {name: [] for name in config.reference}
    digests = []
    for i, splits in enumerate(folds, start=1):
        fold_config = dataclasses.replace(config, run_name=f"fold {i}/{len(folds)}", cv="", register=False)
        with tracked_run("finetune", fold_config, nested=True, tags={CV_FOLD_TAG: str(i)}) as fold_ctx:
            fold = job.nested(fold_ctx, fold_config)
            log.info(f"fold {i}/{len(folds)}: test subjects {', '.join(map(str, np.unique(splits['test'].subject)))}")
            data = prepare_data(ws, logged.name, fold_config, parent, splits=splits)
            fold_ctx.set_tags({TEST_DIGEST_TAG: data.test_digest, **parent.lineage()})
            outcomes.append(_test(fold, _train(fold, data), data, f"fold {i}"))
            digests.append(data.test_digest)
            for name, ref in run_references(fold, data).items():
                ref_outcomes[name].append(ref)
    class_names = data.class_names
    test_digest = hashlib.sha256("".join(digests).encode()).hexdigest()
    ctx.set_tags({TEST_DIGEST_TAG: test_digest, CV_TAG: config.cv, CV_FOLDS_TAG: str(len(folds))})
    pooled = _pool(job, outcomes, class_names, "test_")
    references = {}
    for name, parts in ref_outcomes.items():
        metrics = _pool(None, parts, class_names, "", config)
        ctx.log_metrics({f"reference.{name}.test_{k}": v for k, v in metrics.items() if k in _REFERENCE_KEYS})
        references[name] = Tested(metrics, np.concatenate([p.prob for p in parts]),
                                  np.concatenate([p.y for p in parts]), np.concatenate([p.subject for p in parts]))
    _log_reference_deltas(ctx, pooled, references)
    log.info(f"  cross-validated test (pooled over {len(folds)} folds): auroc {pooled['auroc']:.3f} "
             f"[{pooled.get('auroc_ci_low', math.nan):.3f}, {pooled.get('auroc_ci_high', math.nan):.3f}]  "
             f"per-fold {pooled['auroc_mean']:.3f} +- {pooled['auroc_std']:.3f}")
    refit_config = dataclasses.replace(config, run_name="refit on all subjects", cv="", register=False)
    with tracked_run("finetune", refit_config, nested=True, tags={CV_REFIT_TAG: "true"}) as refit_ctx:
        refit = job.nested(refit_ctx, refit_config)
        log.info("refit on all subjects (train/val only) with the same settings")
        splits = subject_split(ws, config.val_fraction, 0.0, seed=config.seed)
        data = prepare_data(ws, logged.name, refit_config, parent, splits=splits)
        refit_ctx.set_tags({**parent.lineage(), CV_EVIDENCE_RUN_TAG: ctx.run_id})
        outcome = _train(refit, data)
        meta, model_info = _log_model(refit, outcome, data, model_id=ctx.model_id, config=config)
    counts = [len(np.unique(o.subject)) for o in outcomes]
    return Evidence(outcome, data, pooled, test_digest, references, meta, model_info, folds=len(folds),
                    subjects={"train": len(np.unique(data.subject["train"])), "val": len(np.unique(data.subject["val"])),
                              "test (pooled over folds)": sum(counts)},
                    windows={"train": len(data.y["train"]), "val": len(data.y["val"]),
                             "test (pooled over folds)": sum(len(o.y) for o in outcomes)})


_REFERENCE_KEYS = ("auroc", "f1", "balanced_accuracy", "auroc_ci_low", "auroc_ci_high")
#: what the features reference depends on (its run logs only these as params)
FEATURES_REFERENCE_PARAMS = ("data", "n_subjects", "windows_per_subject", "channels", "seed", "val_fraction",
                             "test_fraction", "split_manifest", "train_subjects", "aggregate", "selection_level",
                             "bootstrap", "task", "experiment")


def run_references(job: Job, data: LabelledSplits) -> dict[str, Tested]:
    """Each reference of `config.reference` as a nested run on exactly this split (same test digest),
    logged as a pyfunc with the fine-tuned model's input signature; the calling run gets
    `reference.<name>.test_<metric>`."""
    out: dict[str, Tested] = {}
    for name in job.config.reference:
        ref_config = dataclasses.replace(job.config, run_name=f"reference: {name}", register=False, reference=[],
                                         cv="")
        tags = {REFERENCE_TAG: name, TEST_DIGEST_TAG: data.test_digest}
        keys = FEATURES_REFERENCE_PARAMS if name == "features" else None  # no network: no fine-tuning keys
        with tracked_run("finetune", ref_config, nested=True, tags=tags, param_keys=keys) as ref_ctx:
            log.info(f"reference model '{name}' on the same split")
            if job.logged.windows is not None:  # its dataset input, as on the fine-tune's run
                log_windowset(ref_ctx, job.logged.windows, name=job.logged.name,
                              uri=job.logged.recorded or job.logged.uri, context="training")
            work = job.tmp / f"reference-{name}"
            work.mkdir(parents=True, exist_ok=True)
            # its own logged model, begun before training: its test metrics are linked to it (and only those)
            ref_ctx.begin_model(f"{job.parent_name}_{name}_reference", model_type=f"{name}_reference",
                                dataset=job.logged.mlflow_ref)
            ref_job = dataclasses.replace(job.nested(ref_ctx, ref_config), tmp=work)
            train = _features_reference if name == "features" else _scratch_reference
            tested = train(ref_job, data)
            tested.metrics.update(_interval(ref_job, tested, data.class_names))
            ref_ctx.describe(f"Reference '{name}' for the fine-tune of `{job.parent.describe()}`, trained and tested "
                             f"on the same split of `{job.logged.name}` (test digest `{data.test_digest[:12]}`): "
                             f"test AUROC {tested.metrics['auroc']:.3f}, F1 {tested.metrics['f1']:.3f}. "
                             + ("Window features and the scikit-learn model chosen on validation."
                                if name == "features" else "The same network from random weights, every "
                                "parameter trained as long as all fine-tuning stages together."))
        job.ctx.log_metrics({f"reference.{name}.test_{k}": tested.metrics[k] for k in _REFERENCE_KEYS
                             if k in tested.metrics})
        out[name] = tested
    return out


def _features_reference(job: Job, data: LabelledSplits) -> Tested:
    """Window features of the raw windows (full length) + the scikit-learn model chosen on val."""
    ctx, config, logged = job.ctx, job.config, job.logged
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
    meta = {"kind": FEATURES_KIND, "name": f"{job.parent_name}_features_reference",
            "task": config.task or logged.label_name, "class_names": data.class_names, "channels": data.channels,
            "fs": data.fs, "reference": model.describe(), "input": logged.input_spec,
            "provenance": {"run_id": ctx.run_id, "dataset": logged.name, "dataset_digest": logged.digest,
                           "biosig_version": biosig.__version__}}
    write_meta(model.save(job.tmp), meta)
    log_pyfunc(job.tmp, meta, model_id=ctx.model_id)
    return tested["test"]


def _scratch_reference(job: Job, data: LabelledSplits) -> Tested:
    """The fine-tuned model's architecture and head from random weights, every parameter trained for as
    many epochs as all fine-tuning stages together (freezing random blocks would teach nothing)."""
    c = job.config
    outcome = _train(job, data, pretrained=False,
                     schedule=[Stage(3, c.stage1_epochs + c.stage2_epochs + c.stage3_epochs, c.lr)])
    tested = _test(job, outcome, data, "scratch reference")
    meta = {**_finetuned_meta(job, data, outcome), "kind": "scratch_reference",
            "name": f"{job.parent_name}_scratch_reference"}
    log_pyfunc(save_checkpoint(job.tmp / "checkpoint", outcome.best_state, meta), meta, model_id=job.ctx.model_id)
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


def _log_model(job: Job, outcome: FitOutcome, data: LabelledSplits, model_id: str | None = None,
               config: FinetuneConfig | None = None) -> tuple[dict[str, Any], Any]:
    """The best state as a checkpoint directory, logged as the pyfunc model `model_id` (default: the one
    the run began; the cross-validation refit fills its parent's, with the parent's `config`)."""
    meta = _finetuned_meta(dataclasses.replace(job, config=config or job.config), data, outcome)
    checkpoint = save_checkpoint(job.tmp / "checkpoint", outcome.best_state, meta)
    return meta, log_pyfunc(checkpoint, meta, model_id=model_id or job.ctx.model_id)


def _pool(job: Job | None, parts: list[Tested], class_names: list[str], prefix: str,
          config: FinetuneConfig | None = None) -> dict[str, float]:
    """Metrics of all folds' test predictions together (each subject tested once), per-fold mean/sd of
    the interval metrics, and the subject bootstrap interval of the pooled predictions (logged on `job`'s
    run when given)."""
    config = job.config if job is not None else config
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
    if job is not None:
        job.ctx.log_metrics({f"{prefix}{k}": v for k, v in metrics.items()})
        metrics.update(_interval(job, tested, class_names))
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


def _promote(ctx: RunContext, config: FinetuneConfig, name: str, version: str) -> None:
    """Evaluate the policy in a child run; a rejection is recorded and reported, not a failure."""
    decision = run_promote(load_config(PromoteConfig, None, {
        "model": name, "version": version, "to": config.promote, "policies": config.policies,
        "experiment": config.experiment, "tracking_uri": config.tracking_uri,
        "run_name": f"promote to {config.promote}"}), nested=True)
    ctx.set_tags({PROMOTE_TARGET_TAG_PREFIX + config.promote: "promoted" if decision.applied else "rejected"})


def _finetuned_meta(job: Job, data: LabelledSplits, outcome: FitOutcome) -> dict[str, Any]:
    config, parent, logged = job.config, job.parent, job.logged
    return {
        "kind": "finetuned",
        "name": job.name,
        "task": config.task or logged.label_name,
        "backbone": outcome.model.backbone.describe(),
        "head": {"kind": config.head, "dropout": config.head_dropout, "pooling": config.pooling},
        "adaptation": ({"kind": "lora", "rank": config.lora_rank, "alpha": config.lora_alpha,
                        "layers": len(outcome.lora_layers), "merged": True} if outcome.lora_layers
                       else {"kind": "unfreeze", "unfreeze_last_n": config.unfreeze_last_n}),
        "class_names": data.class_names,
        "channels": data.channels,
        "fs": parent.meta["fs"],
        "context_length": parent.meta["context_length"],
        "patch_length": parent.meta["patch_length"],
        "context_fit": config.context_fit,
        "normalisation": data.stats.to_dict(),
        "input": logged.input_spec,
        "provenance": {"run_id": job.ctx.run_id, "parent": parent.lineage(), "dataset": logged.name,
                       "dataset_digest": logged.digest, "best_epoch": outcome.best_epoch,
                       "biosig_version": biosig.__version__,
                       "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")},
    }


def _register(job: Job, evidence: Evidence, card) -> str:
    ctx, parent, logged = job.ctx, job.parent, job.logged
    tags = {
        KIND_TAG: "finetuned", ARCH_TAG: parent.arch, RUN_ID_TAG: ctx.run_id, TASK_TAG: evidence.meta["task"],
        PARENT_NAME_TAG: job.parent_name, PARENT_VERSION_TAG: parent.version or "",
        PARENT_URI_TAG: parent.uri, DATASET_NAME_TAG: logged.name, DATASET_DIGEST_TAG: logged.digest,
        **{TEST_METRIC_TAG_PREFIX + k: f"{v:.6g}" for k, v in evidence.test.items() if "." not in k},
        TEST_DIGEST_TAG: evidence.test_digest,
    }
    version = register_from_run(ctx, job.name, source=evidence.model_info.model_uri,
                                model_id=evidence.model_info.model_id, tags=tags, alias=None,
                                description=f"{card.headline}. Model card: run {ctx.run_id}, model_card.md",
                                model_tags={KIND_TAG: "finetuned"})
    decision = claim_candidate(job.name, version, metric=job.config.selection_metric,
                               force=job.config.force_candidate, run_id=ctx.run_id)
    ctx.set_tags({CANDIDATE_TAG: "taken" if decision.taken else "declined", CANDIDATE_REASON_TAG: decision.reason})
    log.info(f"registered {job.name} version {version}; {decision.describe()}")
    log.info(f"load it with mlflow.pyfunc.load_model('models:/{job.name}/{version}')")
    return version
