"""log_dataset command and run lifecycle against a real SQLite tracking store."""

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from biosig.cli import main
from biosig.commands import log_dataset as log_dataset_command
from biosig.data import read_parquet, write_parquet
from biosig.data.synthetic import synthetic_eeg
from biosig.tracking import datasets as datasets_module
from tests.helpers import finished_runs

REPO = Path(__file__).resolve().parents[1]


def only_run(status=None):
    runs = finished_runs(status)
    assert len(runs) == 1, [r.info.status for r in finished_runs()]
    return runs[0]


def test_log_dataset_records_dataset_input_profile_and_plots(workdir):
    assert main(["log-dataset", "--source", "synthetic:quality", "--n_subjects", "3",
                 "--windows-per-subject", "4", "--seed", "7", "--password", "x"]) == 2  # unknown key
    assert finished_runs() == []  # refused before any run was created

    assert main(["log-dataset", "--source", "synthetic:quality", "--n_subjects", "3",
                 "--windows-per-subject", "4", "--seed", "7"]) == 0
    run = only_run("FINISHED")
    name = "PPG_10s_accx-accy-accz-ppg-ecg_12windows_primary"
    (path,) = (workdir / "data").glob(f"{name}_*.parquet")
    ws = read_parquet(path)
    assert path.name == f"{name}_{ws.digest[:12]}.parquet"  # content-addressed
    (inp,) = run.inputs.dataset_inputs
    assert inp.dataset.name == name
    assert inp.dataset.digest == ws.digest[:16]
    assert str(path) in inp.dataset.source
    assert {t.key: t.value for t in inp.tags}["mlflow.data.context"] == "primary"
    tags = run.data.tags
    assert tags["biosig.dataset.digest"] == ws.digest and tags["biosig.command"] == "log_dataset"
    assert run.data.params["source"] == "synthetic:quality" and run.data.params["seed"] == "7"
    assert run.data.metrics["n_windows"] == 12 and run.data.metrics["n_subjects"] == 3
    client = MlflowClient()
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "dataset")}
    assert {"dataset/profile.json", "dataset/examples_quality_poor.png"} <= artifacts
    assert {a.path for a in client.list_artifacts(run.info.run_id, "run")} >= {"run/config.yaml", "run/environment.json"}
    profile = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/dataset/profile.json")
    assert profile["n_windows"] == 12 and set(profile["channels"]) == set(ws.channels)


def test_yaml_config_with_override(workdir):
    cfg = workdir / "eeg.yaml"
    cfg.write_text("source: synthetic:eeg\nn_subjects: 2\nwindows_per_subject: 4\nexperiment: eeg-data\n")
    assert main(["log-dataset", "--config", str(cfg), "--kind", "pretrain", "--output", "out/eeg.parquet"]) == 0
    ws = read_parquet(workdir / "out" / "eeg.parquet")
    assert ws.subject_name == "Participant" and ws.n_windows == 8
    run = only_run("FINISHED")
    assert mlflow.get_experiment(run.info.experiment_id).name == "eeg-data"
    assert run.data.tags["biosig.dataset.name"] == "EEG_8s_af7-af8-tp9-tp10_8windows_pretrain"


def test_a_missing_source_is_refused_before_any_run(workdir, capsys):
    assert main(["log-dataset", "--source", "recordings/missing.npz"]) == 2
    assert "config key 'source': source not found: recordings/missing.npz" in capsys.readouterr().err
    assert finished_runs() == []
    assert not (workdir / "data").exists()


def test_bad_npz_content_fails_run(workdir, cardio, capsys):
    signals = cardio.signals.copy()
    signals[0, 0, 0] = np.nan
    np.savez(workdir / "nan.npz", signals=signals, labels=cardio.labels)
    assert main(["log-dataset", "--source", "nan.npz", "--channels", ",".join(cardio.channels), "--fs", "125"]) == 2
    assert "window 0, channel ACC_X, sample 0" in capsys.readouterr().err
    assert only_run("FAILED")
    assert not (workdir / "data").exists()


