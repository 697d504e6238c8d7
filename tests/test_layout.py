"""The house rules, checked by the test command: import layers (import-linter), lint (ruff), and every
shipped config and policy file loads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from biosig.commands.finetune import FinetuneConfig
from biosig.commands.log_dataset import DatasetConfig
from biosig.commands.pretrain import PretrainConfig
from biosig.config import load_config
from biosig.data.preprocess import PreprocessConfig
from biosig.registry.policies import load_policy
from biosig.training.search_space import load_search_space

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_import_layers_hold():
    """pyproject.toml [tool.importlinter]: cli > commands > registry > training | tracking > models > config
    > data > files | secrets > errors; only tracking and registry import mlflow."""
    result = _run(str(BIN / "lint-imports"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]


def test_ruff_is_clean():
    result = _run(sys.executable, "-m", "ruff", "check", "biosig", "tests", "benchmarks", "entrypoints")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]


LOADERS = {
    "finetune_": lambda p: load_config(FinetuneConfig, p),
    "pretrain_": lambda p: load_config(PretrainConfig, p),
    "log_dataset_": lambda p: load_config(DatasetConfig, p),
    "preprocess_": PreprocessConfig.from_yaml,
    "search_space": lambda p: load_search_space(str(p), FinetuneConfig),
}


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path, monkeypatch):
    monkeypatch.chdir(ROOT)  # configs name files relative to the project
    loader = next((load for prefix, load in LOADERS.items() if path.name.startswith(prefix)), None)
    assert loader is not None, f"no loader for {path.name}: name it after its command"
    assert loader(path)


@pytest.mark.parametrize("path", sorted((ROOT / "registry_policies").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_policy_loads(path):
    assert load_policy(path).targets


def test_the_project_environment_names_a_whole_python_release_and_installs_the_project():
    """MLflow's virtualenv manager reads conda.yaml: `python=3.11` made it download the newest 3.11 release
    through pyenv, and `-e .` from its temporary copy left an editable install pointing at a deleted folder."""
    from mlflow.utils.environment import _PythonEnv

    env = _PythonEnv.from_conda_yaml(str(ROOT / "conda.yaml"))
    major, minor, patch = env.python.split(".")
    assert (int(major), int(minor)) == sys.version_info[:2] and patch.isdigit()
    assert env.dependencies == ["."]
