"""Mamba-2 EEG through the same doors as TTM: pretrain (mae, bert, torchrun), registry discovery by the
mamba2_eeg_… name, participant-level fine-tuning, pyfunc registration, and the bad inputs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from biosig.cli import main
from biosig.data.splits import subject_split
from biosig.data.synthetic import synthetic_eeg
from tests.helpers import finished_runs, free_port, metrics_of, run_pretrain, write_yaml

#: A Mamba-2 small enough that pretraining takes a second or two on one CPU thread.
TINY_MAMBA2 = {"arch": "mamba2", "d_model": 16, "num_layers": 2, "d_state": 8, "headdim": 8, "chunk_size": 16,
               "context_length": 256, "patch_length": 32, "epochs": 2, "n_subjects": 6, "windows_per_subject": 8,
               "batch_size": 8}
TINY_M2_NAME = "mamba2_eeg_d16_l2_m20_mae"
FINETUNE_EEG = ["--n-subjects", "10", "--windows-per-subject", "8", "--stage1-epochs", "1", "--stage2-epochs", "2",
                "--unfreeze-last-n", "1", "--batch-size", "16"]


@pytest.fixture
def m2_config(workdir):
    return write_yaml(workdir / "pretrain_mamba2.yaml", TINY_MAMBA2)


@pytest.fixture
def m2_pretrained(m2_config):
    return run_pretrain(m2_config)


def registered_names() -> list[str]:
    return sorted(m.name for m in MlflowClient().search_registered_models())


@pytest.mark.parametrize("style", ["mae", "bert"])
def test_pretrain_registers_the_conventional_name_and_logs_the_variance_ratio(m2_config, style):
    assert main(["pretrain", "--config", str(m2_config), "--masking-style", style]) == 0
    name = f"mamba2_eeg_d16_l2_m20_{style}"
    client = MlflowClient()
    version = client.get_model_version_by_alias(name, "candidate")
    assert version.tags["biosig.arch"] == "mamba2"
    assert version.tags["biosig.field.masking_style"] == style
    run = client.get_run(version.run_id)
    assert run.data.params["arch"] == "mamba2" and run.data.params["channels"] == "AF7,AF8,TP9,TP10"
    ratios = client.get_metric_history(run.info.run_id, "val/pred_var_ratio")
    assert [m.step for m in ratios] == [1, 2] and all(0 < m.value < 10 for m in ratios)
    meta = yaml.safe_load(Path(mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/checkpoint/biosig.json"))
                          .read_text())
    assert meta["backbone"]["arch"] == "mamba2" and meta["backbone"]["config"]["bidirectional"] is True
    assert meta["objective"]["masking_style"] == style and meta["patch_length"] == 32


def test_arch_mamba2_defaults_to_the_muse_eeg_model():
    from biosig.commands.pretrain import PretrainConfig
    from biosig.config import load_config

    config = load_config(PretrainConfig, None, {"arch": "mamba2"})
    assert config.model_name() == "mamba2_eeg_d256_l2_m20_mae"
    assert (config.data, config.context_length, config.patch_length) == ("synthetic:eeg", 2048, 16)
    shipped = Path(__file__).parents[1] / "configs" / "pretrain_mamba2.yaml"
    assert load_config(PretrainConfig, shipped).model_name() == "mamba2_eeg_d256_l2_m20_mae"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None,
                    reason="torchrun is not installed next to this Python")
@pytest.mark.slow
def test_torchrun_two_processes_register_one_version(m2_config, workdir):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", str(free_port()), "-m", "biosig",
                             "pretrain", "--config", str(m2_config)], cwd=workdir, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    versions = MlflowClient().search_model_versions(f"name = '{TINY_M2_NAME}'")
    assert len(versions) == 1
    runs = finished_runs()
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.tags["biosig.world_size"] == "2"


@pytest.mark.slow
def test_finetune_auto_from_the_pretrain_config_logs_both_levels_and_registers_a_pyfunc(m2_pretrained):
    assert main(["finetune", "--checkpoint", "auto", "--pretrain-config", str(m2_pretrained), *FINETUNE_EEG]) == 0
    client = MlflowClient()
    name = f"{TINY_M2_NAME}_finetuned"
    version = client.get_model_version_by_alias(name, "candidate")
    assert version.tags["biosig.parent.name"] == TINY_M2_NAME and version.tags["biosig.arch"] == "mamba2"
    run = client.get_run(version.run_id)
    metrics = metrics_of(run)
    for key in ("val_window_auroc", "val_participant_auroc", "val_window_f1", "val_participant_f1",
                "test_window_auroc", "test_participant_f1"):
        assert key in metrics, key
    assert run.data.params["selection_metric"] == "f1" and run.data.params["aggregate"] == "mean"
    assert metrics["test_f1"] == metrics["test_window_f1"]  # selection_level=window: plain = window level
    participants = pd.read_parquet(mlflow.artifacts.download_artifacts(
        f"runs:/{run.info.run_id}/evaluation/participant_predictions.parquet"))
    windows = pd.read_parquet(mlflow.artifacts.download_artifacts(
        f"runs:/{run.info.run_id}/evaluation/predictions.parquet"))
    assert sorted(participants.subject) == sorted(windows.subject.unique())
    model = mlflow.pyfunc.load_model(f"models:/{name}@candidate")
    eeg = synthetic_eeg(n_subjects=2, parents_per_subject=1, subs_per_parent=2, seed=5)
    probs = model.predict({c: eeg.signals[:, i, :] for i, c in enumerate(eeg.channels)})
    assert np.asarray(probs).shape == (4, 2)
    np.testing.assert_allclose(np.asarray(probs).sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_finetune_by_name_and_alias_selecting_on_participant_level(m2_pretrained):
    assert main(["finetune", "--checkpoint", f"{TINY_M2_NAME}@candidate", *FINETUNE_EEG, "--channels",
                 "TP10,AF8,AF7,TP9", "--selection-level", "participant", "--aggregate", "vote"]) == 0
    run = [r for r in finished_runs("FINISHED") if r.data.tags["biosig.command"] == "finetune"][0]
    assert run.data.params["data"] == "synthetic:eeg"  # the Mamba-2 name implies the EEG defaults
    assert metrics_of(run)["test_f1"] == metrics_of(run)["test_participant_f1"]
    # The same montage in another order keeps the checkpoint's order (channel embeddings line up by name).
    model = mlflow.pyfunc.load_model(f"models:/{TINY_M2_NAME}_finetuned@candidate").unwrap_python_model()
    assert model.meta["channels"] == ["AF7", "AF8", "TP9", "TP10"]


def test_participant_split_is_stratified_disjoint_and_keeps_temporal_order():
    eeg = synthetic_eeg(n_subjects=12, parents_per_subject=2, subs_per_parent=3, window_s=1.0, seed=3)
    splits = subject_split(eeg, 0.25, 0.25, seed=7)
    members = {name: set(part.subject) for name, part in splits.items()}
    assert not members["train"] & members["val"] and not members["train"] & members["test"] \
        and not members["val"] & members["test"]
    assert set().union(*members.values()) == set(eeg.subject)
    for part in splits.values():
        assert len(set(part.labels)) == 2  # stratified: every split sees both remission classes
        for participant in set(part.subject):
            rows = part.order[part.subject == participant]
            assert (np.diff(rows[:, 0] * 100 + rows[:, 1]) > 0).all()
    again = subject_split(eeg, 0.25, 0.25, seed=7)
    assert {n: set(p.subject) for n, p in again.items()} == members


@pytest.mark.parametrize("args,message", [
    (["--mask-ratio", "1.2"], "mask_ratio"),
    (["--mask-ratio", "0"], "mask_ratio"),
    (["--masking-style", "simmim"], "masking_style"),
    (["--channels", "AF7,AF8,PPG"], "PPG"),
    (["--objective", "fcst"], "TTM-only"),
])
def test_bad_pretrain_input_is_a_clear_error_and_registers_nothing(m2_config, capsys, args, message):
    assert main(["pretrain", "--config", str(m2_config), *args]) == 2
    assert message in capsys.readouterr().err
    assert registered_names() == []
    assert not finished_runs("RUNNING")


def test_windows_shorter_than_a_patch_are_refused(m2_config, workdir, capsys):
    from biosig.data import write_parquet

    short = synthetic_eeg(n_subjects=4, parents_per_subject=1, subs_per_parent=2, window_s=0.0625, seed=1)  # 16 samples
    write_parquet(short, workdir / "short.parquet")
    assert main(["pretrain", "--config", str(m2_config), "--data", str(workdir / "short.parquet")]) == 2
    assert "shorter than one patch of 32 samples" in capsys.readouterr().err
    assert registered_names() == [] and finished_runs()[0].info.status == "FAILED"


@pytest.mark.slow
def test_finetune_on_a_channel_subset_and_refusing_another_architecture(m2_pretrained, pretrained, capsys):
    assert main(["finetune", "--checkpoint", f"{TINY_M2_NAME}@candidate", "--channels", "AF7,AF8,TP9",
                 *FINETUNE_EEG]) == 0
    out = capsys.readouterr().out
    assert "pretrained channels ['TP10'] are absent from the data and were dropped" in out
    assert "1 channel-dependent tensors re-sliced by name" in out  # the channel embedding table
    from tests.helpers import TINY_NAME

    assert main(["finetune", "--checkpoint", TINY_NAME, "--arch", "mamba2", *FINETUNE_EEG]) == 2
    assert "is a ttm model, but this config expects arch=mamba2" in capsys.readouterr().err
    assert [n for n in registered_names() if n.endswith("_finetuned")] == [f"{TINY_M2_NAME}_finetuned"]


@pytest.mark.slow
def test_tune_searches_the_unfreeze_depth_of_mamba2_blocks(m2_pretrained):
    assert main(["tune", "--checkpoint", "auto", "--pretrain-config", str(m2_pretrained), *FINETUNE_EEG,
                 "--n-trials", "3", "--study", "m2"]) == 0
    trials = [r for r in finished_runs() if r.data.tags.get("biosig.command") == "tune_trial"]
    assert len(trials) == 3
    assert {int(t.data.params["unfreeze_last_n"]) for t in trials} <= {0, 1, 2}  # the checkpoint's 2 blocks
    assert all(t.data.params["selection_metric"] == "f1" and "val_participant_f1" in metrics_of(t) for t in trials)


def test_resume_under_torchrun_is_refused_before_any_run(m2_config, monkeypatch, capsys):
    import contextlib

    from biosig.training import loop

    monkeypatch.setattr(loop, "distributed", lambda device: contextlib.nullcontext(loop.Distributed(0, 2, 0)))
    assert main(["pretrain", "--config", str(m2_config), "--resume", "0123abcd"]) == 2
    assert "'resume' continues a run in one process" in capsys.readouterr().err
    assert finished_runs() == [] and registered_names() == []