def test_failure_after_write_removes_the_new_file(workdir, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("tracking store went away")

    monkeypatch.setattr(datasets_module, "log_windowset", broken)
    with pytest.raises(RuntimeError):
        main(["log-dataset", "--n_subjects", "2", "--windows_per_subject", "2"])
    run = only_run("FAILED")
    assert run.data.tags["biosig.error"] == "RuntimeError: tracking store went away"
    assert run.data.tags["mlflow.note.content"] == "**Failed**: RuntimeError: tracking store went away"
    assert run.data.tags["mlflow.runName"] == "log_dataset"
    assert list((workdir / "data").iterdir()) == []


def test_existing_output_is_kept_when_a_rerun_fails(workdir, cardio, monkeypatch):
    out = workdir / "keep.parquet"
    write_parquet(cardio, out)
    before = out.read_bytes()
    monkeypatch.setattr(log_dataset_command, "_log_profile", lambda *a: (_ for _ in ()).throw(ValueError("boom")))
    with pytest.raises(ValueError):
        main(["log-dataset", "--source", str(out), "--output", str(out)])
    assert out.read_bytes() == before


def test_datasets_are_never_replaced(workdir, capsys):
    """Another seed of the same shape gets its own file; every run's digest still matches its file;
    an explicit output holding other content is refused and left as it was."""
    for seed in (1, 2, 1):
        assert main(["log-dataset", "--n_subjects", "2", "--windows_per_subject", "2", "--seed", str(seed)]) == 0
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert len(runs) == 3 and len(list((workdir / "data").glob("*.parquet"))) == 2
    for run in runs:
        assert read_parquet(run.data.tags["biosig.dataset.uri"]).digest == run.data.tags["biosig.dataset.digest"]
    out = workdir / "mine.parquet"
    assert main(["log-dataset", "--n_subjects", "2", "--windows_per_subject", "2", "--output", str(out)]) == 0
    before = out.read_bytes()
    assert main(["log-dataset", "--n_subjects", "2", "--windows_per_subject", "2", "--seed", "5",
                 "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"config key 'output': {out} already holds dataset" in err and "never replaced" in err
    assert out.read_bytes() == before


def test_ctrl_c_ends_run_killed(workdir, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(datasets_module, "load_source", interrupt)
    assert main(["log-dataset"]) == 130
    assert only_run("KILLED").data.tags["biosig.error"].startswith("KeyboardInterrupt")


def test_sigterm_ends_run_killed_with_one_line_and_exit_143(workdir, monkeypatch, capsys):
    import signal

    monkeypatch.setattr(datasets_module, "load_source", lambda *a: os.kill(os.getpid(), signal.SIGTERM))
    assert main(["log-dataset"]) == 143
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == "biosig: terminated by SIGTERM; the run was ended KILLED"
    assert "Traceback" not in err
    assert only_run("KILLED").data.tags["biosig.error"] == "Terminated: terminated by SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler restored


def test_file_store_is_refused(workdir, capsys):
    assert main(["log-dataset", "--tracking_uri", str(workdir / "mlruns")]) == 2
    assert "is a file store" in capsys.readouterr().err


def _mlflow_run(workdir, *args):
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    return subprocess.run([str(mlflow_cli), "run", str(REPO), "--env-manager", "local", *args],
                          cwd=workdir, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_mlflow_run_entry_points(workdir):
    out = _mlflow_run(workdir, "-e", "log_dataset", "--experiment-name", "biosig",
                      "-P", "source=synthetic:eeg", "-P", "n_subjects=2",
                      "-P", "windows_per_subject=4", "-P", f"output_dir={workdir / 'data'}")
    assert out.returncode == 0, out.stderr[-3000:]
    run = only_run("FINISHED")
    assert run.data.params["n_subjects"] == "2"
    assert [e.name for e in MlflowClient().search_experiments()] == ["biosig", "Default"]  # no stray one
    assert mlflow.get_experiment(run.info.experiment_id).name == "biosig"
    assert run.inputs.dataset_inputs[0].dataset.name == "EEG_8s_af7-af8-tp9-tp10_8windows_primary"

    bad = _mlflow_run(workdir, "-e", "main", "-P", "good_fraction=2")
    assert bad.returncode != 0
    failed = finished_runs("FAILED")
    assert len(failed) == 1 and "good_fraction" in failed[0].data.tags["biosig.error"]
    assert not finished_runs("RUNNING")


def test_a_directory_of_files_skips_unreadable_ones_into_data_errors_csv(workdir, cardio):
    import csv

    folder = workdir / "recordings"
    folder.mkdir()
    halves = [cardio.take(np.flatnonzero(np.isin(cardio.subject, np.unique(cardio.subject)[i::2]))) for i in (0, 1)]
    write_parquet(halves[0], folder / "a.parquet")
    write_parquet(halves[1], folder / "b.parquet")
    (folder / "c.parquet").write_bytes(b"not parquet at all")
    write_parquet(synthetic_eeg(n_subjects=2, parents_per_subject=1, subs_per_parent=2, window_s=2.0), folder / "d.parquet")
    assert main(["log-dataset", "--source", str(folder)]) == 0
    run = only_run("FINISHED")
    assert run.data.tags["biosig.dataset.errors"] == "2"
    assert run.inputs.dataset_inputs[0].dataset.name.endswith(f"{cardio.n_windows}windows_primary")
    rows = list(csv.DictReader(open(MlflowClient().download_artifacts(run.info.run_id, "dataset/data_errors.csv"))))
    assert [Path(r["file"]).name for r in rows] == ["c.parquet", "d.parquet"]
    assert "cannot form one dataset" in rows[1]["error"]


def _small_tmpfs(path: Path, options: str) -> bool:
    """Mount a small tmpfs at `path` where this process may (root with mount(8)); False otherwise."""
    path.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True).returncode == 0


@pytest.fixture
def small_disks(tmp_path):
    """A full-ish (256 KiB) and a read-only file system. Where mounting is not allowed the same refusals
    are checked by `test_a_full_disk_is_one_line_naming_the_directory_and_the_bytes` (ENOSPC raised by hand);
    docs/operations.md gives the manual check."""
    full, readonly = tmp_path / "full", tmp_path / "readonly"
    if not (_small_tmpfs(full, "size=256k") and _small_tmpfs(readonly, "size=1m,ro")):
        pytest.skip("mount(8) is not allowed here: the ENOSPC test below covers the message")
    yield full, readonly
    for mount in (full, readonly):
        subprocess.run(["umount", str(mount)], capture_output=True)


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip() and " INFO mlflow." not in line]


def test_full_and_read_only_output_disks_are_one_line_and_leave_nothing(workdir, small_disks, capsys):
    full, readonly = small_disks
    cases = [("x.parquet", full, "no space left on the device (256.0 KiB free, about 3.8 MiB needed)"),
             ("x.parquet", readonly, "the file system is read-only"),
             ("corpus/", full / "corpus", "no space left on the device"),
             ("corpus/", readonly / "corpus", "the file system is read-only")]
    for name, directory, why in cases:
        capsys.readouterr()
        root = full if directory.parent == full or directory == full else readonly
        assert main(["log-dataset", "--output", f"{root}/{name}"]) == 2
        err = _error_lines(capsys.readouterr().err)
        assert len(err) == 1 and err[0].startswith(f"biosig: error: cannot write to {directory}: {why}"), err
        if name == "corpus/":  # a sharded build says what it kept and how to go on
            assert "the build stopped with 0 of 1 group(s) finished (kept: the same command resumes" in err[0]
        assert not finished_runs("RUNNING")
    assert [p.name for p in full.rglob("*") if p.is_file()] == ["_build.json"]  # no partial file, the plan kept


def test_a_full_disk_is_one_line_naming_the_directory_and_the_bytes(workdir, monkeypatch, capsys):
    import errno
    import shutil

    usage = shutil.disk_usage(workdir)
    with monkeypatch.context() as patched:
        patched.setattr(shutil, "disk_usage", lambda path: usage._replace(free=1000))
        assert main(["log-dataset", "--output", "data/x.parquet"]) == 2
    assert _error_lines(capsys.readouterr().err) == [
        f"biosig: error: cannot write to {workdir / 'data'}: no space left on the device (1000 bytes free, about "
        "3.8 MiB needed)"]
    assert not list((workdir / "data").glob("*"))

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("biosig.data.parquet_io.pq.write_table", no_space)
    assert main(["log-dataset", "--output", "data/y.parquet"]) == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert line.startswith(f"biosig: error: cannot write to {workdir / 'data'}: no space left on the device")
    assert not list((workdir / "data").glob("*")) and not finished_runs("RUNNING")


def test_the_experiment_opens_as_model_development_in_the_ui(workdir):
    """MLflow 3's UI shows an experiment without `mlflow.experimentKind` in its GenAI view (traces,
    evaluations); biosig's experiments are tagged as model development, and a kind someone chose is kept."""
    assert main(["log-dataset", "--n_subjects", "3", "--windows_per_subject", "2"]) == 0
    client = MlflowClient()
    assert client.get_experiment_by_name("biosig").tags["mlflow.experimentKind"] == "custom_model_development"
    other = client.create_experiment("chosen")
    client.set_experiment_tag(other, "mlflow.experimentKind", "genai_development")
    assert main(["log-dataset", "--n_subjects", "3", "--windows_per_subject", "2", "--experiment", "chosen"]) == 0
    assert client.get_experiment(other).tags["mlflow.experimentKind"] == "genai_development"
