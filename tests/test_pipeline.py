"""`main`: dataset -> pretrain -> finetune(checkpoint=auto) as one parent run with child runs."""

import os

import pytest
import yaml
from mlflow.tracking import MlflowClient

from biosig.cli import main
from biosig.tracking.metric_names import logged_key
from tests.helpers import TINY_NAME, finished_runs
from tests.test_log_dataset import _mlflow_run


@pytest.fixture
def tiny_finetune(workdir):
    path = workdir / "finetune.yaml"
    path.write_text(yaml.safe_dump({"stage1_epochs": 1, "stage2_epochs": 1, "unfreeze_last_n": 1,
                                    "batch_size": 32}))
    return path


@pytest.mark.slow
def test_main_runs_the_whole_chain_as_child_runs(tiny_pretrain, tiny_finetune, capsys):
    assert main(["main", "--pretrain-config", str(tiny_pretrain), "--finetune-config", str(tiny_finetune)]) == 0
    out = capsys.readouterr().out
    assert "where to look:" in out and f"models:/{TINY_NAME}_finetuned/1" in out
    runs = finished_runs("FINISHED")
    (parent,) = [r for r in runs if r.data.tags["biosig.command"] == "main"]
    # the parent says what the pipeline found: name, headline metrics, description
    assert parent.data.tags["mlflow.runName"] == f"main → {TINY_NAME}_finetuned/1"
    assert {logged_key(k) for k in ("test_auroc", "test_f1", "reference.features.test_auroc",
                                    "reference.scratch.test_auroc")} <= set(parent.data.metrics)
    assert parent.data.tags["mlflow.note.content"].startswith("Pipeline on `")
    references = {r.data.tags["biosig.reference"]: r for r in runs if "biosig.reference" in r.data.tags}
    children = {r.data.tags["biosig.command"]: r for r in runs if r is not parent and r.data.tags.get(
        "biosig.reference") is None}
    assert set(children) == {"log_dataset", "pretrain", "finetune"}
    assert set(references) == {"features", "scratch"}  # main trains both references by default
    assert all(r.data.tags["mlflow.parentRunId"] == children["finetune"].info.run_id for r in references.values())
    assert "reference 'features' on the same test split" in out
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in children.values())
    assert children["finetune"].data.tags["biosig.parent.name"] == TINY_NAME
    assert children["finetune"].data.tags["biosig.dataset.digest"] == \
        children["log_dataset"].data.tags["biosig.dataset.digest"]
    assert MlflowClient().get_registered_model(f"{TINY_NAME}_finetuned").aliases == {"candidate": 1}
    assert not finished_runs("RUNNING")


@pytest.mark.slow
def test_mlflow_run_main_and_a_failing_finetune(tiny_pretrain, tiny_finetune, workdir):
    done = _mlflow_run(workdir, "-e", "main", "--experiment-name", "biosig", "-P", f"pretrain_config={tiny_pretrain}",
                       "-P", f"finetune_config={tiny_finetune}", "-P", f"data_dir={workdir / 'data'}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(finished_runs("FINISHED")) == 6  # main, log_dataset, pretrain, finetune + its two references
    bad = _mlflow_run(workdir, "-e", "finetune", "--experiment-name", "biosig", "-P", "checkpoint=ttm_nope",
                      "-P", f"data_dir={workdir / 'data'}")
    assert bad.returncode != 0
    (failed,) = finished_runs("FAILED")
    assert "no registered model named 'ttm_nope'" in failed.data.tags["biosig.error"]
    assert not finished_runs("RUNNING") and os.path.isdir(workdir / "data")


@pytest.mark.slow
def test_the_main_jobs_model_passes_the_shipped_staging_policy_but_not_production(workdir, capsys):
    """The README's default path end to end: main (real defaults) -> promote to staging passes; production
    is refused while the features reference beats the model on the same split (beats_reference)."""
    assert main(["main"]) == 0
    name = "ttm_ppg-ecg_c1024_p64_m40_mae_finetuned"
    assert main(["promote", "--model", name, "--to", "staging"]) == 0
    assert MlflowClient().get_registered_model(name).aliases["staging"] == 1
    capsys.readouterr()
    assert main(["promote", "--model", name, "--to", "production"]) == 1
    out = capsys.readouterr().out
    assert "beats_reference features test_auroc" in out and "rejected" in out
