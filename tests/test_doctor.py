"""`biosig doctor` and `resume=` after a kill -9: dead RUNNING runs, dataset digests, passwords in
params, leftover scratch folders."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from biosig.cli import main
from biosig.data import write_parquet
from biosig.data.synthetic import synthetic_cardio
from biosig.tracking.liveness import leftover_scratch
from biosig.tracking.tags import HEARTBEAT_TAG, HOST_TAG, PID_TAG
from tests.helpers import finished_runs


def _freeze_after_an_epoch(proc: subprocess.Popen, timeout_s: float = 180) -> str:
    """SIGSTOP the pretrain process at a moment when its last/ artifact is complete (weights and
    training state of the same epoch), so that the kill -9 that follows is not mid-upload. While the
    process is stopped only its artifact files are read, never the tracking database (a process stopped
    inside a SQLite write would hold the lock)."""
    deadline = time.time() + timeout_s
    while time.time() < deadline and proc.poll() is None:
        for run in finished_runs("RUNNING"):
            last = Path(run.info.artifact_uri.removeprefix("file://")) / "last"
            proc.send_signal(signal.SIGSTOP)
            if _complete_last(last):
                return run.info.run_id
            proc.send_signal(signal.SIGCONT)
        time.sleep(0.3)
    raise AssertionError(f"pretrain did not finish an epoch (exit {proc.poll()}): {proc.stderr.read()}")


def _complete_last(last: Path) -> bool:
    import json

    import torch

    if {p.name for p in last.glob("*")} != {"biosig.json", "model.safetensors", "training_state.pt"}:
        return False
    try:
        state = torch.load(last / "training_state.pt", weights_only=True)
        meta = json.loads((last / "biosig.json").read_text())
    except Exception:  # caught mid-write
        return False
    return meta["provenance"]["epoch"] == state["epoch"]


@pytest.mark.slow
def test_kill_9_is_found_by_doctor_and_closed_by_resume(workdir, tiny_pretrain, capsys):
    client = MlflowClient()
    proc = subprocess.Popen([sys.executable, "-m", "biosig.cli", "pretrain", "--config", str(tiny_pretrain),
                             "--epochs", "500"], cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "BIOSIG_HEARTBEAT_S": "1"})
    run_id = _freeze_after_an_epoch(proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    tags = client.get_run(run_id).data.tags
    assert tags[PID_TAG] == str(proc.pid) and tags[HOST_TAG] and float(tags[HEARTBEAT_TAG]) > 0
    assert any(f"-{proc.pid}-" in p.name for p in leftover_scratch())

    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert f"stale-run {run_id}: RUNNING but process {proc.pid} on" in out and "is gone" in out
    assert f"biosig-pretrain-{proc.pid}-" in out

    assert main(["pretrain", "--config", str(tiny_pretrain), "--epochs", "3", "--resume", run_id]) == 0
    interrupted = client.get_run(run_id)
    assert interrupted.info.status == "KILLED"
    assert interrupted.data.tags["biosig.error"].startswith("interrupted; continued by run ")
    assert main(["doctor", "--fix"]) == 0  # only the scratch folder was left; removed
    assert not any(f"-{proc.pid}-" in p.name for p in leftover_scratch())
    capsys.readouterr()
    assert main(["doctor"]) == 0
    assert "0 finding(s)" in capsys.readouterr().out


def test_doctor_closes_runs_whose_heartbeat_stopped_elsewhere(workdir, capsys):
    client = MlflowClient()
    experiment_id = client.create_experiment("remote")
    silent = client.create_run(experiment_id, tags={HOST_TAG: "node-17", PID_TAG: "4242",
                                                               HEARTBEAT_TAG: f"{time.time() - 3600:.0f}"})
    beating = client.create_run(experiment_id, tags={HOST_TAG: "node-18", PID_TAG: "4242",
                                                                HEARTBEAT_TAG: f"{time.time():.0f}"})
    # written before the biosig.process namespace: still judged by its heartbeat
    legacy = client.create_run(experiment_id, tags={"biosig.host": "node-19", "biosig.pid": "4242",
                                                    "biosig.heartbeat": f"{time.time() - 7200:.0f}"})
    assert HOST_TAG.startswith("biosig.process.") and PID_TAG.startswith("biosig.process.")
    assert main(["doctor", "--experiment", "remote"]) == 1
    out = capsys.readouterr().out
    assert f"{silent.info.run_id}: RUNNING but no heartbeat on node-17 for 60 min" in out
    assert f"{legacy.info.run_id}: RUNNING but no heartbeat on node-19 for 120 min" in out
    assert beating.info.run_id not in out
    assert main(["doctor", "--experiment", "remote", "--fix"]) == 0
    closed = client.get_run(silent.info.run_id)
    assert closed.info.status == "KILLED" and closed.data.tags["biosig.error"].startswith("closed by biosig doctor")
    assert client.get_run(beating.info.run_id).info.status == "RUNNING"
    assert main(["doctor", "--experiment", "nope"]) == 2
    assert "--experiment 'nope': no such experiment" in capsys.readouterr().err


def test_doctor_verifies_every_recorded_dataset_digest(workdir, capsys):
    out = workdir / "mine.parquet"
    assert main(["log-dataset", "--n_subjects", "2", "--windows_per_subject", "2", "--output", str(out)]) == 0
    assert main(["log-dataset", "--n_subjects", "2", "--windows_per_subject", "2", "--seed", "3"]) == 0
    assert main(["doctor"]) == 0
    (first,) = [r for r in finished_runs() if r.data.tags["biosig.dataset.uri"] == str(out.resolve())]
    other = synthetic_cardio(n_subjects=2, windows_per_subject=2, with_acc=True, seed=9)
    out.unlink()
    write_parquet(other, out)  # replaced behind biosig's back
    capsys.readouterr()
    assert main(["doctor"]) == 1
    report = capsys.readouterr().out
    assert f"dataset   {out.resolve()}: holds {other.digest[:12]}" in report and first.info.run_id in report
    out.unlink()
    assert main(["doctor"]) == 1
    assert f"{out.resolve()}: missing; recorded by run(s) {first.info.run_id}" in capsys.readouterr().out


def test_doctor_removes_runs_whose_params_hold_a_password(workdir, capsys):
    client = MlflowClient()
    with mlflow.start_run(experiment_id=mlflow.create_experiment("leaky")) as run:
        mlflow.log_param("storage", "postgresql://alice:hunter2@db/optuna")
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert f"secret    {run.info.run_id}: parameter(s) storage hold a password" in out and "hunter2" not in out
    assert main(["doctor", "--fix"]) == 0
    with pytest.raises(MlflowException):
        client.get_run(run.info.run_id)


def test_versions_of_runs_that_did_not_finish_are_found_and_removed(workdir, capsys):
    """kill -9 right after the version row appeared leaves a READY version of a KILLED run: an orphan."""
    client = MlflowClient()
    experiment = client.create_experiment("orphans")
    killed, finished = client.create_run(experiment), client.create_run(experiment)
    client.set_terminated(killed.info.run_id, "KILLED")
    client.set_terminated(finished.info.run_id, "FINISHED")
    client.create_registered_model("m")
    for run in (finished, killed):
        client.create_model_version("m", f"file://{workdir}", run_id=run.info.run_id)
    client.set_registered_model_alias("m", "candidate", "2")
    capsys.readouterr()
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert f"version 2 of m belongs to KILLED run {killed.info.run_id} and holds @candidate" in out
    assert "version 1 of m" not in out
    assert main(["doctor", "--fix", "--keep"]) == 0  # kept for inspection, no alias on it
    assert client.get_model_version("m", "2").tags["biosig.orphan"].startswith("KILLED run")
    assert "candidate" not in client.get_registered_model("m").aliases
    assert main(["doctor"]) == 0  # a kept orphan is no longer a finding
    assert main(["doctor", "--fix"]) == 0
    assert [str(v.version) for v in client.search_model_versions("name = 'm'")] == ["1"]
