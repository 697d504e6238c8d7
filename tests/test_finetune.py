"""finetune: checkpoint=auto from the registry, staged training, metrics, artifacts, pyfunc model,
and every listed bad input failing the run with nothing registered."""

import contextlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from biosig.cli import main
from biosig.data import write_parquet
from biosig.data.synthetic import synthetic_cardio, synthetic_eeg
from biosig.models.heads import Classifier
from biosig.tracking.metric_names import logged_key
from tests.helpers import TINY_FINETUNE, TINY_NAME, finished_runs, free_port, metrics_of, sizes_of

FINETUNED = f"{TINY_NAME}_finetuned"


def finetune(pretrain_yaml, *extra):
    return main(["finetune", "--pretrain-config", str(pretrain_yaml), *TINY_FINETUNE, *extra])


def only_finetune_run(status):
    runs = [r for r in finished_runs(status) if r.data.tags.get("biosig.command") == "finetune"]
    assert len(runs) == 1, [r.data.tags.get("biosig.command") for r in finished_runs()]
    return runs[0]


def nothing_registered():
    return [m.name for m in MlflowClient().search_registered_models() if m.name.endswith("_finetuned")] == []


@pytest.mark.slow
def test_pretrain_then_finetune_auto_end_to_end(pretrained, workdir):
    assert finetune(pretrained) == 0
    client = MlflowClient()
    run = only_finetune_run("FINISHED")
    rid = run.info.run_id
    assert run.data.tags["biosig.parent.name"] == TINY_NAME and run.data.tags["biosig.parent.version"] == "1"
    assert "no channel-dependent tensors" in run.data.tags["biosig.channel_mapping"]
    assert run.data.tags["mlflow.runName"] == f"finetune → {TINY_NAME}_finetuned"
    assert f"Registered as {TINY_NAME}_finetuned version 1" in run.data.tags["mlflow.note.content"]
    for metric in ("train_loss", "val_loss", "val_auroc", "val_f1", "val_balanced_accuracy", "val_precision",
                   "val_recall", "val_ece", "val_recall.poor", "val_recall.good"):
        assert [m.step for m in client.get_metric_history(rid, logged_key(metric))] == [1, 2, 3, 4], metric
    metrics, sizes = metrics_of(run), sizes_of(run)
    assert {"test_auroc", "test_f1", "test_ece", "best_epoch"} <= set(metrics)
    assert sizes["stage1.trainable_params"] < sizes["stage2.trainable_params"] and "stage2.frozen_params" in sizes
    # logged in three namespaces the UI shows as sections, results first: test/…, train/…, val/…
    assert {"train/loss", "train/lr", "train/stage", "train/best_epoch", "val/auroc", "test/auroc"} <= set(
        run.data.metrics)
    assert {key.partition("/")[0] for key in run.data.metrics if not key.startswith("system/")} == {
        "test", "train", "val"}
    artifacts = {a.path for a in client.list_artifacts(rid, "evaluation")}
    assert artifacts == {"evaluation/confusion_matrix.png", "evaluation/roc.png", "evaluation/predictions.parquet",
                         "evaluation/predictions_preview.json", "evaluation/test_summary.json"}
    preview = client.load_table(run.info.experiment_id, "evaluation/predictions_preview.json", run_ids=[rid])
    assert list(preview.columns[:4]) == ["subject", "true", "predicted", "correct"] and set(preview["true"]) <= {
        "poor", "good"}
    summary = client.load_table(run.info.experiment_id, "evaluation/test_summary.json", run_ids=[rid])
    assert summary["model"].tolist() == ["fine-tuned"] and summary["auroc"][0] == round(metrics["test_auroc"], 4)
    predictions = pd.read_parquet(client.download_artifacts(rid, "evaluation/predictions.parquet"))
    assert list(predictions.columns) == ["subject", "y_true", "y_pred", "prob"]
    version = client.get_model_version(FINETUNED, "1")
    assert client.get_registered_model(FINETUNED).aliases == {"candidate": 1}
    assert version.tags["biosig.parent.name"] == TINY_NAME and version.tags["biosig.parent.version"] == "1"
    assert version.tags["biosig.task"] == "quality"
    assert version.tags["biosig.dataset.digest"] == run.data.tags["biosig.dataset.digest"]

    # MLflow 3 logged models: the version is the fine-tune's logged model, which holds its metrics and dataset
    model_id = version.source.removeprefix("models:/")
    logged_model = client.get_logged_model(model_id)
    assert logged_model.name == FINETUNED and logged_model.source_run_id == rid
    keys = [m.key for m in logged_model.metrics]
    assert {"test/auroc", "test/auroc_ci_low", "train/best_epoch"} <= set(keys)
    assert not {"val/auroc", "train/loss", "train/lr"} & set(keys)  # the curves stay on the run
    assert len(keys) == len(set(keys))  # each result once
    assert {m.dataset_digest for m in logged_model.metrics} == {run.data.tags["biosig.dataset.digest"][:16]}
    assert json.loads(logged_model.tags["mlflow.modelVersions"]) == [{"name": FINETUNED, "version": "1"}]
    found = client.search_logged_models(experiment_ids=[run.info.experiment_id],
                                        filter_string="metrics.`test/auroc` > 0")
    assert [m.model_id for m in found] == [model_id]
    # the README's search example, as written, in a fresh process: it runs and agrees with the client's answer
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    example = re.search(r"``(mlflow\.search_logged_models\(.*?\))``", readme, re.S).group(1).replace("\n", " ")
    code = f"import mlflow; print(sorted(m.model_id for m in {example[:-1]}, output_format='list')))"
    fresh = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri()})
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    expected = sorted(m.model_id for m in client.search_logged_models(
        experiment_ids=[run.info.experiment_id], filter_string="metrics.`test/auroc` > 0.8"))
    assert fresh.stdout.strip() == str(expected)
    requirements = Path(mlflow.artifacts.download_artifacts(f"{logged_model.artifact_location}/requirements.txt")).read_text()
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in requirements  # CPU serving images
    assert re.search(r"^torch==[\d.]+$", requirements, re.M), requirements
    pretrained = client.get_model_version(TINY_NAME, "1")  # the backbone is a logged model too
    backbone = client.get_logged_model(pretrained.source.removeprefix("models:/"))
    assert backbone.name == TINY_NAME and {"val/best_loss", "train/best_epoch"} <= {m.key for m in backbone.metrics}
    assert json.loads(backbone.tags["mlflow.modelVersions"]) == [{"name": TINY_NAME, "version": "1"}]

    # A fresh process loads the registered pyfunc by alias and predicts on the parquet layout.
    dataset = run.data.tags["biosig.dataset.uri"]
    code = (
        "import mlflow, pandas as pd, numpy as np; "
        f"m = mlflow.pyfunc.load_model('models:/{FINETUNED}@candidate'); "
        f"out = m.predict(pd.read_parquet({dataset!r}).head(5)); "
        "assert list(out.columns) == ['poor', 'good'], out.columns; "
        "assert np.allclose(out.sum(axis=1), 1, atol=1e-5); print('OK', len(out))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=workdir, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}"})
    assert done.returncode == 0 and "OK 5" in done.stdout, done.stderr[-2000:]


