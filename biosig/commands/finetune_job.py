"""One fine-tune's context (`Job`) and the steps every trained model of it goes through (the fine-tuned
model, the scratch reference, each cross-validation fold and the refit): build and `fit`, test with its
artifacts, the subject-bootstrap interval, biosig.json and the logged pyfunc model."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import biosig
from biosig.commands.configs import FinetuneConfig
from biosig.logs import get_logger
from biosig.models.checkpoint import save_checkpoint
from biosig.registry.discovery import ResolvedCheckpoint
from biosig.registry.naming import FINETUNED_SUFFIX
from biosig.registry.pyfunc import log_pyfunc
from biosig.tracking.datasets import LoggedDataset
from biosig.tracking.run import FollowerContext, RunContext, record_classifier, record_fit
from biosig.training import loop
from biosig.training.classifier import build_classifier
from biosig.training.labelled import LabelledSplits
from biosig.training.metrics import aggregate_by_subject, predictions_table, subject_bootstrap
from biosig.training.plots import confusion_png, roc_png
from biosig.training.settings import Stage
from biosig.training.trainer import FitOutcome, fit, score

log = get_logger(__name__)


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


def train_model(job: Job, data: LabelledSplits, *, pretrained: bool = True,
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


def test_model(job: Job, outcome: FitOutcome, data: LabelledSplits, label: str) -> Tested:
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


def interval(job: Job, tested: Tested, class_names: list[str]) -> dict[str, float]:
    """Subject-level bootstrap interval of the test metrics (at the selection level), logged as test_*_ci_*."""
    ci = interval_values(job.config, tested, class_names)
    job.ctx.log_metrics({f"test_{k}": v for k, v in ci.items()})
    return ci


def interval_values(config: FinetuneConfig, tested: Tested, class_names: list[str]) -> dict[str, float]:
    if not config.bootstrap:
        return {}
    y, prob, subject = tested.y, tested.prob, tested.subject
    if config.aggregate != "none" and config.selection_level == "participant":
        subject, y, prob = aggregate_by_subject(subject, y, prob, config.aggregate)
    return subject_bootstrap(y, prob, subject, class_names, n_resamples=config.bootstrap, seed=config.seed)


def log_model(job: Job, outcome: FitOutcome, data: LabelledSplits, model_id: str | None = None,
               config: FinetuneConfig | None = None) -> tuple[dict[str, Any], Any]:
    """The best state as a checkpoint directory, logged as the pyfunc model `model_id` (default: the one
    the run began; the cross-validation refit fills its parent's, with the parent's `config`)."""
    meta = finetuned_meta(dataclasses.replace(job, config=config or job.config), data, outcome)
    checkpoint = save_checkpoint(job.tmp / "checkpoint", outcome.best_state, meta)
    return meta, log_pyfunc(checkpoint, meta, model_id=model_id or job.ctx.model_id)


def finetuned_meta(job: Job, data: LabelledSplits, outcome: FitOutcome) -> dict[str, Any]:
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
