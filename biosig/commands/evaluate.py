"""`evaluate`: a registered fine-tuned model on a dataset, with optional calibration (fitted on the
validation split) and overlapping-window voting; metrics at window and subject level.

With `overlap` > 0 each window longer than the model's context is read as overlapping context-length
crops (stride = context x (1 - overlap)) whose scores are averaged (soft) or voted (majority); windows
then vote per subject. The split is the fine-tune's: same fractions and seed give the same subjects.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from biosig.commands.configs import EvaluateConfig
from biosig.data import SourceOptions, WindowSet
from biosig.data.adapt import ChannelStats, prepare_windows, select_channels
from biosig.data.shards import split_digest, subject_windows
from biosig.data.splits import manifest_subject_split, subject_split
from biosig.errors import DataError
from biosig.logs import get_logger
from biosig.models.checkpoint import save_checkpoint
from biosig.registry.publish import register_from_run
from biosig.registry.pyfunc import WindowClassifier, load_window_classifier, log_pyfunc
from biosig.tracking.datasets import LoggedDataset, use_dataset
from biosig.tracking.liveness import scratch_dir
from biosig.tracking.run import RunContext, run_tags, tracked_run
from biosig.tracking.tags import (
    ARCH_TAG,
    CALIBRATED_FROM_TAG,
    CALIBRATION_TAG,
    DATASET_DIGEST_TAG,
    DATASET_NAME_TAG,
    DATASET_URI_TAG,
    EVALUATE_MODEL_TAG,
    EVALUATE_REASON_TAG,
    EVALUATE_REGISTERED_TAG,
    EVALUATE_VERSION_TAG,
    KIND_TAG,
    PARENT_NAME_TAG,
    PARENT_URI_TAG,
    PARENT_VERSION_TAG,
    RUN_ID_TAG,
    TASK_TAG,
    TEST_DIGEST_TAG,
)
from biosig.training.calibration import apply_calibration, brier_score, fit_calibration, vote
from biosig.training.metrics import classification_metrics
from biosig.training.plots import confusion_png

log = get_logger(__name__)

CARRIED_TAGS = (PARENT_NAME_TAG, PARENT_VERSION_TAG, PARENT_URI_TAG, DATASET_NAME_TAG,
                DATASET_DIGEST_TAG, TASK_TAG, ARCH_TAG, KIND_TAG, TEST_DIGEST_TAG)


def run_evaluate(config: EvaluateConfig) -> dict[str, float]:
    wrapper, version = load_window_classifier(config.model)
    data = config.data or version.tags.get(DATASET_URI_TAG) or _run_dataset(version)
    tags = {EVALUATE_MODEL_TAG: version.name, EVALUATE_VERSION_TAG: str(version.version)}
    with tracked_run("evaluate", config, tags=tags) as ctx, scratch_dir("evaluate") as tmp:
        ctx.name_run(f"evaluate {version.name}/{version.version}")
        logged = use_dataset(ctx, data, SourceOptions(n_subjects=config.n_subjects,
                             windows_per_subject=config.windows_per_subject, seed=config.seed),
                             output_dir=config.data_dir, context="evaluation", stream=True)
        scored, test_digest = _score_splits(wrapper, logged, config)
        ctx.set_tags({TEST_DIGEST_TAG: test_digest})
        calibration = None
        if config.calibration != "none":
            calibration = fit_calibration(config.calibration, scored["val"].logits, scored["val"].labels)
            ctx.log_dict(calibration, "evaluation/calibration.json")
        base = wrapper.meta.get("calibration")  # a model calibrated before keeps its calibration
        metrics = {}
        for split in ("val", "test"):
            before = apply_calibration(base, scored[split].logits)
            after = apply_calibration(calibration or base, scored[split].logits)
            metrics.update(_metrics(split, scored[split], before, after, wrapper.meta["class_names"], config.voting))
            _predictions(ctx, Path(tmp), split, scored[split], before, after)
        ctx.log_metrics(metrics)
        _plots(ctx, Path(tmp), scored["test"], apply_calibration(base, scored["test"].logits),
               apply_calibration(calibration or base, scored["test"].logits), wrapper.meta["class_names"])
        log.info(_summary(metrics, config.calibration))
        if config.register and calibration:
            worse = _worse_on_val(metrics)
            if worse and not config.force:
                log.info(f"not registered: {config.calibration} calibration made validation {worse} worse; the "
                         f"@candidate alias stays on version {version.version} (force=true registers it anyway)")
                ctx.set_tags({EVALUATE_REGISTERED_TAG: "no", EVALUATE_REASON_TAG: f"val {worse} worse"})
            else:
                _register_calibrated(ctx, wrapper, version, calibration, Path(tmp))
        return metrics


def _worse_on_val(metrics: dict[str, float]) -> str:
    """'ECE 0.098 -> 0.119' (and/or Brier) when calibration raised them on the split it was fitted on."""
    worse = [f"{name.upper() if name == 'ece' else name.title()} {metrics[f'val_{name}_uncalibrated']:.3f} -> "
             f"{metrics[f'val_{name}']:.3f}" for name in ("ece", "brier")
             if metrics[f"val_{name}"] > metrics[f"val_{name}_uncalibrated"] + 1e-9]
    return " and ".join(worse)


@dataclasses.dataclass
class Scored:
    """One split as evaluation needs it: the model's scores per window and each window's identity (no signals)."""

    logits: np.ndarray
    labels: np.ndarray
    subject: np.ndarray
    order: np.ndarray
    order_names: list[str]

    @classmethod
    def of(cls, wrapper: WindowClassifier, ws: WindowSet, overlap: float, voting: str) -> "Scored":
        return cls(window_logits(wrapper, ws, overlap, voting), ws.labels, ws.subject, ws.order, list(ws.order_names))

    @classmethod
    def concat(cls, parts: list["Scored"], where: str) -> "Scored":
        if not parts:
            raise DataError(f"{where}: the split has no windows")
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("logits", "labels", "subject", "order")),
                   parts[0].order_names)


def _score_splits(wrapper: WindowClassifier, logged: LoggedDataset,
                  config: EvaluateConfig) -> tuple[dict[str, Scored], str]:
    """Val and test scores and the test split's digest. The split is the fine-tune's (same fractions and
    seed); a sharded dataset is split by its manifest and scored one row group at a time."""
    if logged.manifest is None:
        splits = subject_split(logged.windows, config.val_fraction, config.test_fraction, seed=config.seed)
        return ({s: Scored.of(wrapper, splits[s], config.overlap, config.voting) for s in ("val", "test")},
                splits["test"].digest)
    manifest = logged.manifest
    subjects = manifest_subject_split(manifest, config.val_fraction, config.test_fraction, seed=config.seed)
    scored = {split: Scored.concat([Scored.of(wrapper, part, config.overlap, config.voting)
                                    for part in subject_windows(manifest, subjects[split])],
                                   f"{manifest.root} ({split})")
              for split in ("val", "test")}
    return scored, split_digest(manifest, subjects["test"])


def window_logits(wrapper: WindowClassifier, ws: WindowSet, overlap: float, voting: str) -> np.ndarray:
    """Scores per window; with overlap, mean scores (soft) or vote shares (majority, as log-shares) of
    overlapping context-length crops."""
    meta = wrapper.meta
    context = meta["context_length"]
    if overlap <= 0 or ws.n_samples <= context:
        return wrapper.logits(prepare_windows(ws.signals, ws.channels, ws.fs, meta, where=ws.where))
    if abs(ws.fs - meta["fs"]) > 1e-6:
        raise DataError(f"{ws.where} is sampled at {ws.fs:g} Hz, the model at {meta['fs']:g} Hz: overlapping crops "
                        "need the model's rate")
    x = ChannelStats.from_dict(meta["normalisation"]).apply(select_channels(ws.signals, ws.channels,
                                                                             meta["channels"], ws.where))
    stride = max(1, int(round(context * (1 - overlap))))
    starts = list(range(0, ws.n_samples - context + 1, stride))
    if starts[-1] != ws.n_samples - context:
        starts.append(ws.n_samples - context)  # the tail is covered too
    crops = np.stack([wrapper.logits(np.ascontiguousarray(x[:, :, s:s + context])) for s in starts], axis=1)
    if voting == "soft":
        return crops.mean(axis=1)
    votes = np.eye(crops.shape[2])[crops.argmax(axis=2)].mean(axis=1)
    return np.log(np.clip(votes, 1e-6, None))


def _metrics(split: str, scored: Scored, before: np.ndarray, after: np.ndarray, names: list[str],
             voting: str) -> dict[str, float]:
    y = scored.labels
    out = {f"{split}_{k}": v for k, v in classification_metrics(y, after, names).items()}
    out[f"{split}_brier"] = brier_score(y, after)
    out[f"{split}_ece_uncalibrated"] = classification_metrics(y, before, names)["ece"]
    out[f"{split}_brier_uncalibrated"] = brier_score(y, before)
    out.update({f"{split}_f1.{n}": v for n, v in _per_class_f1(y, after, len(names), names).items()})
    subjects, subject_prob = vote(after, scored.subject, voting)
    subject_y = np.array([np.bincount(y[scored.subject == s], minlength=len(names)).argmax() for s in subjects])
    subject = classification_metrics(subject_y, subject_prob, names)
    out.update({f"{split}_subject_{k}": v for k, v in subject.items() if "." not in k})
    out[f"{split}_subject_accuracy"] = float((subject_prob.argmax(axis=1) == subject_y).mean())
    return out


def _per_class_f1(y: np.ndarray, prob: np.ndarray, n: int, names: list[str]) -> dict[str, float]:
    from sklearn.metrics import f1_score

    values = f1_score(y, prob.argmax(axis=1), labels=list(range(n)), average=None, zero_division=0)
    return dict(zip(names, map(float, values)))


def _predictions(ctx: RunContext, tmp: Path, split: str, scored: Scored, before: np.ndarray, after: np.ndarray) -> None:
    frame = pd.DataFrame({"subject": scored.subject, "window": np.arange(len(scored.labels)), "y_true": scored.labels,
                          "y_pred": after.argmax(axis=1), "prob": list(after.astype(np.float32)),
                          "prob_uncalibrated": list(before.astype(np.float32))})
    for i, name in enumerate(scored.order_names):
        frame[name] = scored.order[:, i]
    path = tmp / f"{split}_preds.parquet"
    frame.to_parquet(path, index=False)
    ctx.log_artifact(path, "evaluation")


def _plots(ctx: RunContext, tmp: Path, scored: Scored, before: np.ndarray, after: np.ndarray,
           names: list[str]) -> None:
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for label, prob in (("uncalibrated", before), ("calibrated", after)):
        confidence, correct = prob.max(axis=1), prob.argmax(axis=1) == scored.labels
        edges = np.linspace(0, 1, 16)
        bins = np.clip(np.digitize(confidence, edges) - 1, 0, 14)
        xs = [confidence[bins == b].mean() for b in range(15) if (bins == b).any()]
        ys = [correct[bins == b].mean() for b in range(15) if (bins == b).any()]
        ax.plot(xs, ys, marker="o", label=label)
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title("reliability (test)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(tmp / "reliability.png", dpi=100)
    plt.close(fig)
    ctx.log_artifact(tmp / "reliability.png", "evaluation")
    ctx.log_artifact(confusion_png(scored.labels, after, names, tmp / "confusion_matrix.png", "test"), "evaluation")


def _summary(metrics: dict[str, float], method: str) -> str:
    line = (f"test windows: auroc {metrics['test_auroc']:.3f}  f1 {metrics['test_f1']:.3f}  balanced_accuracy "
            f"{metrics['test_balanced_accuracy']:.3f}  ece {metrics['test_ece_uncalibrated']:.3f} -> "
            f"{metrics['test_ece']:.3f}  brier {metrics['test_brier_uncalibrated']:.3f} -> {metrics['test_brier']:.3f}"
            f" ({method})\ntest subjects: accuracy {metrics['test_subject_accuracy']:.3f}  balanced_accuracy "
            f"{metrics['test_subject_balanced_accuracy']:.3f}")
    return line


def _run_dataset(version) -> str:
    uri = run_tags(version.run_id).get(DATASET_URI_TAG) if version.run_id else None
    if not uri:
        raise DataError(f"{version.name} version {version.version} records no dataset: pass data=")
    return uri


def _register_calibrated(ctx: RunContext, wrapper: WindowClassifier, version, calibration: dict[str, Any],
                         tmp: Path) -> str:
    """The same weights with the calibration in biosig.json, as a new version of the same model."""
    meta = {**wrapper.meta, "calibration": calibration,
            "provenance": {**wrapper.meta["provenance"], "calibrated_by_run": ctx.run_id,
                           "calibrated_from": f"{version.name}/{version.version}"}}
    checkpoint = save_checkpoint(tmp / "checkpoint", wrapper.model.state_dict(), meta)
    info = log_pyfunc(checkpoint, meta)
    tags = {k: v for k, v in version.tags.items() if k in CARRIED_TAGS}
    tags.update({CALIBRATION_TAG: calibration["method"], CALIBRATED_FROM_TAG: str(version.version),
                 RUN_ID_TAG: ctx.run_id})
    new = register_from_run(ctx, version.name, source=info.model_uri, model_id=info.model_id, tags=tags,
                            description=f"{version.name} v{version.version} with {calibration['method']} calibration")
    log.info(f"registered {version.name} version {new}: v{version.version} + {calibration['method']} "
             "calibration (alias @candidate)")
    return new

