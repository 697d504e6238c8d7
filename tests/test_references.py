"""Evidence for promotion: reference models on the same split, subject-bootstrap intervals, cross-
validation (k folds and LOSO), the beats_reference rule, channel subsets, mixed units, model cards."""

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from biosig.cli import main
from biosig.data import write_parquet
from biosig.data.splits import cv_folds
from biosig.data.synthetic import synthetic_cardio
from biosig.models.inflation import drop_channels
from biosig.models.ttm import TTMBackbone
from biosig.registry.pyfunc import as_model_input
from biosig.training.features import feature_names, window_features
from biosig.training.metrics import _fast_metrics, classification_metrics, subject_bootstrap
from tests.helpers import TINY_FINETUNE, TINY_NAME, finished_runs, metrics_of

FINETUNED = f"{TINY_NAME}_finetuned"


def finetune(pretrain_yaml, *extra):
    return main(["finetune", "--pretrain-config", str(pretrain_yaml), *TINY_FINETUNE, *extra])


def runs_by(tag, value=None):
    return [r for r in finished_runs() if tag in r.data.tags and (value is None or r.data.tags[tag] == value)]


def finetune_windows(pretrained, ws, path):
    """Fine-tune the tiny checkpoint on `ws` written to `path`; the finished top-level run."""
    write_parquet(ws, path)
    assert main(["finetune", "--pretrain-config", str(pretrained), "--data", str(path), "--stage1-epochs", "2",
                 "--stage2-epochs", "2", "--unfreeze-last-n", "1", "--batch-size", "8"]) == 0
    return parent_finetune_run()


def parent_finetune_run():
    runs = [r for r in finished_runs("FINISHED") if r.data.tags.get("biosig.command") == "finetune"
            and "mlflow.parentRunId" not in r.data.tags]
    assert len(runs) == 1
    return runs[0]


