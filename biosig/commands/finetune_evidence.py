"""The evidence beside a fine-tune: reference models trained and tested on exactly its split (window
features + scikit-learn; the same network from scratch), each a nested run with its own logged model, and
k-fold / leave-one-subject-out cross-validation pooled over folds, followed by a refit on all subjects."""

from __future__ import annotations

import dataclasses
import hashlib
import math

import numpy as np

import biosig
from biosig.commands.configs import FinetuneConfig
from biosig.commands.finetune_data import prepare_data
from biosig.commands.finetune_job import (
    Evidence,
    Job,
    Tested,
    finetuned_meta,
    interval,
    interval_values,
    log_model,
    test_model,
    train_model,
)
from biosig.data.shards import read_sharded
from biosig.data.splits import cv_folds, subject_split
from biosig.logs import get_logger
from biosig.models.checkpoint import save_checkpoint, write_meta
from biosig.registry.pyfunc import FEATURES_KIND, log_pyfunc
from biosig.tracking.datasets import log_windowset
from biosig.tracking.run import RunContext, tracked_run
from biosig.tracking.tags import (
    CV_EVIDENCE_RUN_TAG,
    CV_FOLD_TAG,
    CV_FOLDS_TAG,
    CV_REFIT_TAG,
    CV_TAG,
    REFERENCE_CHOICE_TAG,
    REFERENCE_TAG,
    TEST_DIGEST_TAG,
)
from biosig.training.labelled import LabelledSplits
from biosig.training.metrics import INTERVAL_METRICS, split_metrics
from biosig.training.reference import fit_feature_model
from biosig.training.settings import Stage

log = get_logger(__name__)


def cross_validate(job: Job) -> Evidence:
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
            outcomes.append(test_model(fold, train_model(fold, data), data, f"fold {i}"))
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
        ctx.log_metrics({f"reference.{name}.test_{k}": v for k, v in metrics.items() if k in REFERENCE_KEYS})
        references[name] = Tested(metrics, np.concatenate([p.prob for p in parts]),
                                  np.concatenate([p.y for p in parts]), np.concatenate([p.subject for p in parts]))
    log_reference_deltas(ctx, pooled, references)
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
        outcome = train_model(refit, data)
        meta, model_info = log_model(refit, outcome, data, model_id=ctx.model_id, config=config)
    counts = [len(np.unique(o.subject)) for o in outcomes]
    return Evidence(outcome, data, pooled, test_digest, references, meta, model_info, folds=len(folds),
                    subjects={"train": len(np.unique(data.subject["train"])), "val": len(np.unique(data.subject["val"])),
                              "test (pooled over folds)": sum(counts)},
                    windows={"train": len(data.y["train"]), "val": len(data.y["val"]),
                             "test (pooled over folds)": sum(len(o.y) for o in outcomes)})


REFERENCE_KEYS = ("auroc", "f1", "balanced_accuracy", "auroc_ci_low", "auroc_ci_high")
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
            tested.metrics.update(interval(ref_job, tested, data.class_names))
            ref_ctx.describe(f"Reference '{name}' for the fine-tune of `{job.parent.describe()}`, trained and tested "
                             f"on the same split of `{job.logged.name}` (test digest `{data.test_digest[:12]}`): "
                             f"test AUROC {tested.metrics['auroc']:.3f}, F1 {tested.metrics['f1']:.3f}. "
                             + ("Window features and the scikit-learn model chosen on validation."
                                if name == "features" else "The same network from random weights, every "
                                "parameter trained as long as all fine-tuning stages together."))
        job.ctx.log_metrics({f"reference.{name}.test_{k}": tested.metrics[k] for k in REFERENCE_KEYS
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
    outcome = train_model(job, data, pretrained=False,
                     schedule=[Stage(3, c.stage1_epochs + c.stage2_epochs + c.stage3_epochs, c.lr)])
    tested = test_model(job, outcome, data, "scratch reference")
    meta = {**finetuned_meta(job, data, outcome), "kind": "scratch_reference",
            "name": f"{job.parent_name}_scratch_reference"}
    log_pyfunc(save_checkpoint(job.tmp / "checkpoint", outcome.best_state, meta), meta, model_id=job.ctx.model_id)
    return tested


def log_reference_deltas(ctx: RunContext, test: dict[str, float], references: dict[str, Tested]) -> None:
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
        metrics.update(interval(job, tested, class_names))
    else:
        metrics.update(interval_values(config, tested, class_names))
    return metrics
