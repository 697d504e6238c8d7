"""Checkpoint discovery through the registry and all-or-nothing registration."""

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from biosig.errors import ConfigError, DataError
from biosig.models.checkpoint import save_checkpoint
from biosig.registry.discovery import resolve_checkpoint
from biosig.registry.publish import publish_version

NAME = "ttm_ppg-ecg_c1024_p128_m40_mae"


def register(workdir, name=NAME, arch="ttm", kind="pretrained", channels=("PPG", "ECG")):
    """A small checkpoint directory logged as a run artifact and registered like pretrain does."""
    meta = {"kind": kind, "name": name, "backbone": {"arch": arch, "channels": list(channels), "config": {}},
            "channels": list(channels)}
    path = save_checkpoint(workdir / "ckpt" / name, {"w": torch.ones(2)}, meta)
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(path), "checkpoint")
    version = publish_version(name, source=f"{run.info.artifact_uri}/checkpoint", run_id=run.info.run_id,
                              tags={"biosig.arch": arch})
    return run.info.run_id, version.version


def test_every_reference_form_resolves_with_lineage(workdir):
    run1, _ = register(workdir)
    run2, _ = register(workdir)
    latest = resolve_checkpoint(NAME)
    assert (latest.name, latest.version, latest.run_id) == (NAME, "2", run2)
    assert (latest.path / "biosig.json").is_file() and latest.meta["backbone"]["arch"] == "ttm"
    assert resolve_checkpoint(f"{NAME}/1").run_id == run1
    assert resolve_checkpoint(f"{NAME}@candidate").version == "2"
    assert resolve_checkpoint(f"models:/{NAME}/1").version == "1"
    assert resolve_checkpoint(f"models:/{NAME}@candidate").version == "2"
    assert resolve_checkpoint("auto", auto_name=NAME).version == "2"
    by_run = resolve_checkpoint(f"runs:/{run1}/checkpoint")
    assert by_run.run_id == run1 and by_run.name is None
    local = resolve_checkpoint(str(workdir / "ckpt" / NAME))
    assert local.path == (workdir / "ckpt" / NAME).resolve()
    assert resolve_checkpoint(f"file://{workdir / 'ckpt' / NAME}").path == local.path
    assert latest.lineage() == {"biosig.parent.uri": f"models:/{NAME}", "biosig.parent.name": NAME,
                                "biosig.parent.version": "2", "biosig.parent.run_id": run2}


def test_unknown_name_lists_closest_names_and_the_pretrain_command(workdir):
    register(workdir)
    register(workdir, name="ttm_ppg-ecg_c1024_p64_m40_mae")
    register(workdir, name="mamba2_eeg_d256_l2_m20_mae", arch="mamba2")
    with pytest.raises(DataError) as err:
        resolve_checkpoint("ttm_ppg-ecg_c1024_p128_m30_mae")
    message = str(err.value)
    assert "no registered model named 'ttm_ppg-ecg_c1024_p128_m30_mae'" in message
    assert f"closest registered: {NAME}, ttm_ppg-ecg_c1024_p64_m40_mae, mamba2_eeg_d256_l2_m20_mae" in message
    assert ("biosig pretrain --arch ttm --channels PPG,ECG --context-length 1024 --patch-length 128 --objective mae "
            "--mask-ratio 0.3") in message
    with pytest.raises(DataError, match=f"'{NAME}' has no alias '@production'"):
        resolve_checkpoint(f"{NAME}@production")
    with pytest.raises(DataError, match=f"'{NAME}' has no version 7"):
        resolve_checkpoint(f"{NAME}/7")
    with pytest.raises(DataError, match="checkpoint path not found: no/such/dir"):
        resolve_checkpoint("no/such/dir")
    with pytest.raises(ConfigError, match="checkpoint=auto needs the pretrain config"):
        resolve_checkpoint("auto")


def test_wrong_architecture_and_fine_tuned_models_are_refused(workdir):
    register(workdir, name="mamba2_eeg_d256_l2_m20_mae", arch="mamba2")
    with pytest.raises(DataError, match="is a mamba2 model, but this config expects arch=ttm"):
        resolve_checkpoint("mamba2_eeg_d256_l2_m20_mae", expected_arch="ttm")
    register(workdir, name=f"{NAME}_finetuned", kind="finetuned")
    with pytest.raises(DataError, match="is a finetuned model; fine-tuning starts from a pretrained one"):
        resolve_checkpoint(f"{NAME}_finetuned")


def test_registration_is_all_or_nothing(workdir, monkeypatch):
    client = MlflowClient()

    def broken_alias(self, *args, **kwargs):
        raise RuntimeError("registry went away")

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", broken_alias)
    with pytest.raises(RuntimeError):
        register(workdir)
    assert client.search_registered_models() == []  # the model this call created is gone again
    monkeypatch.undo()
    register(workdir)
    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", broken_alias)
    with pytest.raises(RuntimeError):
        register(workdir)
    versions = client.search_model_versions(f"name = '{NAME}'")
    assert [str(v.version) for v in versions] == ["1"]  # the half-made version 2 was deleted


def test_s3_checkpoint_is_downloaded(workdir, s3):
    path = save_checkpoint(workdir / "c", {"w": torch.ones(2)}, {"kind": "pretrained", "channels": ["PPG"],
                                                                  "backbone": {"arch": "ttm"}})
    for f in path.iterdir():
        s3.upload_file(str(f), "models", f"ttm/c1/{f.name}")
    resolved = resolve_checkpoint("s3://models/ttm/c1")
    assert resolved.uri == "s3://models/ttm/c1" and (resolved.path / "model.safetensors").is_file()
    with pytest.raises(DataError, match="not a biosig checkpoint directory|cannot download checkpoint"):
        resolve_checkpoint("s3://models/nothing-here")
