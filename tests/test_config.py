import dataclasses
from typing import Literal

import pytest

from biosig.config import BaseConfig, load_config, require_range
from biosig.errors import ConfigError


@dataclasses.dataclass
class Example(BaseConfig):
    epochs: int = 3
    lr: float = 1e-3
    amp: bool = False
    channels: list[str] | None = None
    head: Literal["linear", "mlp"] = "linear"
    fs: float | None = None

    def validate(self):
        super().validate()
        require_range("lr", self.lr, 0, low_open=True)


def test_defaults_yaml_and_overrides_in_order(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("epochs: 5\nlr: 0.01\nchannels: [PPG, ECG]\n")
    cfg = load_config(Example, f, {"lr": "1e-4", "amp": "true", "head": "mlp", "fs": "125"})
    assert (cfg.epochs, cfg.lr, cfg.amp, cfg.channels, cfg.head, cfg.fs) == (5, 1e-4, True, ["PPG", "ECG"], "mlp", 125.0)
    assert load_config(Example, None, {"channels": "PPG,ECG", "fs": "none"}).channels == ["PPG", "ECG"]
    assert load_config(Example).fs is None


def test_unknown_key_names_key_and_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("epochs: 2\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'learning_rate' \(from .*bad.yaml\)"):
        load_config(Example, f)
    with pytest.raises(ConfigError, match=r"'bogus' \(from command line\)"):
        load_config(Example, None, {"bogus": "1"})


@pytest.mark.parametrize("key,value,expected", [
    ("epochs", "three", "must be an integer"),
    ("epochs", 2.5, "must be an integer"),
    ("epochs", True, "must be an integer"),
    ("lr", "fast", "must be a number"),
    ("lr", "nan", "must be a finite number, got 'nan'"),
    ("lr", float("inf"), "must be a finite number, got inf"),
    ("lr", "-Infinity", "must be a finite number"),
    ("amp", "maybe", "must be true or false"),
    ("head", "transformer", r"must be one of \['linear', 'mlp'\]"),
])
def test_wrong_types_name_the_key(tmp_path, key, value, expected):
    f = tmp_path / "typed.yaml"
    import yaml

    f.write_text(yaml.safe_dump({key: value}))
    with pytest.raises(ConfigError, match=rf"config key '{key}' \(from .*typed.yaml\) {expected}"):
        load_config(Example, f)


def test_range_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match=r"'lr' must be > 0"):
        load_config(Example, None, {"lr": "0"})
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(Example, tmp_path / "nope.yaml")
    bad = tmp_path / "broken.yaml"
    bad.write_text("epochs: [1\n")
    with pytest.raises(ConfigError, match="broken.yaml is not valid YAML"):
        load_config(Example, bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="list.yaml must hold a mapping"):
        load_config(Example, listy)


@pytest.mark.parametrize("args", [["--help"], ["finetune", "--help"], ["tune", "--help"], ["pretrain", "--help"]])
def test_help_imports_no_framework(args):
    """`biosig --help` and `biosig CMD --help` list commands and keys without importing torch, MLflow or
    scikit-learn (their import is what made help take seconds): configs live in biosig.commands.configs;
    a command's own module loads only when it runs."""
    import subprocess
    import sys

    code = (f"import sys; from biosig.cli import main; main({args!r}); "
            "print(sorted(m for m in ('torch', 'mlflow', 'sklearn', 'optuna', 'scipy') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
    assert ("doctor" if args == ["--help"] else "--seed INT") in result.stdout


def test_command_help_lines_come_from_the_config_fields(capsys):
    from biosig.cli import main

    assert main(["finetune", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--normalisation [auto|global|window] global: per-channel z-score fitted on train" in out
    assert "--lr FLOAT AdamW peak learning rate [number; default: 0.001]" in out
    assert "--reference LIST" in out and "each one of features, scratch" in out


def test_each_backbone_owns_its_keys_and_pretrain_help_lists_them_by_architecture(capsys):
    """The built-ins' own keys are typed fields of their specs' options dataclasses, each with a help line in
    its metadata; the pretrain config composes them, and --help puts them last, marked by architecture."""
    from biosig import backbones
    from biosig.cli import main
    from biosig.commands.configs import PretrainConfig
    from biosig.config import field_help

    fields = {f.name for f in dataclasses.fields(PretrainConfig)}
    for arch in ("ttm", "tspulse", "mamba2"):
        spec = backbones.get(arch)
        own = [f.name for f in dataclasses.fields(spec.options)]
        assert own and set(own) <= fields and set(own) == set(field_help(spec.options)), arch
        assert not set(own) & set(spec.keys), arch  # one home per key
    assert main(["pretrain", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--d_state, --d-state INT (mamba2 only) SSM state size [integer; default: 64]" in out
    assert "(ttm, tspulse only) width of each mixer MLP" in out and "--fuse_fft, --fuse-fft BOOL (tspulse only)" in out
    assert out.index("--probe_every") < out.index("--d_state") < out.index("--mode")  # shared keys first


def test_backbone_options_remain_a_spelling_of_a_builtin_key(tmp_path):
    from biosig.commands.configs import PretrainConfig

    config = load_config(PretrainConfig, None, {"arch": "mamba2", "backbone_options": "d_state=32,bidirectional=false"})
    assert (config.d_state, config.bidirectional) == (32, False)
    assert config.backbone_config()["d_state"] == 32 and config.backbone_config()["bidirectional"] is False
    ttm = load_config(PretrainConfig, None, {"backbone_options": "mode=mix_channel"})
    assert ttm.mode == "mix_channel" and ttm.model_name().endswith("_mix")  # the name agrees with the build
