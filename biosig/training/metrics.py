"""Classification metrics from class probabilities (scikit-learn where it has them) and calibration."""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.metrics import (balanced_accuracy_score, f1_score, precision_score, recall_score, roc_auc_score)

SELECTION_METRICS = ("auroc", "f1", "balanced_accuracy", "loss")


def expected_calibration_error(y_true: np.ndarray, prob: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE: confidence vs accuracy over equal-width confidence bins, weighted by bin size."""
    confidence = prob.max(axis=1)
    correct = prob.argmax(axis=1) == y_true
    bins = np.minimum((confidence * n_bins).astype(int), n_bins - 1)
    ece = 0.0
    for b in np.unique(bins):
        in_bin = bins == b
        ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def auroc(y_true: np.ndarray, prob: np.ndarray) -> float:
    """Binary: AUROC of the positive class; multiclass: macro one-vs-rest. NaN if a class is absent."""
    present = np.unique(y_true)
    if len(present) < 2:
        return float("nan")
    if prob.shape[1] == 2:
        return float(roc_auc_score(y_true, prob[:, 1]))
    if len(present) < prob.shape[1]:
        return float("nan")
    return float(roc_auc_score(y_true, prob, multi_class="ovr", average="macro"))


def classification_metrics(y_true: np.ndarray, prob: np.ndarray, class_names: list[str]) -> dict[str, float]:
    """auroc, f1 (macro), balanced_accuracy, precision/recall (macro), recall.<class>, ece."""
    labels = list(range(len(class_names)))
    pred = prob.argmax(axis=1)
    per_class = recall_score(y_true, pred, labels=labels, average=None, zero_division=0)
    metrics = {
        "auroc": auroc(y_true, prob),
        "f1": float(f1_score(y_true, pred, labels=labels, average="macro", zero_division=0)),
        "balanced_accuracy": _balanced_accuracy(y_true, pred),
        "precision": float(precision_score(y_true, pred, labels=labels, average="macro", zero_division=0)),
        "recall": float(np.mean(per_class)),
        "ece": expected_calibration_error(y_true, prob),
    }
    metrics.update({f"recall.{name}": float(r) for name, r in zip(class_names, per_class)})
    return metrics


def _balanced_accuracy(y_true: np.ndarray, pred: np.ndarray) -> float:
    with warnings.catch_warnings():  # predicting a class absent from y_true is normal on small splits
        warnings.simplefilter("ignore", UserWarning)
        return float(balanced_accuracy_score(y_true, pred))


def collapsed_classes(metrics: dict[str, float], class_names: list[str], threshold: float) -> list[str]:
    """Classes whose recall is below `threshold`: the model (nearly) never predicts them."""
    return [name for name in class_names if metrics[f"recall.{name}"] < threshold]


def aggregate_by_subject(subject: np.ndarray, y_true: np.ndarray, prob: np.ndarray,
                         how: str = "mean") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Window probabilities [N, K] -> one row per subject: (subjects, label, probabilities).

    `mean`/`median` of the window probabilities, or `vote`: the share of windows predicting each class.
    The subject's label is its most frequent window label (participant-level labels such as remission
    are the same on every window)."""
    subjects, inverse = np.unique(subject, return_inverse=True)
    k = prob.shape[1]
    if how == "vote":
        values = np.eye(k)[prob.argmax(axis=1)]
    elif how in ("mean", "median"):
        values = prob
    else:
        raise ValueError(f"aggregate must be mean, median or vote, got {how!r}")
    reduce = np.median if how == "median" else np.mean
    out = np.stack([reduce(values[inverse == i], axis=0) for i in range(len(subjects))])
    out = out / out.sum(axis=1, keepdims=True)
    labels = np.array([np.bincount(y_true[inverse == i], minlength=k).argmax() for i in range(len(subjects))])
    return subjects, labels, out
