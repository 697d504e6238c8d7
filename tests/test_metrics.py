"""Classification metrics, calibration and the mode-collapse rule."""

import math

import numpy as np

from biosig.training.metrics import auroc, classification_metrics, collapsed_classes, expected_calibration_error


def test_ece_is_zero_when_confidence_matches_accuracy_and_large_when_overconfident():
    y = np.array([0, 0, 0, 1])  # 75 % of confident-0.75 predictions of class 0 are right
    prob = np.tile([0.75, 0.25], (4, 1))
    assert expected_calibration_error(y, prob) == 0.0
    assert abs(expected_calibration_error(np.array([1, 1]), np.array([[0.99, 0.01], [0.99, 0.01]])) - 0.99) < 1e-9


def test_metrics_for_a_collapsed_model():
    y = np.array([0, 0, 1, 1, 1, 1])
    prob = np.tile([0.2, 0.8], (6, 1))  # always predicts class 1
    m = classification_metrics(y, prob, ["poor", "good"])
    assert m["recall.poor"] == 0.0 and m["recall.good"] == 1.0
    assert m["balanced_accuracy"] == 0.5 and math.isnan(m["auroc"]) is False and m["auroc"] == 0.5
    assert collapsed_classes(m, ["poor", "good"], 0.1) == ["poor"]
    assert set(m) >= {"auroc", "f1", "balanced_accuracy", "precision", "recall", "ece"}


def test_auroc_binary_multiclass_and_single_class():
    y = np.array([0, 1, 1, 0])
    assert auroc(y, np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4]])) == 1.0
    assert math.isnan(auroc(np.array([1, 1]), np.array([[0.5, 0.5], [0.4, 0.6]])))
    y3 = np.array([0, 1, 2, 2])
    p3 = np.eye(3)[y3] * 0.7 + 0.1
    assert auroc(y3, p3) == 1.0
