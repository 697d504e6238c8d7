"""Classification metrics from class probabilities (scikit-learn where it has them) and calibration."""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.metrics import balanced_accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

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


#: Metrics that get a subject-level bootstrap interval (`test_<metric>_ci_low` / `_ci_high`).
INTERVAL_METRICS = ("auroc", "f1", "balanced_accuracy")


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


def subject_bootstrap(y_true: np.ndarray, prob: np.ndarray, subject: np.ndarray, class_names: list[str],
                      n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> dict[str, float]:
    """Percentile intervals of INTERVAL_METRICS from resampling *subjects* with replacement.

    Windows of one subject are correlated, so resampling windows would give intervals far too narrow;
    each resample draws as many subjects as there are and takes all their windows. A resample lacking a
    class has no AUROC and is skipped for it. Returns `{metric}_ci_low` / `{metric}_ci_high` (NaN with
    fewer than two subjects)."""
    subjects, inverse = np.unique(subject, return_inverse=True)
    rows = [np.flatnonzero(inverse == i) for i in range(len(subjects))]
    out = {f"{m}_ci_{side}": float("nan") for m in INTERVAL_METRICS for side in ("low", "high")}
    if len(subjects) < 2 or n_resamples < 1:
        return out
    rng = np.random.default_rng(seed)
    k = len(class_names)
    values: dict[str, list[float]] = {m: [] for m in INTERVAL_METRICS}
    for _ in range(n_resamples):
        index = np.concatenate([rows[i] for i in rng.integers(0, len(subjects), len(subjects))])
        for metric, value in _fast_metrics(y_true[index], prob[index], k).items():
            values[metric].append(value)
    alpha = (1 - confidence) / 2
    for metric, samples in values.items():
        finite = np.asarray([v for v in samples if np.isfinite(v)])
        if len(finite):
            out[f"{metric}_ci_low"], out[f"{metric}_ci_high"] = (float(q) for q in np.quantile(finite, [alpha, 1 - alpha]))
    return out


def _fast_metrics(y: np.ndarray, prob: np.ndarray, k: int) -> dict[str, float]:
    """auroc / macro f1 / balanced accuracy as classification_metrics computes them, in plain numpy:
    scikit-learn's input checks cost ~5 ms a call, which 3,000 bootstrap calls cannot afford."""
    pred = prob.argmax(axis=1)
    cm = np.bincount(y * k + pred, minlength=k * k).reshape(k, k).astype(np.float64)
    hits, support, predicted = np.diag(cm), cm.sum(axis=1), cm.sum(axis=0)
    recall = np.divide(hits, support, out=np.zeros(k), where=support > 0)
    precision = np.divide(hits, predicted, out=np.zeros(k), where=predicted > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(k), where=precision + recall > 0)
    present = support > 0
    return {"auroc": _rank_auroc(y, prob, k) if present.sum() == k else float("nan"), "f1": float(f1.mean()),
            "balanced_accuracy": float(recall[present].mean()) if present.sum() > 1 else float("nan")}


def _rank_auroc(y: np.ndarray, prob: np.ndarray, k: int) -> float:
    """Binary AUROC of class 1, or macro one-vs-rest, by the Mann-Whitney rank statistic (ties averaged)."""
    from scipy.stats import rankdata

    def binary(positive: np.ndarray, score: np.ndarray) -> float:
        n_pos = positive.sum()
        n_neg = len(positive) - n_pos
        ranks = rankdata(score)
        return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))

    if k == 2:
        return binary(y == 1, prob[:, 1])
    return float(np.mean([binary(y == c, prob[:, c]) for c in range(k)]))


def predictions_table(subject: np.ndarray, y_true: np.ndarray, prob: np.ndarray, class_names: list[str]):
    """Per-window predictions as a table a person reads (the MLflow UI previews it): class names instead
    of indices, a `correct` column and one rounded probability column per class."""
    import pandas as pd

    names = np.asarray(class_names, dtype=object)
    y_pred = prob.argmax(axis=1)
    table = pd.DataFrame({"subject": np.asarray(subject).astype(str), "true": names[y_true], "predicted": names[y_pred],
                          "correct": y_true == y_pred})
    for i, name in enumerate(class_names):
        table[f"p_{name}"] = np.round(prob[:, i].astype(float), 4)
    return table


def summary_table(rows: dict[str, dict[str, float]], keys: tuple[str, ...] = (
        "auroc", "auroc_ci_low", "auroc_ci_high", "f1", "balanced_accuracy", "ece")):
    """Test metrics of several models (the fine-tuned model and its references) side by side, one row each."""
    import pandas as pd

    return pd.DataFrame([{"model": label, **{k: round(float(m[k]), 4) for k in keys if k in m}}
                         for label, m in rows.items()])