def test_pyfunc_predictions_match_the_tested_model(pretrained, workdir):
    """The registered model reproduces the run's test predictions (same preprocessing, same weights)."""
    import mlflow

    from biosig.data import read_parquet
    from biosig.registry.pyfunc import as_model_input

    assert finetune(pretrained, "--pooling", "mean", "--head", "mlp") == 0
    run = only_finetune_run("FINISHED")
    model = mlflow.pyfunc.load_model(f"models:/{FINETUNED}/1")
    ws = read_parquet(run.data.tags["biosig.dataset.uri"])
    predictions = pd.read_parquet(MlflowClient().download_artifacts(run.info.run_id, "evaluation/predictions.parquet"))
    test = ws.take(np.flatnonzero(np.isin(ws.subject, predictions.subject.unique())))
    probs = model.predict(as_model_input(test.signals, test.channels)).to_numpy()
    np.testing.assert_allclose(probs, np.stack(predictions.prob), atol=1e-5)
    # DataFrames straight from the parquet, with any index: a subject filter, a random sample
    frame = pd.read_parquet(run.data.tags["biosig.dataset.uri"])
    everything = model.predict(frame).to_numpy()
    one_subject = frame[frame.subject == frame.subject.iloc[-1]]
    assert one_subject.index[0] != 0
    np.testing.assert_allclose(model.predict(one_subject).to_numpy(), everything[one_subject.index], atol=1e-5)
    sample = frame.sample(5, random_state=1)
    np.testing.assert_allclose(model.predict(sample).to_numpy(), everything[sample.index], atol=1e-5)
    # a frame in, a frame out on the same index; the dataset's own columns pass without a warning
    assert list(model.predict(sample).index) == list(sample.index)
    with warnings.catch_warnings(), capture_logs("mlflow") as logged:
        warnings.simplefilter("error")
        model.predict(one_subject)
    assert not [r for r in logged if "extra inputs" in r.getMessage()]
    short = frame.head(2).assign(PPG=[x[:5] for x in frame.PPG.head(2)])
    for bad, words in ((frame.iloc[:0], "the model input has no rows"),
                       (short, "column 'PPG' holds windows of [5] samples; the model takes"),
                       (frame.drop(columns=["ECG"]), "model input lacks channel column(s) ['ECG']")):
        with pytest.raises(MlflowException) as caught:
            model.predict(bad)
        assert str(caught.value).startswith(words) and len(str(caught.value)) < 250


