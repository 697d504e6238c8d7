"""compare: several checkpoints x (probe, finetune) on one split -> a leaderboard; modality checks."""

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from biosig.cli import main
from tests.helpers import TINY_FINETUNE, finished_runs


@pytest.mark.slow
def test_three_checkpoints_make_six_rows_plus_two_references_on_one_split(tiny_pretrain, workdir, capsys):
    for extra in ([], ["--patch-length", "32"], ["--mask-ratio", "0.5"]):
        assert main(["pretrain", "--config", str(tiny_pretrain), "--epochs", "1", *extra]) == 0
    data = TINY_FINETUNE[:TINY_FINETUNE.index("--stage1-epochs")]
    assert main(["compare", "--checkpoints", "ttm_ppg-ecg_c64_*", *data]) == 0
    (parent,) = [r for r in finished_runs("FINISHED") if r.data.tags["biosig.command"] == "compare"]
    children = [r for r in finished_runs("FINISHED") if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 6 and len({r.data.tags["biosig.test.digest"] for r in children}) == 1
    board = pd.read_csv(MlflowClient().download_artifacts(parent.info.run_id, "leaderboard.csv"))
    assert len(board) == 8 and set(board["mode"]) == {"probe", "finetune", "features+sklearn", "scratch"}
    assert set(board.checkpoint) == {"ttm_ppg-ecg_c64_p16_m40_mae", "ttm_ppg-ecg_c64_p32_m40_mae",
                                     "ttm_ppg-ecg_c64_p16_m50_mae", "reference: features", "reference: scratch"}
    references = [r for r in finished_runs("FINISHED") if "biosig.reference" in r.data.tags]
    assert {r.data.tags["biosig.test.digest"] for r in references} == {r.data.tags["biosig.test.digest"]
                                                                       for r in children}
    board = board[~board.checkpoint.str.startswith("reference")]
    assert list(board.balanced_accuracy) == sorted(board.balanced_accuracy, reverse=True)
    probe = board[board["mode"] == "probe"].trainable_params
    assert (probe < board[board["mode"] == "finetune"].trainable_params.min()).all()  # the probe is frozen
    names = {a.path for a in MlflowClient().list_artifacts(parent.info.run_id)}
    assert {"leaderboard.csv", "leaderboard.md", "leaderboard.png", "split_manifest.csv"} <= names
    assert "ttm_ppg-ecg_c64_p32_m40_mae" in capsys.readouterr().out


def test_a_checkpoint_of_another_modality_is_refused_before_training(tiny_pretrain, capsys):
    assert main(["pretrain", "--config", str(tiny_pretrain), "--epochs", "1"]) == 0
    assert main(["pretrain", "--config", str(tiny_pretrain), "--epochs", "1", "--data", "synthetic:eeg",
                 "--n-subjects", "4", "--channels", "AF7,AF8,TP9,TP10"]) == 0
    assert main(["compare", "--checkpoints", "ttm_ppg-ecg_c64_p16_m40_mae,ttm_af7-af8-tp9-tp10_c64_p16_m40_mae",
                 "--n-subjects", "8", "--windows-per-subject", "6"]) == 2
    err = capsys.readouterr().err
    assert "ttm_af7-af8-tp9-tp10_c64_p16_m40_mae was pretrained on ['AF7', 'AF8', 'TP9', 'TP10']" in err
    assert "a different modality" in err
    assert not [r for r in finished_runs() if r.data.tags.get("biosig.command") == "finetune"]
    assert main(["compare", "--checkpoints", "mamba2_*"]) == 2
    assert "no registered pretrained model matches 'mamba2_*'" in capsys.readouterr().err


@pytest.mark.slow
def test_mlflow_run_compare_on_the_embedded_default(tiny_pretrain, workdir):
    import yaml

    from tests.test_log_dataset import _mlflow_run

    assert main(["pretrain", "--config", str(tiny_pretrain), "--epochs", "1"]) == 0
    shared = workdir / "ft.yaml"
    shared.write_text(yaml.safe_dump({"stage1_epochs": 1, "stage2_epochs": 1, "unfreeze_last_n": 1, "batch_size": 16}))
    done = _mlflow_run(workdir, "-e", "compare", "--experiment-name", "biosig", "-P", "checkpoints=ttm_ppg-ecg_*",
                       "-P", "n_subjects=8", "-P", "windows_per_subject=6", "-P", f"finetune_config={shared}",
                       "-P", f"data_dir={workdir / 'data'}")
    assert done.returncode == 0, done.stderr[-3000:]
    (parent,) = [r for r in finished_runs("FINISHED") if r.data.tags["biosig.command"] == "compare"]
    board = pd.read_csv(MlflowClient().download_artifacts(parent.info.run_id, "leaderboard.csv"))
    assert len(board) == 4 and not finished_runs("RUNNING")  # probe, finetune, two references


@pytest.mark.slow
def test_compare_cross_validates_every_row_on_the_same_folds(tiny_pretrain, workdir):
    assert main(["pretrain", "--config", str(tiny_pretrain), "--epochs", "1"]) == 0
    assert main(["compare", "--checkpoints", "ttm_ppg-ecg_c64_p16_m40_mae", "--modes", "probe", "--cv", "3",
                 "--reference", "features", "--n-subjects", "9", "--windows-per-subject", "4"]) == 0
    (parent,) = [r for r in finished_runs("FINISHED") if r.data.tags["biosig.command"] == "compare"]
    board = pd.read_csv(MlflowClient().download_artifacts(parent.info.run_id, "leaderboard.csv"))
    assert len(board) == 2 and set(board.checkpoint) == {"ttm_ppg-ecg_c64_p16_m40_mae", "reference: features"}
    assert {"split_manifest.csv"}.isdisjoint(a.path for a in MlflowClient().list_artifacts(parent.info.run_id))
    folds = [r for r in finished_runs("FINISHED") if "biosig.cv.fold" in r.data.tags]
    assert len(folds) == 3