def test_references_train_on_the_same_split_and_serve_like_the_model(pretrained, workdir):
    assert finetune(pretrained, "--reference", "features,scratch") == 0
    client = MlflowClient()
    parent = parent_finetune_run()
    digest = parent.data.tags["biosig.test.digest"]
    for name in ("features", "scratch"):
        (ref,) = runs_by("biosig.reference", name)
        assert ref.info.status == "FINISHED" and ref.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert ref.data.tags["biosig.test.digest"] == digest
        for metric in ("auroc", "f1", "balanced_accuracy"):
            assert metrics_of(parent)[f"reference.{name}.test_{metric}"] == pytest.approx(
                metrics_of(ref)[f"test_{metric}"])
        assert "test_auroc_ci_low" in metrics_of(ref)
        # a run that reads on its own: what it is, on which data (its dataset input), its result
        assert ref.data.tags["mlflow.note.content"].startswith(f"Reference '{name}' for the fine-tune of")
        assert [i.dataset.digest for i in ref.inputs.dataset_inputs] == \
            [i.dataset.digest for i in parent.inputs.dataset_inputs]
    (features,) = runs_by("biosig.reference", "features")
    assert "lr" not in features.data.params and "unfreeze_last_n" not in features.data.params  # no network
    assert features.data.params["seed"] == parent.data.params["seed"]
    assert len(features.data.params) < 16 < len(runs_by("biosig.reference", "scratch")[0].data.params)
    for name in ("features", "scratch"):  # each reference is a logged model of its own, carrying its results once
        (ref,) = runs_by("biosig.reference", name)
        (model,) = client.search_logged_models(experiment_ids=[ref.info.experiment_id],
                                               filter_string=f"name = '{TINY_NAME}_{name}_reference'")
        keys = [m.key for m in model.metrics]
        assert model.source_run_id == ref.info.run_id and "test/auroc" in keys and len(keys) == len(set(keys))
        # the per-epoch curves stay on the run (the features reference has none: its val metrics are results)
        assert not {"train/loss", "train/lr", "val/loss", "val/auroc"} & set(keys) or name == "features"
    metrics = metrics_of(parent)
    assert metrics["test_auroc_ci_low"] <= metrics["test_auroc"] <= metrics["test_auroc_ci_high"]
    assert metrics["reference.features.delta_test_auroc"] == pytest.approx(
        metrics["test_auroc"] - metrics["reference.features.test_auroc"])

    # The features reference is a pyfunc with the fine-tuned model's input: same frame, same columns out.
    import mlflow

    ws = synthetic_cardio(n_subjects=2, windows_per_subject=3, with_acc=True, seed=5, window_s=10.0)
    frame = pd.DataFrame({c: list(ws.signals[:, i]) for i, c in enumerate(ws.channels)})
    (features_run,) = runs_by("biosig.reference", "features")
    reference = mlflow.pyfunc.load_model(f"runs:/{features_run.info.run_id}/{TINY_NAME}_features_reference")
    model = mlflow.pyfunc.load_model(f"models:/{FINETUNED}@candidate")
    ours, theirs = model.predict(frame), reference.predict(as_model_input(ws.signals, ws.channels))
    assert list(ours.columns) == list(theirs.columns) == ["poor", "good"] and len(theirs) == 6
    np.testing.assert_allclose(theirs.sum(axis=1), 1.0, rtol=1e-6)
    # A window with a NaN is refused by name (HTTP 400 under `mlflow models serve`), never NaN probabilities.
    from mlflow.exceptions import MlflowException

    broken = ws.signals.copy()
    broken[4, 3, 100] = np.nan
    for served in (model, reference):
        with pytest.raises(MlflowException, match=r"1 input window\(s\) contain NaN .*rows \[4\], channels \['PPG'\]") as err:
            served.predict(as_model_input(broken, ws.channels))
        assert err.value.get_http_status_code() == 400

    # The model card: artifact of the registering run, headline as the version description.
    card = client.download_artifacts(parent.info.run_id, "model_card.md")
    text = open(card).read()
    for needle in ("## Test metrics", "reference", "ece", "recall poor", "## Known limits", parent.data.tags[
            "biosig.dataset.digest"][:16]):
        assert needle in text, needle
    version = client.get_model_version(FINETUNED, "1")
    assert version.description.startswith("quality classifier (poor, good) fine-tuned from")
    assert "references on the same split: features" in version.description


def test_beats_reference_rule_passes_fails_and_explains_a_missing_reference(pretrained, workdir, capsys):
    assert finetune(pretrained, "--reference", "features") == 0
    assert finetune(pretrained) == 0  # version 2: no reference
    policies = workdir / "policies"
    policies.mkdir()
    rule = "applies_to: '*'\ntargets:\n  staging:\n    beats_reference: {{reference: features, min_delta: {}}}\n"
    (policies / "p.yaml").write_text(rule.format(-1.0))
    args = ["promote", "--model", FINETUNED, "--policies", str(policies)]
    assert main([*args, "--version", "1", "--dry-run", "true"]) == 0
    assert "beats_reference features test_auroc -1" in capsys.readouterr().out
    (policies / "p.yaml").write_text(rule.format(1.0))
    assert main([*args, "--version", "1"]) == 1  # rejected
    out = capsys.readouterr().out
    assert "FAIL" in out and "rejected" in out
    assert main([*args, "--version", "2"]) == 1
    assert "the run has no features reference: fine-tune with reference=[features]" in capsys.readouterr().out
    assert MlflowClient().get_registered_model(FINETUNED).aliases == {"candidate": 2}


