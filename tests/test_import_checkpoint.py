"""import-checkpoint: weights saved by other code enter the registry under their conventional name, with
provenance, and fine-tune like any pretrained checkpoint; weights that do not fit are one line, no run."""

import hashlib

import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import save_file

from biosig.backbones import build_backbone
from biosig.cli import main
from tests.helpers import TINY_FINETUNE, TINY_NAME, finished_runs

SIZE = {"context_length": 64, "patch_length": 16, "d_model": 8, "num_layers": 2, "dropout": 0.0}
KEYS = ["--arch", "ttm", "--context-length", "64", "--patch-length", "16", "--d-model", "8", "--num-layers", "2",
        "--dropout", "0.0", "--system-metrics", "false"]


def foreign_weights(tmp_path):
    """What a lab's own training script saved: the whole classifier in a wrapper, the backbone under backbone."""
    backbone = build_backbone("ttm", ["PPG", "ECG"], SIZE)
    state = {**{f"backbone.{k}": v for k, v in backbone.state_dict().items()}, "head.weight": torch.zeros(2, 8)}
    path = tmp_path / "best_model.pt"
    torch.save({"epoch": 12, "model_state_dict": state}, path)
    return path, backbone


def test_a_torch_save_file_is_registered_with_provenance_and_fine_tunes(workdir):
    path, backbone = foreign_weights(workdir)
    assert main(["import-checkpoint", "--path", str(path), *KEYS]) == 0
    client = MlflowClient()
    version = client.get_model_version(TINY_NAME, "1")
    assert version.tags["biosig.imported.sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert version.tags["biosig.imported.from"] == str(path.resolve()) and "@" in version.tags["biosig.imported.by"]
    assert version.tags["biosig.kind"] == "pretrained" and version.tags["biosig.arch"] == "ttm"
    (run,) = finished_runs("FINISHED")
    assert run.data.tags["mlflow.runName"] == f"import-checkpoint {TINY_NAME}"
    assert "key prefix `backbone.`, 1 keys outside the backbone ignored" in run.data.tags["mlflow.note.content"]

    from biosig.models.checkpoint import read_weights
    registered = read_weights(client.download_artifacts(run.info.run_id, "checkpoint"))
    assert all(torch.equal(registered[k], v) for k, v in backbone.state_dict().items())  # the weights, unchanged

    assert main(["finetune", "--checkpoint", TINY_NAME, *TINY_FINETUNE, "--system-metrics", "false"]) == 0
    assert client.get_model_version(f"{TINY_NAME}_finetuned", "1").tags["biosig.parent.name"] == TINY_NAME


def test_safetensors_with_granite_tsfm_keys_map_onto_the_backbone(workdir):
    backbone = build_backbone("ttm", ["PPG", "ECG"], SIZE)
    # TinyTimeMixerForPrediction keeps the mixer under `backbone.`, biosig's wrapper under `model.`
    state = {f"backbone.{k.removeprefix('model.')}": v.contiguous() for k, v in backbone.state_dict().items()}
    save_file(state, workdir / "ttm.safetensors")
    assert main(["import-checkpoint", "--path", str(workdir / "ttm.safetensors"), *KEYS]) == 0


def test_weights_that_do_not_fit_are_one_line_and_register_nothing(workdir, capsys):
    path, _ = foreign_weights(workdir)
    assert main(["import-checkpoint", "--path", str(path), *KEYS[:-2], "--d-model", "16"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not fit the backbone" in err and "shape mismatch" in err
    torch.save({"optimizer": {"lr": 0.1}}, workdir / "no_tensors.pt")
    assert main(["import-checkpoint", "--path", str(workdir / "no_tensors.pt"), *KEYS]) == 2
    assert "holds no tensors" in capsys.readouterr().err
    (workdir / "pickled.pt").write_bytes(b"not a torch file")
    assert main(["import-checkpoint", "--path", str(workdir / "pickled.pt"), *KEYS]) == 2
    assert "cannot be read as a state dict" in capsys.readouterr().err
    assert main(["import-checkpoint", *KEYS]) == 2
    assert "config key 'path' is required" in capsys.readouterr().err
    assert finished_runs() == [] and MlflowClient().search_registered_models() == []