@contextlib.contextmanager
def capture_logs(name: str):
    """The records logger `name` (and its children) emit inside the block."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def test_single_class_training_labels_fail_and_register_nothing(pretrained, workdir, capsys):
    ws = synthetic_cardio(n_subjects=8, windows_per_subject=4, with_acc=True, window_s=2.0, seed=1)
    ws.labels[:] = 0
    write_parquet(ws, workdir / "one_class.parquet")
    assert finetune(pretrained, "--data", str(workdir / "one_class.parquet")) == 2
    assert "holds only class 'poor'" in capsys.readouterr().err
    assert "needs at least two classes" in only_finetune_run("FAILED").data.tags["biosig.error"]
    assert nothing_registered()


def test_missing_channels_fail(pretrained, workdir, capsys):
    eeg = synthetic_eeg(n_subjects=6, parents_per_subject=2, subs_per_parent=2, window_s=1.0, seed=2)
    write_parquet(eeg, workdir / "eeg.parquet")
    assert finetune(pretrained, "--data", str(workdir / "eeg.parquet")) == 2
    assert "channels ['PPG', 'ECG'] are missing from the fine-tuning data" in capsys.readouterr().err
    only_finetune_run("FAILED")
    assert nothing_registered()


def test_unknown_checkpoint_fails_before_training_with_closest_names(pretrained, capsys):
    assert finetune(pretrained, "--checkpoint", "ttm_ppg-ecg_c64_p16_m50_mae") == 2
    err = capsys.readouterr().err
    assert f"closest registered: {TINY_NAME}" in err and "biosig pretrain --arch ttm --channels PPG,ECG" in err
    # a registry lookup is knowable before a run: no finetune run at all
    assert not [r for r in finished_runs() if r.data.tags.get("biosig.command") == "finetune"]
    assert nothing_registered()


def test_wrong_architecture_checkpoint_fails(pretrained, workdir, capsys):
    import json

    client = MlflowClient()
    path = client.download_artifacts(client.get_model_version(TINY_NAME, "1").run_id, "checkpoint", str(workdir))
    meta = json.loads(open(f"{path}/biosig.json").read())
    meta["backbone"]["arch"] = "mamba2"
    open(f"{path}/biosig.json", "w").write(json.dumps(meta))
    assert finetune(pretrained, "--checkpoint", path, "--arch", "ttm") == 2
    assert "is a mamba2 model, but this config expects arch=ttm" in capsys.readouterr().err
    assert finetune(pretrained, "--checkpoint", path) == 2  # arch=auto: any arch, but this one cannot be built
    assert f"checkpoint {path}: its biosig.json describes a mamba2 backbone that cannot be built" in \
        capsys.readouterr().err
    assert nothing_registered()


def test_unfreeze_last_n_out_of_range_fails(pretrained, capsys):
    assert finetune(pretrained, "--unfreeze-last-n", "5") == 2
    assert "'unfreeze_last_n' is 5 but the backbone has 2 blocks" in capsys.readouterr().err
    only_finetune_run("FAILED")
    assert nothing_registered()


def test_context_that_does_not_fit_is_refused_naming_both_shapes(pretrained, capsys):
    assert finetune(pretrained, "--context-fit", "error") == 2
    assert "has windows of 1250 samples at 125 Hz, the checkpoint expects 64 samples at 125 Hz" in \
        capsys.readouterr().err
    assert nothing_registered()


def test_nan_loss_fails_at_the_step(pretrained, monkeypatch, capsys):
    forward = Classifier.forward
    monkeypatch.setattr(Classifier, "forward", lambda self, x: forward(self, x) * torch.nan)
    assert finetune(pretrained) == 2
    assert "loss became nan at stage 1, epoch 1, step 1" in capsys.readouterr().err
    assert only_finetune_run("FAILED").data.tags["biosig.error_type"] == "TrainingError"
    assert nothing_registered()


def test_mode_collapse_is_tagged_and_said_loudly(pretrained, capsys):
    assert finetune(pretrained, "--collapse-threshold", "1.0", "--register", "false") == 0
    assert "MODE COLLAPSE after stage 1" in capsys.readouterr().out
    run = only_finetune_run("FINISHED")
    assert run.data.tags["biosig.warning"] == "mode_collapse" and run.data.tags["biosig.collapsed_classes"]
    assert nothing_registered()


def test_mix_channel_checkpoint_is_inflated_onto_five_channels(tiny_pretrain, capsys):
    assert main(["pretrain", "--config", str(tiny_pretrain), "--mode", "mix_channel", "--epochs", "1"]) == 0
    assert finetune(tiny_pretrain, "--checkpoint", f"{TINY_NAME}_mix", "--register", "false") == 0
    assert "inflated 12 channel-mixer tensors" in capsys.readouterr().out


def test_finetune_can_promote_to_staging_at_the_end(pretrained, workdir):
    policy = workdir / "lenient.yaml"
    policy.write_text("applies_to: '*'\ntargets:\n  staging:\n    metrics: ['test_auroc >= 0.0']\n")
    assert finetune(pretrained, "--promote", "staging", "--policies", str(policy)) == 0
    assert MlflowClient().get_registered_model(FINETUNED).aliases == {"candidate": 1, "staging": 1}
    run = only_finetune_run("FINISHED")
    assert run.data.tags["biosig.promote.staging"] == "promoted"
    (audit,) = [r for r in finished_runs("FINISHED") if r.data.tags["biosig.command"] == "promote"]
    assert audit.data.tags["mlflow.parentRunId"] == run.info.run_id


def test_bad_class_weights_are_refused_before_a_run(workdir, capsys):
    assert main(["finetune", "--class-weights", "1,heavy"]) == 2
    assert "'class_weights' must be auto, none or comma-separated numbers" in capsys.readouterr().err
    assert main(["finetune", "--class-weights", "1,-2"]) == 2
    assert "'class_weights' must be positive" in capsys.readouterr().err
    assert finished_runs() == []


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None,
                    reason="torchrun is not installed next to this Python")
@pytest.mark.slow
def test_torchrun_two_processes_finetune_into_one_run_and_one_version(pretrained, workdir):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    result = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", str(free_port()), "-m", "biosig",
                             "finetune", "--pretrain-config", str(pretrained), *TINY_FINETUNE, "--reference", "scratch"],
                            cwd=workdir, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = [r for r in finished_runs("FINISHED") if r.data.tags.get("biosig.command") == "finetune"
              and "mlflow.parentRunId" not in r.data.tags]
    assert run.data.tags["biosig.world_size"] == "2"
    assert np.isfinite(metrics_of(run)["reference.scratch.test_auroc"])  # rank 0 trains the reference alone
    assert result.stdout.count("epoch 1/4 (stage 1)") == 1  # rank 0 speaks for both
    history = MlflowClient().get_metric_history(run.info.run_id, logged_key("train_loss"))
    assert [m.step for m in history] == [1, 2, 3, 4] and all(np.isfinite(m.value) for m in history)
    (version,) = MlflowClient().search_model_versions(f"name = '{FINETUNED}'")
    assert version.run_id == run.info.run_id and np.isfinite(metrics_of(run)["test_auroc"])


def test_cross_validation_under_torchrun_is_refused_before_any_run(pretrained, monkeypatch, capsys):
    import contextlib

    from biosig.training import loop

    monkeypatch.setattr(loop, "distributed", lambda device: contextlib.nullcontext(loop.Distributed(0, 2, 0)))
    assert finetune(pretrained, "--cv", "3") == 2
    assert "'cv' trains its folds one after another in one process" in capsys.readouterr().err
    assert not [r for r in finished_runs() if r.data.tags.get("biosig.command") == "finetune"]
    assert nothing_registered()
