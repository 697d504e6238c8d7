"""A backbone added from outside biosig: examples/backbone_plugin is pip-installed (into a target folder on
PYTHONPATH, so the test environment itself is untouched) and goes pretrain -> finetune(checkpoint=auto) ->
promote -> served as a pyfunc in a fresh process, with no change to biosig."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NAME = "resnet1d_ppg-ecg_c64_p16_d8_l2_m40_mae"
PRETRAIN = {"arch": "resnet1d", "n_subjects": 4, "windows_per_subject": 6, "context_length": 64, "patch_length": 16,
            "d_model": 8, "num_layers": 2, "epochs": 2, "batch_size": 8, "backbone_options": "kernel_size=5",
            "system_metrics": False}
FINETUNE = ["--data", "synthetic:quality", "--n-subjects", "8", "--windows-per-subject", "6", "--stage1-epochs", "1",
            "--stage2-epochs", "1", "--unfreeze-last-n", "1", "--batch-size", "8", "--bootstrap", "0",
            "--system-metrics", "false"]


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("plugin")
    source = shutil.copytree(ROOT / "examples" / "backbone_plugin", work / "src",  # builds write into the tree
                             ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = work / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                           "--target", str(target), str(source)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return target


def biosig(workdir: Path, plugin_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(plugin_path), os.environ.get("PYTHONPATH")])),
           "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}"}
    env.pop("MLFLOW_RUN_ID", None)
    return subprocess.run([sys.executable, "-c", "import sys; from biosig.cli import main; sys.exit(main(sys.argv[1:]))",
                           *args], cwd=workdir, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_an_installed_plugin_backbone_goes_from_pretraining_to_serving(plugin_path, tmp_path):
    listed = biosig(tmp_path, plugin_path, "backbones")
    assert listed.returncode == 0 and "resnet1d   from biosig-resnet1d" in listed.stdout, listed.stdout + listed.stderr
    assert "backbone_options kernel_size= 7 (integer): width of every convolution" in listed.stdout  # its metadata
    helped = biosig(tmp_path, plugin_path, "pretrain", "--help")
    assert "Installed: resnet1d (kernel_size)." in " ".join(helped.stdout.split())

    (tmp_path / "pretrain.yaml").write_text(yaml.safe_dump(PRETRAIN))
    done = biosig(tmp_path, plugin_path, "pretrain", "--config", "pretrain.yaml")
    assert done.returncode == 0 and f"registered {NAME} version 1" in done.stdout, done.stderr[-3000:]

    done = biosig(tmp_path, plugin_path, "finetune", "--pretrain-config", "pretrain.yaml", *FINETUNE)
    assert done.returncode == 0 and f"registered {NAME}_finetuned version 1" in done.stdout, done.stderr[-3000:]
    assert f"finetune from {NAME} version 1 (resnet1d" in done.stdout  # checkpoint=auto found it by name

    policies = tmp_path / "policies.yaml"
    policies.write_text(yaml.safe_dump({"name": "plugin", "applies_to": ["resnet1d_*"],
                                        "targets": {"staging": {"metrics": ["test_auroc >= 0.0"]}}}))
    done = biosig(tmp_path, plugin_path, "promote", "--model", f"{NAME}_finetuned", "--to", "staging",
                  "--policies", str(policies))
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]

    code = ("import mlflow, numpy as np; from biosig.data.synthetic import synthetic_cardio; "
            "from biosig.registry.pyfunc import as_model_input; "
            "ws = synthetic_cardio(n_subjects=1, windows_per_subject=3, with_acc=True, window_s=10.0, seed=3); "
            f"m = mlflow.pyfunc.load_model('models:/{NAME}_finetuned@staging'); "
            "out = m.predict(as_model_input(ws.signals, ws.channels)); "
            "assert np.allclose(out.sum(axis=1), 1, atol=1e-5); print('SERVED', list(out.columns))")
    env = {**os.environ, "PYTHONPATH": str(plugin_path), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    served = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert served.returncode == 0 and "SERVED ['poor', 'good']" in served.stdout, served.stderr[-3000:]


def test_without_the_plugin_its_names_and_arch_are_explained(tmp_path, capsys):
    from biosig.cli import main

    assert main(["pretrain", "--arch", "resnet1d"]) == 2
    err = capsys.readouterr().err
    assert "no backbone 'resnet1d' is installed" in err and "installed: mamba2, tspulse, ttm" in err
