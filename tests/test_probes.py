"""Does pretraining help? The probe monitor of every pretraining run (frozen pooled embeddings -> logistic
regression with subject folds, against random initialisation and window features), the evidence on the
registered version, and label-efficiency curves in compare."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from biosig.cli import main
from biosig.data.splits import nested_subjects
from biosig.training.probe import logistic_probe, probe_epochs
from tests.helpers import TINY_FINETUNE, TINY_NAME, TINY_PRETRAIN, finished_runs, write_yaml


def test_the_logistic_probe_scores_held_out_subjects():
    rng = np.random.default_rng(0)
    subjects = np.repeat([f"S{i}" for i in range(10)], 20)
    labels = rng.integers(0, 2, len(subjects))
    informative = labels[:, None] * 2.0 + rng.normal(size=(len(labels), 4))
    noise = rng.normal(size=(len(labels), 4))
    good, chance = logistic_probe(informative, labels, subjects, 2), logistic_probe(noise, labels, subjects, 2)
    assert good.auroc > 0.9 and good.ci_low > chance.ci_high and abs(chance.auroc - 0.5) < 0.15
    assert good.separated_above(chance) and not chance.separated_above(good)


def test_probe_points_are_about_five_and_always_the_last_epoch():
    assert probe_epochs(30, 0) == {6, 12, 18, 24, 30} and probe_epochs(7, 3) == {3, 6, 7} and probe_epochs(1, 0) == {1}


def test_label_subsets_are_nested_and_hold_every_class():
    majority = {f"S{i:02d}": int(i % 3 == 0) for i in range(20)}
    subsets = [nested_subjects(majority, k, seed=4) for k in (2, 4, 8, 100)]
    assert [len(s) for s in subsets] == [2, 4, 8, 20]
    assert subsets[0] < subsets[1] < subsets[2] < subsets[3]
    assert {majority[s] for s in subsets[0]} == {0, 1}
    assert nested_subjects(majority, 4, seed=5) != subsets[1]


@pytest.mark.slow
def test_every_pretraining_run_probes_and_its_version_carries_the_evidence(workdir):
    config = write_yaml(workdir / "pretrain.yaml", {**TINY_PRETRAIN, "probe": "auto", "epochs": 3})
    assert main(["pretrain", "--config", str(config), "--system-metrics", "false"]) == 0
    client = MlflowClient()
    (run,) = finished_runs("FINISHED")
    curve = client.get_metric_history(run.info.run_id, "probe/auroc")
    assert sorted(m.step for m in curve) == [0, 1, 2, 3]  # random init, then about five points and the last
    for key in ("probe/auroc_init", "probe/auroc_features", "probe/auroc_ci_low", "probe/delta_init"):
        assert key in run.data.metrics, key
    assert run.data.metrics["probe/auroc_init"] == next(m.value for m in curve if m.step == 0)
    inputs = {d.dataset.name: d.tags for d in run.inputs.dataset_inputs}
    assert any("480windows" in name for name in inputs)  # the probe set is a dataset input of the run
    version = client.get_model_version(TINY_NAME, "1")
    assert version.tags["biosig.probe.verdict"] in {"beats_init", "not_separated", "below_init"}
    assert version.tags["biosig.probe.auroc_init"] and version.tags["biosig.probe.delta_init"].startswith(("+", "-"))
    assert "Linear probe on" in version.description and "random init" in version.description
    card = open(client.download_artifacts(run.info.run_id, "model_card.md")).read()
    assert "Does pretraining help?" in card and "| init |" in card and "digest" in card


def test_probe_none_measures_nothing(workdir):
    assert main(["pretrain", "--config", str(write_yaml(workdir / "p.yaml", TINY_PRETRAIN)),
                 "--system-metrics", "false"]) == 0
    (run,) = finished_runs("FINISHED")
    assert not [k for k in run.data.metrics if k.startswith("probe/")]
    assert "biosig.probe.verdict" not in MlflowClient().get_model_version(TINY_NAME, "1").tags


@pytest.mark.slow
def test_compare_draws_label_efficiency_curves_on_one_test_split(pretrained, workdir):
    data = TINY_FINETUNE[:TINY_FINETUNE.index("--stage1-epochs")]
    assert main(["compare", "--checkpoints", TINY_NAME, "--modes", "probe", "--reference", "features",
                 "--train-subjects", "2,all", "--seeds", "2", *data, "--system-metrics", "false"]) == 0
    (parent,) = [r for r in finished_runs("FINISHED") if r.data.tags["biosig.command"] == "compare"]
    client = MlflowClient()
    board = pd.read_csv(client.download_artifacts(parent.info.run_id, "leaderboard.csv"))
    assert len(board) == 2 * 2 * 2  # sizes x seeds x (probe row + features reference)
    assert sorted(set(board.train_subjects))[0] == 2 and {"auroc_ci_low", "auroc_ci_high"} <= set(board.columns)
    curve = pd.read_csv(client.download_artifacts(parent.info.run_id, "label_efficiency.csv"))
    assert len(curve) == 4 and set(curve.seeds) == {2}
    assert {"label_efficiency.png", "label_efficiency.md"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}


@pytest.mark.slow
def test_main_ends_with_a_label_efficiency_run_when_asked(tiny_pretrain, workdir):
    finetune = write_yaml(workdir / "finetune.yaml", {"n_subjects": 8, "windows_per_subject": 6, "stage1_epochs": 1,
                                                      "stage2_epochs": 1, "batch_size": 8})
    assert main(["main", "--pretrain-config", str(tiny_pretrain), "--finetune-config", str(finetune),
                 "--data", "synthetic:quality", "--reference", "features", "--train-subjects", "2,all",
                 "--system-metrics", "false"]) == 0
    runs = finished_runs("FINISHED")
    (parent,) = [r for r in runs if r.data.tags["biosig.command"] == "main"]
    (compare,) = [r for r in runs if r.data.tags["biosig.command"] == "compare"]
    assert compare.data.tags["mlflow.parentRunId"] == parent.info.run_id
    curve = pd.read_csv(MlflowClient().download_artifacts(compare.info.run_id, "label_efficiency.csv"))
    assert set(curve.model) == {f"{TINY_NAME}/1 (finetune)", "reference: features (features+sklearn)"}
