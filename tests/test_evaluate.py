"""evaluate: calibration, voting, overlapping crops, a 4-class task, calibrated re-registration."""

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from biosig.cli import main
from biosig.data import WindowSet, write_parquet
from biosig.training.calibration import apply_calibration, brier_score, fit_calibration, vote
from biosig.training.metrics import expected_calibration_error
from tests.helpers import TINY_NAME, finished_runs, metrics_of


@pytest.mark.parametrize("method", ["temperature", "platt", "isotonic"])
def test_calibration_lowers_ece_of_an_over_confident_model(method):
    rng = np.random.default_rng(0)
    z = rng.normal(0, 1.5, 4000)
    y = (rng.uniform(size=z.size) < 1 / (1 + np.exp(-z))).astype(int)
    logits = np.stack([np.zeros_like(z), 6 * z], axis=1)  # six times too sure of itself
    val, test = slice(0, 2000), slice(2000, None)
    params = json.loads(json.dumps(fit_calibration(method, logits[val], y[val])))  # stored as JSON in biosig.json
    before = apply_calibration(None, logits[test])
    after = apply_calibration(params, logits[test])
    assert np.allclose(after.sum(axis=1), 1)
    assert expected_calibration_error(y[test], before) > 0.1
    assert expected_calibration_error(y[test], after) < 0.5 * expected_calibration_error(y[test], before)
    assert brier_score(y[test], after) < brier_score(y[test], before)


def test_voting_over_windows_beats_single_windows():
    rng = np.random.default_rng(1)
    subjects = np.repeat([f"S{i}" for i in range(40)], 9)
    truth = np.repeat(rng.integers(0, 2, 40), 9)
    correct = rng.uniform(size=truth.size) < 0.65  # each window alone is right 65 % of the time
    predicted = np.where(correct, truth, 1 - truth)
    prob = np.eye(2)[predicted] * 0.5 + 0.25
    window_accuracy = (prob.argmax(1) == truth).mean()
    for method in ("soft", "majority"):
        ids, subject_prob = vote(prob, subjects, method)
        assert list(ids) == sorted(set(subjects))
        subject_truth = np.array([truth[subjects == s][0] for s in ids])
        assert (subject_prob.argmax(1) == subject_truth).mean() > window_accuracy + 0.1


def four_class_set(n_subjects=8, per_subject=8, seed=3):
    """Class k: PPG and ECG sines at 1 + k Hz, 2 s at 125 Hz (longer than the tiny context of 64)."""
    rng = np.random.default_rng(seed)
    n = n_subjects * per_subject
    labels = np.tile(np.arange(4), n // 4).astype(np.int64)
    t = np.arange(250) / 125
    freq = (1 + labels)[:, None] * 2.0
    signals = np.stack([np.sin(2 * np.pi * freq * t), np.cos(2 * np.pi * freq * t)], axis=1)
    signals = (signals + rng.normal(0, 0.3, signals.shape)).astype(np.float32)
    return WindowSet(signals=signals, labels=labels, subject=np.repeat([f"P{i:02d}" for i in range(n_subjects)],
                     per_subject), order=np.tile(np.arange(per_subject), n_subjects)[:, None].astype(np.int64),
                     channels=["PPG", "ECG"], fs=125.0, class_names=["a", "b", "c", "d"], label_name="rhythm")


@pytest.mark.slow
def test_four_class_task_with_overlap_calibration_and_registration(pretrained, workdir):
    data = workdir / "four.parquet"
    write_parquet(four_class_set(), data)
    assert main(["finetune", "--pretrain-config", str(pretrained), "--data", str(data), "--stage1-epochs", "3",
                 "--stage2-epochs", "2", "--batch-size", "8", "--lr", "0.01"]) == 0
    name = f"{TINY_NAME}_finetuned"
    assert main(["evaluate", "--model", f"{name}@candidate", "--overlap", "0.5", "--calibration", "temperature",
                 "--register", "true"]) == 0
    (run,) = [r for r in finished_runs("FINISHED") if r.data.tags["biosig.command"] == "evaluate"]
    m = metrics_of(run)
    assert {"test_auroc", "test_f1", "test_balanced_accuracy", "test_ece", "test_brier", "test_ece_uncalibrated",
            "test_subject_accuracy", "test_f1.a", "test_f1.d", "val_subject_balanced_accuracy"} <= set(m)
    client = MlflowClient()
    names = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert {"evaluation/val_preds.parquet", "evaluation/test_preds.parquet", "evaluation/reliability.png",
            "evaluation/confusion_matrix.png", "evaluation/calibration.json"} <= names
    preds = pd.read_parquet(client.download_artifacts(run.info.run_id, "evaluation/test_preds.parquet"))
    assert {"subject", "window", "y_true", "prob", "prob_uncalibrated", "window_id"} <= set(preds.columns)
    assert len(preds.prob[0]) == 4
    v2 = client.get_model_version(name, "2")
    assert v2.tags["biosig.calibration"] == "temperature" and v2.tags["biosig.calibrated_from"] == "1"
    assert client.get_registered_model(name).aliases == {"candidate": 2}
    calibrated = mlflow.pyfunc.load_model(f"models:/{name}/2").unwrap_python_model()
    assert calibrated.meta["calibration"]["method"] == "temperature"
    probs = mlflow.pyfunc.load_model(f"models:/{name}@candidate").predict(pd.read_parquet(data).head(4))
    assert list(probs.columns) == ["a", "b", "c", "d"] and np.allclose(probs.sum(axis=1), 1)


def test_evaluate_bad_input(workdir, capsys):
    assert main(["evaluate", "--model", "nothing_finetuned@candidate"]) == 2
    assert "no registered model named 'nothing_finetuned'" in capsys.readouterr().err
    assert main(["evaluate", "--model", "x", "--overlap", "1.0"]) == 2
    assert "'overlap' must be in [0, 1)" in capsys.readouterr().err


def test_a_calibration_that_worsens_validation_ece_is_not_registered_unless_forced(pretrained, workdir, monkeypatch,
                                                                                   capsys):
    import biosig.commands.evaluate as evaluate

    data = workdir / "four.parquet"
    write_parquet(four_class_set(), data)
    assert main(["finetune", "--pretrain-config", str(pretrained), "--data", str(data), "--stage1-epochs", "2",
                 "--stage2-epochs", "1", "--batch-size", "8"]) == 0
    name = f"{TINY_NAME}_finetuned"
    # A temperature far below 1 makes every probability near 0 or 1: overconfident, so ECE and Brier rise.
    monkeypatch.setattr(evaluate, "fit_calibration", lambda method, logits, y: {"method": method,
                                                                                "temperature": 0.01})
    assert main(["evaluate", "--model", f"{name}@candidate", "--calibration", "temperature", "--register", "true"]) == 0
    out = capsys.readouterr().out
    assert "not registered: temperature calibration made validation ECE" in out and "worse" in out
    client = MlflowClient()
    assert client.get_registered_model(name).aliases == {"candidate": 1}
    assert len(client.search_model_versions(f"name = '{name}'")) == 1
    assert main(["evaluate", "--model", f"{name}@candidate", "--calibration", "temperature", "--register", "true",
                 "--force", "true"]) == 0
    assert client.get_registered_model(name).aliases == {"candidate": 2}
