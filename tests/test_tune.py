"""tune: Optuna trials as nested MLflow runs, pruning states, workers sharing a journal study, bad input."""

import subprocess
import sys

import optuna
import pytest
from mlflow.tracking import MlflowClient

from biosig.cli import main
from tests.helpers import TINY_FINETUNE, TINY_NAME, finished_runs

TUNE = ["tune", "--checkpoint", TINY_NAME, *TINY_FINETUNE]


def runs_of(command, status=None):
    return [r for r in finished_runs(status) if r.data.tags.get("biosig.command") == command]


def journal_study(workdir, name):
    from optuna.storages.journal import JournalFileBackend

    storage = optuna.storages.JournalStorage(JournalFileBackend(str(workdir / "optuna.journal")))
    return optuna.load_study(study_name=name, storage=storage)


@pytest.mark.slow
def test_trials_are_nested_runs_and_the_parent_summarises(pretrained, workdir):
    space = workdir / "space.yaml"
    space.write_text("head: [linear, mlp]\nweight_decay: {low: 1.0e-4, high: 1.0e-1, log: true}\n")
    assert main([*TUNE, "--n-trials", "3", "--study", "s1", "--search-space", str(space)]) == 0
    (parent,) = runs_of("tune", "FINISHED")
    trials = runs_of("tune_trial")
    assert len(trials) == 3 and all(t.data.tags["mlflow.parentRunId"] == parent.info.run_id for t in trials)
    assert sorted(t.data.tags["optuna.trial"] for t in trials) == ["0", "1", "2"]
    assert {t.data.tags["optuna.state"] for t in trials} <= {"COMPLETE", "PRUNED"}
    assert all(t.data.tags["optuna.study"] == "s1" for t in trials)
    assert len({t.data.params["lr"] for t in trials}) == 3 and all("head" in t.data.params for t in trials)
    assert len({t.data.tags["biosig.test.digest"] for t in trials}) == 1  # one split for every trial
    # set up as finetune sets up: the same record of how each trial's classifier was made
    assert all(t.data.tags["biosig.normalisation"] and "biosig.channel_mapping" in t.data.tags for t in trials)
    client = MlflowClient()
    first = next(t for t in trials if t.data.tags["optuna.trial"] == "0")  # nothing to prune it against
    assert first.data.tags["optuna.state"] == "COMPLETE"
    assert [m.step for m in client.get_metric_history(first.info.run_id, "val/auroc")] == [1, 2, 3, 4]
    assert parent.data.metrics["n_trials"] == 3 and "best.lr" in parent.data.params
    names = {a.path for a in client.list_artifacts(parent.info.run_id, "tune")}
    assert {"tune/trials.csv", "tune/history.png", "tune/param_importances.json"} <= names
    study = journal_study(workdir, "s1")
    assert len(study.trials) == 3 and study.best_trial.user_attrs["mlflow_run_id"] in {
        t.info.run_id for t in trials}


@pytest.mark.slow
def test_two_processes_on_one_study_lose_and_duplicate_nothing(pretrained, workdir):
    args = [sys.executable, "-m", "biosig.cli", *TUNE, "--n-trials", "2", "--study", "shared", "--pruner", "none"]
    procs = [subprocess.Popen([*args, "--seed", str(seed)], cwd=workdir, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for seed in (1, 2)]
    for p in procs:
        assert p.wait(timeout=600) == 0, p.stderr.read()[-2000:]
    study = journal_study(workdir, "shared")
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    trial_runs = runs_of("tune_trial", "FINISHED")
    assert sorted(r.data.tags["optuna.trial"] for r in trial_runs) == ["0", "1", "2", "3"]
    assert {t.user_attrs["mlflow_run_id"] for t in study.trials} == {r.info.run_id for r in trial_runs}


@pytest.mark.slow
def test_n_jobs_workers_log_under_one_parent(pretrained, workdir, monkeypatch):
    import tempfile

    scratch = workdir / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    assert main([*TUNE, "--n-trials", "3", "--n-jobs", "2", "--study", "jobs", "--pruner", "none"]) == 0
    assert not list(scratch.glob("biosig-tune-*"))  # the workers' folders are gone (they held the URIs)
    (parent,) = runs_of("tune", "FINISHED")
    trials = runs_of("tune_trial", "FINISHED")
    assert len(trials) == 3 and {t.data.tags["mlflow.parentRunId"] for t in trials} == {parent.info.run_id}
    assert len(journal_study(workdir, "jobs").trials) == 3


@pytest.mark.slow
def test_a_failing_trial_is_recorded_and_the_study_goes_on(pretrained, workdir, monkeypatch):
    import biosig.commands.tune as search

    real, calls = search.build_classifier, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("out of memory in trial 1")
        return real(*args, **kwargs)

    monkeypatch.setattr(search, "build_classifier", flaky)
    assert main([*TUNE, "--n-trials", "3", "--study", "flaky", "--pruner", "none"]) == 0
    states = [t.state.name for t in journal_study(workdir, "flaky").trials]
    assert states == ["COMPLETE", "FAIL", "COMPLETE"]
    (failed,) = runs_of("tune_trial", "FAILED")
    assert failed.data.tags["optuna.state"] == "FAIL" and "out of memory" in failed.data.tags["biosig.error"]
    assert runs_of("tune", "FINISHED")[0].data.metrics["n_failed"] == 1


@pytest.mark.slow
def test_register_best_refits_through_finetune(pretrained):
    assert main([*TUNE, "--n-trials", "2", "--pruner", "none", "--register-best", "true"]) == 0
    (refit,) = runs_of("finetune", "FINISHED")
    (parent,) = runs_of("tune", "FINISHED")
    assert refit.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert refit.data.params["lr"] == parent.data.params["best.lr"]
    assert MlflowClient().get_registered_model(f"{TINY_NAME}_finetuned").aliases == {"candidate": 1}


@pytest.mark.parametrize("args, message", [
    (["--selection-metric", "accuracy"], "'selection_metric' .* must be one of"),
    (["--lr-min", "1e-3", "--lr-max", "1e-4"], r"learning-rate range .* is empty or inverted"),
    (["--n-trials", "0"], "'n_trials' must be >= 1"),
    (["--storage", "postgresql://nobody@127.0.0.1:1/nowhere"], "config key 'storage': cannot open"),
    (["--search-space", "missing.yaml"], "config key .search_space.: file not found: missing.yaml"),
])
def test_bad_input_fails_before_any_trial(workdir, args, message, capsys):
    assert main([*TUNE, *args]) == 2
    assert __import__("re").search(message, capsys.readouterr().err)
    assert runs_of("tune_trial") == []


def test_search_space_file_errors_name_the_key(workdir, capsys):
    space = workdir / "space.yaml"
    for text, message in (("unfreeze_depth: [1, 2]\n", "'unfreeze_depth' cannot be searched here"),
                          ("head_dropout: {low: 0.5, high: 0.1}\n", "'head_dropout' needs numbers low < high"),
                          ("weight_decay: {low: 0, high: 0.1, log: true}\n", "has log: true, so low must be > 0")):
        space.write_text(text)
        assert main([*TUNE, "--search-space", str(space)]) == 2
        assert message in capsys.readouterr().err
    assert runs_of("tune") == []
