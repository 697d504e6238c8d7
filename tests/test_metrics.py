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


def test_metric_names_round_trip_through_their_namespaces():
    from biosig.tracking.metric_names import canonical_name, logged_key

    expected = {"train_loss": "train/loss", "lr": "train/lr", "val_recall.good": "val/recall.good",
                "test_auroc_ci_low": "test/auroc_ci_low", "best_epoch": "train/best_epoch",
                "epochs_run": "train/epochs_run", "stage": "train/stage", "train_windows_seen": "train/windows_seen",
                "best_val_loss": "val/best_loss", "best_val_auroc": "val/best_auroc",
                "reference.features.test_auroc": "test/reference.features.auroc",
                "reference.scratch.delta_test_f1": "test/reference.scratch.delta_f1",
                "selection.val_auroc.logreg": "val/selection.auroc.logreg", "n_trials": "n_trials",
                "system/cpu_utilization_percentage": "system/cpu_utilization_percentage"}
    for name, key in expected.items():
        assert logged_key(name) == key and canonical_name(key) == name
    assert canonical_name("test_auroc") == "test_auroc"  # runs logged before namespaces read the same
    # and runs logged with the earlier namespaces
    assert canonical_name("model/best_epoch") == "best_epoch"
    assert canonical_name("reference/features.test_auroc") == "reference.features.test_auroc"
    assert canonical_name("selection/val_auroc.logreg") == "selection.val_auroc.logreg"


def test_policy_rules_accept_either_spelling(tmp_path):
    from biosig.registry.policies import load_policy

    path = tmp_path / "p.yaml"
    path.write_text("name: p\napplies_to: ['*']\ntargets:\n  staging:\n    metrics: ['test/auroc >= 0.7', 'test_f1 > 0.5']\n"
                    "    champion: {metric: test/auroc}\n")
    rules = load_policy(path).targets["staging"]
    assert [r.metric for r in rules.metrics] == ["test_auroc", "test_f1"] and rules.champion.metric == "test_auroc"
