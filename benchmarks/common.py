"""Shared set-up for the benchmarks: a throw-away SQLite store and a real (briefly) pretrained TTM."""

from __future__ import annotations

import logging
import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TSFM_PYTHON_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
logging.getLogger("mlflow").setLevel(logging.WARNING)

import mlflow  # noqa: E402

from biosig.commands.pretrain import PretrainConfig, run_pretrain  # noqa: E402
from biosig.config import load_config  # noqa: E402


def use_store(directory: Path) -> None:
    os.chdir(directory)
    uri = f"sqlite:///{directory / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)


def pretrained_checkpoint() -> str:
    """`runs:/…/checkpoint` of a one-epoch pretrain of the default PPG+ECG TTM (c1024, p128, d64)."""
    config = load_config(PretrainConfig, None, {"epochs": 1, "n_subjects": 4, "windows_per_subject": 8,
                                                "register": False, "experiment": "benchmarks"})
    return f"runs:/{run_pretrain(config).run_id}/checkpoint"
