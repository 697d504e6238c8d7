"""pretrain: per-epoch losses, checkpoint artifacts, registration by name, resume, bad input."""

import json

import pytest
from mlflow.tracking import MlflowClient

from biosig.cli import main
from tests.helpers import TINY_NAME, finished_runs


def test_pretrain_logs_epochs_and_registers_a_candidate(pretrained):
    client = MlflowClient()
    (run,) = finished_runs("FINISHED")
    history = client.get_metric_history(run.info.run_id, "val/loss")
    assert [m.step for m in history] == [1, 2]
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 2
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"checkpoint", "last", "history.json", "run"} <= artifacts
    model = client.get_registered_model(TINY_NAME)
    assert model.aliases == {"candidate": 1}
    version = client.get_model_version(TINY_NAME, "1")
    assert version.run_id == run.info.run_id
    tags = version.tags
    assert tags["biosig.field.context_length"] == "64" and tags["biosig.field.channels"] == "ppg,ecg"
    assert tags["biosig.dataset.digest"] == run.data.tags["biosig.dataset.digest"]
    assert tags["biosig.run_id"] == run.info.run_id
    path = client.download_artifacts(run.info.run_id, "checkpoint")
    meta = json.load(open(f"{path}/biosig.json"))
    assert meta["kind"] == "pretrained" and meta["channels"] == ["PPG", "ECG"] and meta["fs"] == 125.0
    assert meta["context_length"] == 64 and len(meta["normalisation"]["mean"]) == 2
    assert meta["provenance"]["run_id"] == run.info.run_id and meta["provenance"]["dataset_digest"]
    assert run.data.tags["mlflow.runName"] == f"pretrain {TINY_NAME}"  # not a random name
    note = run.data.tags["mlflow.note.content"]
    assert note.startswith(f"Pretrained **{TINY_NAME}**") and f"Registered as {TINY_NAME} version 1" in note
    (dataset_input,) = run.inputs.dataset_inputs
    assert {t.key: t.value for t in dataset_input.tags}["mlflow.data.context"] == "training"
    assert dataset_input.dataset.name == run.data.tags["biosig.dataset.name"] == meta["provenance"]["dataset"]
    profile = json.loads(dataset_input.dataset.profile)  # the UI's dataset panel
    assert profile["channels"] == "PPG, ECG" and profile["fs_hz"] == 125.0 and profile["subjects"] == 4
    assert profile["window_length"] == "1024 samples (8.192 s)" and profile["class_balance"]
    assert version.description.startswith("Pretrained ttm backbone (mae)") and "val_loss" in version.description


def test_system_metrics_are_on_by_default_and_can_be_turned_off(tiny_pretrain, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    assert main(["pretrain", "--config", str(tiny_pretrain), "--register", "false"]) == 0
    assert main(["pretrain", "--config", str(tiny_pretrain), "--register", "false", "--system-metrics", "false"]) == 0
    on, off = sorted(finished_runs("FINISHED"), key=lambda r: r.info.start_time)
    assert "system/cpu_utilization_percentage" in on.data.metrics
    assert "system/system_memory_usage_megabytes" in on.data.metrics
    assert not [k for k in off.data.metrics if k.startswith("system/")]


def test_resume_continues_from_the_last_epoch(pretrained):
    client = MlflowClient()
    (first,) = finished_runs("FINISHED")
    assert main(["pretrain", "--config", str(pretrained), "--epochs", "3", "--resume", first.info.run_id]) == 0
    second = next(r for r in finished_runs("FINISHED") if r.info.run_id != first.info.run_id)
    assert second.data.tags["biosig.resumed_from"] == first.info.run_id
    assert [m.step for m in client.get_metric_history(second.info.run_id, "val/loss")] == [1, 2, 3]
    first_losses = [m.value for m in client.get_metric_history(first.info.run_id, "val/loss")]
    resumed = [m.value for m in client.get_metric_history(second.info.run_id, "val/loss")]
    assert resumed[:2] == first_losses
    assert client.get_registered_model(TINY_NAME).aliases == {"candidate": 2}


def test_resume_refuses_a_different_model(pretrained, capsys):
    (first,) = finished_runs("FINISHED")
    assert main(["pretrain", "--config", str(pretrained), "--patch-length", "32", "--resume", first.info.run_id]) == 2
    assert "trained a different model" in capsys.readouterr().err
    (failed,) = finished_runs("FAILED")
    assert "patch_length: 16 there, 32 here" in failed.data.tags["biosig.error"]
    assert main(["pretrain", "--config", str(pretrained), "--resume", "0123abcd"]) == 2
    assert "no run with id '0123abcd'" in capsys.readouterr().err


@pytest.mark.parametrize("extra, name", [
    (["--objective", "fcst", "--prediction-length", "16"], "ttm_ppg-ecg_c64_p16_h16_fcst"),
    (["--mode", "mix_channel", "--patch-length", "32"], "ttm_ppg-ecg_c64_p32_m40_mae_mix"),
])
def test_forecasting_and_mix_channel_variants(tiny_pretrain, extra, name):
    assert main(["pretrain", "--config", str(tiny_pretrain), "--epochs", "1", *extra]) == 0
    assert MlflowClient().get_registered_model(name).aliases == {"candidate": 1}


def test_bad_patch_length_is_refused_before_any_run(tiny_pretrain, capsys):
    assert main(["pretrain", "--config", str(tiny_pretrain), "--patch-length", "24"]) == 2
    assert "patch_length 24 must divide context_length 64" in capsys.readouterr().err
    assert finished_runs() == []


def test_a_failure_after_registration_unregisters(tiny_pretrain, monkeypatch):
    import biosig.commands.pretrain as pretrain_module

    def broken(*args, **kwargs):
        raise RuntimeError("disk full while finishing the run")

    monkeypatch.setattr(pretrain_module, "PretrainResult", broken)
    with pytest.raises(RuntimeError):
        main(["pretrain", "--config", str(tiny_pretrain), "--epochs", "1"])
    assert finished_runs("FAILED") and MlflowClient().search_registered_models() == []
