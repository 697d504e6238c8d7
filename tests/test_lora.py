"""adaptation=lora: LoRA adapters (peft) instead of unfreezing blocks, merged into the weights of the
registered pyfunc; tuned over their rank; a `lora` row in compare."""

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from biosig.backbones import build_backbone
from biosig.cli import main
from biosig.data.synthetic import synthetic_cardio
from biosig.models.lora import add_lora, has_lora, merge_lora
from biosig.registry.pyfunc import as_model_input
from tests.helpers import TINY_FINETUNE, TINY_NAME, finished_runs, sizes_of

FINETUNED = f"{TINY_NAME}_finetuned"


def test_merged_adapters_compute_what_the_adapted_model_computed():
    backbone = build_backbone("ttm", ["PPG", "ECG"], {"context_length": 64, "patch_length": 16, "d_model": 8,
                                                      "num_layers": 2})
    keys = set(backbone.state_dict())
    layers = add_lora(backbone, ("fc1", "fc2"), rank=4, alpha=8, dropout=0.0)
    assert len(layers) == 8 and has_lora(backbone)
    trainable = {n for n, p in backbone.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)  # only the adapters train
    for name, param in backbone.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param)  # as if trained (B starts at zero)
    backbone.eval()
    x = torch.randn(3, 2, 64)
    adapted = backbone(x)
    merge_lora(backbone)
    assert not has_lora(backbone) and set(backbone.state_dict()) == keys
    torch.testing.assert_close(backbone(x), adapted, atol=1e-5, rtol=1e-5)


def test_lora_fine_tune_registers_a_plain_pyfunc_with_fewer_trainable_parameters(pretrained, workdir):
    assert main(["finetune", "--pretrain-config", str(pretrained), *TINY_FINETUNE, "--adaptation", "lora",
                 "--lora-rank", "2"]) == 0
    (run,) = [r for r in finished_runs("FINISHED") if r.data.tags.get("biosig.command") == "finetune"]
    stage2 = sizes_of(run)["stage2.trainable_params"]
    assert sizes_of(run)["stage1.trainable_params"] < stage2
    stages = json.loads(open(MlflowClient().download_artifacts(run.info.run_id, "stages.json")).read())
    assert "LoRA r=2" in stages["2"]["unfrozen_blocks"][0]
    assert main(["finetune", "--pretrain-config", str(pretrained), *TINY_FINETUNE, "--register", "false"]) == 0
    unfreeze = [r for r in finished_runs("FINISHED") if r.data.tags.get("biosig.command") == "finetune"
                and r.info.run_id != run.info.run_id][0]
    assert stage2 < sizes_of(unfreeze)["stage2.trainable_params"]

    ws = synthetic_cardio(n_subjects=1, windows_per_subject=3, with_acc=True, window_s=10.0, seed=6)
    model = mlflow.pyfunc.load_model(f"models:/{FINETUNED}@candidate")
    assert model.unwrap_python_model().meta["adaptation"] == {"kind": "lora", "rank": 2, "alpha": 16.0, "layers": 8,
                                                                "merged": True}
    np.testing.assert_allclose(model.predict(as_model_input(ws.signals, ws.channels)).sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_tune_searches_the_rank_and_compare_has_a_lora_row(pretrained, workdir):
    assert main(["tune", "--checkpoint", TINY_NAME, *TINY_FINETUNE, "--adaptation", "lora", "--n-trials", "2",
                 "--pruner", "none", "--study", "lora"]) == 0
    trials = [r for r in finished_runs("FINISHED") if r.data.tags.get("biosig.command") == "tune_trial"]
    assert len(trials) == 2 and all(t.data.params["lora_rank"] in {"2", "4", "8", "16"} for t in trials)
    data = TINY_FINETUNE[:TINY_FINETUNE.index("--stage1-epochs")]
    assert main(["compare", "--checkpoints", TINY_NAME, "--modes", "probe,finetune,lora", "--reference", "",
                 *data]) == 0
    (parent,) = [r for r in finished_runs("FINISHED") if r.data.tags["biosig.command"] == "compare"]
    board = pd.read_csv(MlflowClient().download_artifacts(parent.info.run_id, "leaderboard.csv"))
    assert set(board["mode"]) == {"probe", "finetune", "lora"}
    trainable = board.set_index("mode").trainable_params
    assert trainable["probe"] < trainable["lora"]  # (rank 8 on a d_model-8 toy is not smaller than one block)
