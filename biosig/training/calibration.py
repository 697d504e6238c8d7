"""Post-hoc calibration fitted on validation logits: temperature scaling, Platt scaling, isotonic
regression; plus the Brier score and subject-level voting. The fitted parameters are plain lists, stored
in a checkpoint's biosig.json and applied by the pyfunc model."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from biosig.errors import ConfigError

METHODS = ("temperature", "platt", "isotonic")


def brier_score(y_true: np.ndarray, prob: np.ndarray) -> float:
    """Mean over windows of the squared distance between the probability vector and the one-hot label."""
    onehot = np.eye(prob.shape[1])[y_true]
    return float(((prob - onehot) ** 2).sum(axis=1).mean())


def fit_calibration(method: str, logits: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    if method == "temperature":
        def nll(log_t: float) -> float:
            return -log_softmax(logits / np.exp(log_t), axis=1)[np.arange(len(y)), y].mean()

        return {"method": method, "temperature": float(np.exp(minimize_scalar(nll, bounds=(-4, 4),
                                                                              method="bounded").x))}
    if method == "platt":
        model = LogisticRegression(C=1e4, max_iter=1000).fit(logits, y)
        return {"method": method, "classes": model.classes_.tolist(), "coef": model.coef_.tolist(),
                "intercept": model.intercept_.tolist(), "n_classes": logits.shape[1]}
    if method == "isotonic":
        prob = softmax(logits, axis=1)
        curves = []
        for k in range(prob.shape[1]):
            iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(prob[:, k], y == k)
            curves.append({"x": iso.X_thresholds_.tolist(), "y": iso.y_thresholds_.tolist()})
        return {"method": method, "curves": curves}
    raise ConfigError(f"calibration must be one of {', '.join(METHODS)}, got {method!r}")


def apply_calibration(calibration: dict[str, Any] | None, logits: np.ndarray) -> np.ndarray:
    """Class probabilities from logits, calibrated when `calibration` is given."""
    if not calibration:
        return softmax(logits, axis=1)
    method = calibration["method"]
    if method == "temperature":
        return softmax(logits / calibration["temperature"], axis=1)
    if method == "platt":
        scores = logits @ np.asarray(calibration["coef"]).T + np.asarray(calibration["intercept"])
        if scores.shape[1] == 1:  # binary: one decision function for class `classes[1]`
            p = 1.0 / (1.0 + np.exp(-scores[:, 0]))
            prob = np.zeros((len(logits), calibration["n_classes"]))
            prob[:, calibration["classes"][0]], prob[:, calibration["classes"][1]] = 1 - p, p
            return prob
        prob = np.zeros((len(logits), calibration["n_classes"]))
        prob[:, calibration["classes"]] = softmax(scores, axis=1)
        return prob
    if method == "isotonic":
        prob = softmax(logits, axis=1)
        mapped = np.stack([np.interp(prob[:, k], c["x"], c["y"]) for k, c in enumerate(calibration["curves"])], 1)
        total = mapped.sum(axis=1, keepdims=True)
        return np.where(total > 0, mapped / np.where(total > 0, total, 1), 1.0 / prob.shape[1])
    raise ConfigError(f"unknown calibration method {method!r} in the checkpoint")


def vote(prob: np.ndarray, groups: np.ndarray, method: str = "soft") -> tuple[np.ndarray, np.ndarray]:
    """Aggregate window probabilities per group (recording or subject): soft = mean probability,
    majority = share of the group's windows predicting each class. Returns (group ids, [G, K])."""
    ids, inverse = np.unique(groups, return_inverse=True)
    if method == "soft":
        values = prob
    elif method == "majority":
        values = np.eye(prob.shape[1])[prob.argmax(axis=1)]
    else:
        raise ConfigError(f"voting must be 'soft' or 'majority', got {method!r}")
    sums = np.zeros((len(ids), prob.shape[1]))
    np.add.at(sums, inverse, values)
    return ids, sums / np.bincount(inverse)[:, None]