@pytest.mark.slow
def test_cross_validation_pools_folds_and_registers_one_refit_model(pretrained, workdir):
    assert finetune(pretrained, "--cv", "3", "--reference", "features", "--n-subjects", "9") == 0
    parent = parent_finetune_run()
    folds = runs_by("biosig.cv.fold")
    assert sorted(r.data.tags["biosig.cv.fold"] for r in folds) == ["1", "2", "3"]
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in folds)
    (refit,) = runs_by("biosig.cv.refit")
    m = metrics_of(parent)
    assert m["test_auroc_ci_low"] <= m["test_auroc"] <= m["test_auroc_ci_high"]
    fold_aurocs = [metrics_of(r)["test_auroc"] for r in folds]
    assert m["test_auroc_mean"] == pytest.approx(np.mean(fold_aurocs))
    assert m["test_auroc_std"] == pytest.approx(np.std(fold_aurocs, ddof=1))
    assert "reference.features.test_auroc" in m
    # Each fold's features reference is a child of that fold.
    assert {r.data.tags["mlflow.parentRunId"] for r in runs_by("biosig.reference", "features")} == {
        r.info.run_id for r in folds}
    # The pooled predictions cover every subject once.
    subjects = set()
    for run in folds:
        pred = pd.read_parquet(MlflowClient().download_artifacts(run.info.run_id, "evaluation/predictions.parquet"))
        fold_subjects = set(pred.subject)
        assert not subjects & fold_subjects
        subjects |= fold_subjects
    assert len(subjects) == 9
    version = MlflowClient().get_model_version(FINETUNED, "1")
    assert version.run_id == parent.info.run_id  # policies read the CV evidence
    assert "cross-validated" in version.description
    assert refit.data.tags["biosig.cv.evidence_run"] == parent.info.run_id


def test_loso_and_k_folds_partition_subjects_into_test_splits():
    ws = synthetic_cardio(n_subjects=6, windows_per_subject=4, seed=3, window_s=1.0)
    for cv, expected in (("loso", 6), ("3", 3)):
        folds = cv_folds(ws, cv, 0.25, seed=0)
        assert len(folds) == expected
        tested = [s for fold in folds for s in np.unique(fold["test"].subject)]
        assert sorted(tested) == sorted(np.unique(ws.subject))  # each subject tested exactly once
        for fold in folds:
            parts = [set(fold[k].subject) for k in ("train", "val", "test")]
            assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])


def test_bad_cv_and_reference_values_are_one_line_errors(pretrained, capsys):
    assert finetune(pretrained, "--cv", "1") == 2
    assert "config key 'cv' must be empty, an integer >= 2" in capsys.readouterr().err
    assert finetune(pretrained, "--reference", "boosting") == 2
    assert "reference" in capsys.readouterr().err
    assert finetune(pretrained, "--cv", "20") == 2
    assert "cv=20 needs at least 20" in capsys.readouterr().err


def test_subject_bootstrap_interval_contains_the_point_and_fast_metrics_match_sklearn(rng):
    for k in (2, 3):
        for _ in range(10):
            y = rng.integers(0, k, 60)
            prob = rng.dirichlet(np.ones(k), 60)
            fast, slow = _fast_metrics(y, prob, k), classification_metrics(y, prob, [str(i) for i in range(k)])
            assert all(fast[m] == pytest.approx(slow[m]) for m in fast)
    y = np.tile([0, 1], 50)
    score = np.clip(y * 0.4 + rng.uniform(0, 0.6, 100), 0, 1)
    prob = np.stack([1 - score, score], axis=1)
    subject = np.repeat(np.arange(10), 10)
    ci = subject_bootstrap(y, prob, subject, ["a", "b"], n_resamples=300)
    point = classification_metrics(y, prob, ["a", "b"])
    for metric in ("auroc", "f1", "balanced_accuracy"):
        assert ci[f"{metric}_ci_low"] <= point[metric] <= ci[f"{metric}_ci_high"]
    assert np.isnan(subject_bootstrap(y, prob, np.zeros(100), ["a", "b"])["auroc_ci_low"])  # one subject


def test_window_features_are_finite_named_and_mostly_scale_free():
    ws = synthetic_cardio(n_subjects=2, windows_per_subject=3, with_acc=True, seed=1, window_s=4.0)
    features = window_features(ws.signals, ws.fs)
    names = feature_names(ws.channels)
    assert features.shape == (6, len(names)) and np.isfinite(features).all()
    scaled = window_features(ws.signals * 1000, ws.fs)
    free = [i for i, n in enumerate(names) if not n.endswith("log_std")]
    np.testing.assert_allclose(scaled[:, free], features[:, free], rtol=1e-3, atol=1e-6)
    flat = np.zeros((1, 1, 500), dtype=np.float32)
    assert np.isfinite(window_features(flat, 125.0)).all()


