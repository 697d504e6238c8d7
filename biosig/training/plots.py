"""Evaluation plots (matplotlib, headless): confusion matrix and ROC curves."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay


def confusion_png(y_true: np.ndarray, prob: np.ndarray, class_names: list[str], path: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ConfusionMatrixDisplay.from_predictions(y_true, prob.argmax(axis=1), labels=list(range(len(class_names))),
                                            display_labels=class_names, ax=ax, colorbar=False)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def roc_png(y_true: np.ndarray, prob: np.ndarray, class_names: list[str], path: Path, title: str) -> Path:
    """One ROC curve per class (one-vs-rest); a class absent from y_true is skipped."""
    fig, ax = plt.subplots(figsize=(4.5, 4))
    classes = [1] if len(class_names) == 2 else range(len(class_names))
    for k in classes:
        positives = y_true == k
        if positives.all() or not positives.any():
            continue
        RocCurveDisplay.from_predictions(positives, prob[:, k], name=class_names[k], ax=ax)
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
