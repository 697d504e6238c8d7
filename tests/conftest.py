"""Shared fixtures: every test runs in its own directory with its own SQLite tracking store."""

from __future__ import annotations

import os
import tempfile

# One thread: PyTorch/BLAS step times swing 5x with two threads on 2-core machines
# (measured: TTM training fell from 237 to 13 windows/s under load).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TSFM_PYTHON_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
# Decoded-dataset and S3 caches of the test session live in a temporary folder, not in ~/.cache.
os.environ.setdefault("BIOSIG_CACHE_DIR", tempfile.mkdtemp(prefix="biosig-test-cache-"))

import numpy as np
import pytest

from biosig import backbones
from biosig.data.synthetic import synthetic_cardio, synthetic_eeg
from tests.helpers import TINY_PRETRAIN, free_port, run_pretrain, use_store_in, write_yaml


@pytest.fixture(autouse=True, scope="session")
def only_biosigs_own_backbones():
    """Tests see biosig's built-in backbones whatever else is installed (e.g. the README's plug-in example,
    `pip install -e examples/backbone_plugin`): messages that list the installed backbones, and tests of
    what happens without a plug-in, must not depend on the machine. Plug-in tests install theirs into a
    subprocess's PYTHONPATH, which this does not touch."""
    with pytest.MonkeyPatch.context() as patch:
        load = backbones._load
        patch.setattr(backbones, "_load", lambda: {arch: found for arch, found in load().items()
                                                   if found[1] == "biosig"})
        yield


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """cwd = a fresh directory whose mlflow.db is the tracking store."""
    import mlflow

    use_store_in(monkeypatch, tmp_path)
    yield tmp_path

    while mlflow.active_run():
        mlflow.end_run()


@pytest.fixture
def cardio():
    return synthetic_cardio(n_subjects=4, windows_per_subject=5, with_acc=True, window_s=2.0, seed=1)


@pytest.fixture
def eeg():
    return synthetic_eeg(n_subjects=3, parents_per_subject=2, subs_per_parent=3, window_s=1.0, seed=2)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def tiny_pretrain(workdir):
    return write_yaml(workdir / "pretrain.yaml", TINY_PRETRAIN)


@pytest.fixture(scope="session")
def pretrained_template(tmp_path_factory):
    """One tiny pretrain run (TINY_NAME version 1) in a store of its own, made once per test session."""
    root = tmp_path_factory.mktemp("pretrained-template")
    with pytest.MonkeyPatch.context() as patch:
        use_store_in(patch, root)
        run_pretrain(write_yaml(root / "pretrain.yaml", TINY_PRETRAIN))
    return root


@pytest.fixture
def pretrained(workdir, pretrained_template):
    """The tiny pretrain run, registered as TINY_NAME version 1, in this test's own store: a copy of the
    session's template with every path inside the store rewritten to this test's directory (seconds saved
    per test; the store is as if the run had happened here)."""
    if (workdir / "mlflow.db").exists():  # another fixture has logged here already: pretrain into it
        return run_pretrain(write_yaml(workdir / "pretrain.yaml", TINY_PRETRAIN))
    copy_store(pretrained_template, workdir)
    return workdir / "pretrain.yaml"


def copy_store(source, target) -> None:
    """Copy a test directory (SQLite store, artifacts, data) and rewrite the absolute paths it records."""
    import shutil
    import sqlite3

    for item in source.iterdir():
        if item.is_dir():
            shutil.copytree(item, target / item.name, dirs_exist_ok=True)
        else:
            shutil.copy2(item, target / item.name)
    with sqlite3.connect(target / "mlflow.db") as db:
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            for column in db.execute(f'PRAGMA table_info("{table}")').fetchall():
                if column[2].upper().startswith(("VARCHAR", "TEXT")):
                    db.execute(f'UPDATE "{table}" SET "{column[1]}" = replace("{column[1]}", ?, ?) '
                               f'WHERE "{column[1]}" LIKE ?', (str(source), str(target), f"%{source}%"))


@pytest.fixture
def s3(monkeypatch, tmp_path):
    """moto's S3 server over HTTP on a free port (a real S3 API, not an in-process mock); boto3 and
    MLflow reach it through MLFLOW_S3_ENDPOINT_URL. Yields a boto3 client with the bucket `models`."""
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "MLFLOW_S3_ENDPOINT_URL": endpoint,
                       "BIOSIG_CACHE_DIR": str(tmp_path / "cache")}.items():
        monkeypatch.setenv(key, value)
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket="models")
    client.endpoint = endpoint
    yield client
    server.stop()