def test_a_checkpoint_fine_tunes_on_a_subset_of_its_channels(pretrained, workdir):
    ws = synthetic_cardio(n_subjects=8, windows_per_subject=6, with_acc=True, seed=4)
    ppg_only = dataclasses.replace(ws, signals=ws.signals[:, [3]].copy(), channels=["PPG"])
    run = finetune_windows(pretrained, ppg_only, workdir / "ppg.parquet")
    assert run.data.tags["biosig.channels_dropped"] == "ECG"
    assert "no channel-dependent tensors" in run.data.tags["biosig.note.channels"]


def test_mix_channel_drop_keeps_the_present_channels_slices_by_name():
    tiny = {"context_length": 64, "patch_length": 16, "d_model": 8, "num_layers": 1, "mode": "mix_channel"}
    old = TTMBackbone(["PPG", "ECG", "ACC_X"], **tiny)
    kept = TTMBackbone(["PPG", "ACC_X"], **tiny)
    reduced, resliced = drop_channels(old.state_dict(), kept.state_dict(), ["PPG", "ECG", "ACC_X"], ["PPG", "ACC_X"])
    kept.load_state_dict(reduced, strict=True)
    assert resliced and all("channel" in n or "mixer" in n for n in resliced)
    gate = next(n for n in resliced if n.endswith("attn_layer.weight"))
    torch.testing.assert_close(reduced[gate], old.state_dict()[gate][[0, 2]][:, [0, 2]])


def test_subjects_recorded_in_other_units_train_normally(pretrained, workdir, capsys):
    ws = synthetic_cardio(n_subjects=8, windows_per_subject=6, with_acc=True, seed=6)
    in_counts = np.isin(ws.subject, ws.subject[::12][:4])  # half the subjects in raw ADC-like units
    signals = ws.signals.copy()
    signals[in_counts] = signals[in_counts] * 1000 + 500
    run = finetune_windows(pretrained, dataclasses.replace(ws, signals=signals), workdir / "mixed.parquet")
    assert run.data.tags["biosig.normalisation"] == "window"
    assert "different units?" in run.data.tags["biosig.note.normalisation"]
    history = MlflowClient().get_metric_history(run.info.run_id, "val/loss")
    assert max(m.value for m in history) < 5.0
    assert "MODE COLLAPSE" not in capsys.readouterr().out
    # The registered model applies the same scaling: a window predicts alike in either unit.
    import mlflow

    model = mlflow.pyfunc.load_model(f"models:/{FINETUNED}@candidate")
    one = ws.signals[:2]
    np.testing.assert_allclose(model.predict(as_model_input(one, ws.channels)).to_numpy(),
                               model.predict(as_model_input(one * 1000 + 500, ws.channels)).to_numpy(), atol=1e-4)


def test_window_scaling_is_unit_free_and_keeps_flat_channels_flat():
    from biosig.data.adapt import ChannelStats, WindowScaling, unit_mismatch

    ws = synthetic_cardio(n_subjects=4, windows_per_subject=3, with_acc=True, seed=2, window_s=4.0)
    scaling = ChannelStats.from_dict(WindowScaling(ws.channels).to_dict())
    assert isinstance(scaling, WindowScaling)
    np.testing.assert_allclose(scaling.apply(ws.signals * 1000 + 7), scaling.apply(ws.signals), atol=1e-3)
    assert (scaling.apply(np.full((1, 1, 80), 3.0, dtype=np.float32)) == 0).all()
    signals = ws.signals.copy()
    assert unit_mismatch(signals, ws.subject, ws.channels) == {}
    signals[ws.subject == ws.subject[0]] *= 1000
    assert set(unit_mismatch(signals, ws.subject, ws.channels)) == set(ws.channels)
