"""TSPulse, the third built-in backbone, through the same door as any plug-in: pretrained by its own
masked reconstruction, registered by its conventional name, found by checkpoint=auto, tuned over its
blocks, compared against TTM on one split and served as a pyfunc."""

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from biosig.backbones import build_backbone
from biosig.cli import main
from biosig.data.synthetic import synthetic_cardio
from biosig.registry.pyfunc import as_model_input
from tests.helpers import TINY_FINETUNE, TINY_PRETRAIN, finished_runs, write_yaml

NAME = "tspulse_ppg-ecg_c64_p16_m40_mae"


def test_backbone_contract_and_channel_flexibility():
    small = {"context_length": 64, "patch_length": 16, "d_model": 8, "num_layers": 2}
    two = build_backbone("tspulse", ["PPG", "ECG"], small)
    assert two(torch.randn(3, 2, 64)).shape == (3, 2, 4, 8) and len(two.blocks()) == 2
    five = build_backbone("tspulse", ["ACC_X", "ACC_Y", "ACC_Z", "PPG", "ECG"], small)
    five.load_state_dict(two.state_dict(), strict=True)  # common_channel: no channel-dependent weights
    assert two.channel_flexible and not build_backbone("tspulse", ["PPG", "ECG"],
                                                       {**small, "mode": "mix_channel"}).channel_flexible


@pytest.mark.slow
def test_the_fft_branch_builds_pretrains_and_keeps_the_time_patches():
    """fuse_fft adds TSPulse's frequency branch, whose heads read register tokens (granite-tsfm's 8)."""
    from biosig.models.tspulse import TSPulsePretraining

    small = {"context_length": 64, "patch_length": 16, "d_model": 8, "num_layers": 2, "fuse_fft": True}
    backbone = build_backbone("tspulse", ["PPG", "ECG"], small)
    assert backbone(torch.randn(3, 2, 64)).shape == (3, 2, 4, 8)  # time patches only
    loss, ratio = TSPulsePretraining(backbone)(torch.randn(3, 2, 64), torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and torch.isfinite(ratio)
    loss.backward()
    assert backbone.model.config.patch_register_tokens == 8


@pytest.mark.slow
def test_tspulse_pretrains_registers_finetunes_tunes_compares_and_serves(workdir):
    config = write_yaml(workdir / "tspulse.yaml", {**TINY_PRETRAIN, "arch": "tspulse", "system_metrics": False})
    assert main(["pretrain", "--config", str(config)]) == 0
    client = MlflowClient()
    version = client.get_model_version(NAME, "1")
    assert version.tags["biosig.arch"] == "tspulse" and version.tags["biosig.field.mask_ratio"] == "0.4"
    (pretrain,) = finished_runs("FINISHED")
    assert pretrain.data.metrics["val/loss"] > 0 and pretrain.data.metrics["val/pred_var_ratio"] > 0

    assert main(["finetune", "--pretrain-config", str(config), *TINY_FINETUNE]) == 0  # checkpoint=auto
    finetuned = client.get_model_version(f"{NAME}_finetuned", "1")
    assert finetuned.tags["biosig.parent.name"] == NAME
    ws = synthetic_cardio(n_subjects=1, windows_per_subject=4, with_acc=True, window_s=10.0, seed=4)
    probs = mlflow.pyfunc.load_model(f"models:/{NAME}_finetuned@candidate").predict(as_model_input(ws.signals,
                                                                                                   ws.channels))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)

    assert main(["tune", "--checkpoint", NAME, *TINY_FINETUNE, "--n-trials", "2", "--pruner", "none",
                 "--study", "tsp", "--system-metrics", "false"]) == 0
    trials = [r for r in finished_runs("FINISHED") if r.data.tags.get("biosig.command") == "tune_trial"]
    assert len(trials) == 2 and {t.data.params["unfreeze_last_n"] for t in trials} <= {"0", "1", "2"}

    assert main(["pretrain", "--config", str(write_yaml(workdir / "ttm.yaml", TINY_PRETRAIN))]) == 0
    data = TINY_FINETUNE[:TINY_FINETUNE.index("--stage1-epochs")]
    assert main(["compare", "--checkpoints", f"ttm_ppg-ecg_c64_p16_m40_mae,{NAME}", "--modes", "probe",
                 "--reference", "", *data]) == 0
    (parent,) = [r for r in finished_runs("FINISHED") if r.data.tags["biosig.command"] == "compare"]
    board = pd.read_csv(client.download_artifacts(parent.info.run_id, "leaderboard.csv"))
    assert set(board.checkpoint) == {"ttm_ppg-ecg_c64_p16_m40_mae", NAME}
