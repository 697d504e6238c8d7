"""Helpers shared by the tests (fixtures live in conftest.py)."""

from __future__ import annotations


def finished_runs(status: str | None = None):
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return [r for r in runs if status is None or r.info.status == status]


#: A TTM small enough that pretraining takes about a second on one CPU thread.
TINY_PRETRAIN = {"n_subjects": 4, "windows_per_subject": 6, "context_length": 64, "patch_length": 16,
                 "d_model": 8, "num_layers": 2, "dropout": 0.0, "epochs": 2, "batch_size": 8,
                 "probe": "none"}  # the probe monitor has its own tests (test_probes.py)
TINY_NAME = "ttm_ppg-ecg_c64_p16_m40_mae"
TINY_FINETUNE = ["--data", "synthetic:quality", "--n-subjects", "8", "--windows-per-subject", "6",
                 "--stage1-epochs", "2", "--stage2-epochs", "2", "--unfreeze-last-n", "1", "--batch-size", "8"]


def write_yaml(path, keys: dict):
    """A config file of `keys` (what checkpoint=auto derives a pretrained name from)."""
    import yaml

    path.write_text(yaml.safe_dump(keys))
    return path


def run_pretrain(config_file):
    """Pretrain and register from `config_file`; returns the file for checkpoint=auto."""
    from biosig.cli import main

    assert main(["pretrain", "--config", str(config_file)]) == 0
    return config_file


def use_store_in(patch, root) -> None:
    """chdir into `root` and make its mlflow.db the tracking and registry store, through `patch` (a pytest
    MonkeyPatch): the environment for subprocesses and MLflow's module globals, which outlive a test."""
    import mlflow

    uri = f"sqlite:///{root / 'mlflow.db'}"
    patch.chdir(root)
    patch.setenv("MLFLOW_TRACKING_URI", uri)
    patch.delenv("MLFLOW_RUN_ID", raising=False)
    patch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)  # mlflow.set_experiment exports it
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metrics_of(run) -> dict[str, float]:
    """A run's metrics under the names code and policies use (`test/auroc` logged -> `test_auroc`)."""
    from biosig.tracking.metric_names import canonical_metrics

    return canonical_metrics(run.data.metrics)


def sizes_of(run) -> dict[str, int]:
    """A run's sizes (params `size.<name>`: windows, parameters) by name."""
    from biosig.tracking.metric_names import SIZE_PARAM_PREFIX

    return {k[len(SIZE_PARAM_PREFIX):]: int(v) for k, v in run.data.params.items() if k.startswith(SIZE_PARAM_PREFIX)}
