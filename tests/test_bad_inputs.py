"""Every bad input is one line, exit 2, and nothing is left behind.

One table across all commands. For each row: the exit code, exactly one line on stderr that names the
culprit, no traceback, no new or changed file under the data folder, no run left RUNNING and no new
registered model version. The world (a registered pretrained and fine-tuned model, a dataset and a set
of broken files) is built once for the module.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlflow
import numpy as np
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from biosig.cli import main
from biosig.data import write_parquet
from biosig.data.synthetic import synthetic_cardio, synthetic_eeg
from tests.helpers import TINY_FINETUNE, TINY_NAME, TINY_PRETRAIN, use_store_in, write_yaml

FINETUNED = f"{TINY_NAME}_finetuned"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-inputs")
    with pytest.MonkeyPatch.context() as mp:
        use_store_in(mp, root)
        pretrain = write_yaml(root / "pretrain.yaml", TINY_PRETRAIN)
        assert main(["pretrain", "--config", str(pretrain)]) == 0
        assert main(["finetune", "--pretrain-config", str(pretrain), *TINY_FINETUNE, "--bootstrap", "0"]) == 0
        _broken_files(root)
        yield root
        while mlflow.active_run():
            mlflow.end_run()


def _broken_files(root: Path) -> None:
    (root / "inputs").mkdir()
    inputs = root / "inputs"
    (inputs / "garbage.npz").write_bytes(os.urandom(512))
    (inputs / "text.parquet").write_text("not parquet at all\n")
    (inputs / "notes.txt").write_text("hello\n")
    (inputs / "afile").write_text("a file, not a folder\n")
    (inputs / "list.yaml").write_text("- a\n- b\n")
    (inputs / "invalid.yaml").write_text("key: [unclosed\n")
    (inputs / "policy_bad.yaml").write_text("applies_to: '*'\ntargets:\n  staging:\n    metrics: ['test_auroc => 0.5']\n")
    (inputs / "space.yaml").write_text("unknown_key: {low: 1, high: 2}\n")
    (inputs / "manifest_unknown.csv").write_text("subject,split\nnobody,train\n")
    (inputs / "manifest_badsplit.csv").write_text("subject,split\nS000,holdout\n")
    (inputs / "manifest_columns.csv").write_text("who,where\nS000,train\n")
    two = synthetic_cardio(n_subjects=2, windows_per_subject=3, with_acc=True, window_s=2.0, seed=3)
    write_parquet(two, inputs / "two_subjects.parquet")
    _issue_29_files(inputs)
    one_class = synthetic_cardio(n_subjects=4, windows_per_subject=3, with_acc=True, window_s=2.0, seed=4)
    one_class.labels[:] = 0
    write_parquet(one_class, inputs / "one_class.parquet")
    write_parquet(synthetic_eeg(n_subjects=3, parents_per_subject=1, subs_per_parent=2, window_s=1.0, seed=5),
                  inputs / "eeg.parquet")
    other = synthetic_cardio(n_subjects=3, windows_per_subject=2, with_acc=True, window_s=2.0, seed=6)
    write_parquet(other, inputs / "occupied.parquet")
    nan = synthetic_cardio(n_subjects=3, windows_per_subject=2, with_acc=True, window_s=2.0, seed=7)
    np.savez(inputs / "nan.npz", signals=np.where(np.arange(nan.signals.size).reshape(nan.signals.shape) == 5,
                                                  np.nan, nan.signals), labels=nan.labels)
    checkpoint = Path(MlflowClient().download_artifacts(
        MlflowClient().get_model_version(TINY_NAME, "1").run_id, "checkpoint", str(inputs)))
    for name, edit in {"truncated": "truncate", "no_weights": "drop_weights", "no_keys": "drop_keys",
                       "not_json": "garble_json"}.items():
        target = inputs / f"ckpt_{name}"
        target.mkdir()
        for f in checkpoint.iterdir():
            (target / f.name).write_bytes(f.read_bytes())
        weights, meta = target / "model.safetensors", target / "biosig.json"
        if edit == "truncate":
            weights.write_bytes(weights.read_bytes()[:200])
        elif edit == "drop_weights":
            weights.unlink()
        elif edit == "drop_keys":
            data = json.loads(meta.read_text())
            del data["channels"], data["fs"]
            meta.write_text(json.dumps(data))
        else:
            meta.write_text("{ not json")


def _issue_29_files(inputs: Path) -> None:
    """Inputs that were tracebacks or silently accepted before (issue 29)."""
    ws = synthetic_cardio(n_subjects=8, windows_per_subject=4, with_acc=True, window_s=2.0, seed=8)
    np.savez(inputs / "per_channel_fs.npz", signals=ws.signals, labels=ws.labels, channels=np.array(ws.channels),
             fs=np.array([125.0, 125.0, 125.0, 125.0, 250.0]))
    np.savez(inputs / "one_sample.npz", signals=ws.signals[:, :, :1], labels=ws.labels,
             channels=np.array(ws.channels), fs=np.array(125.0))
    table = pq.read_table(write_parquet(ws, inputs / "rates.parquet"))
    meta = json.loads(table.schema.metadata[b"biosig"])
    meta["fs"] = dict.fromkeys(ws.channels, 125) | {"ECG": 250}
    pq.write_table(table.replace_schema_metadata({**table.schema.metadata, b"biosig": json.dumps(meta).encode()}),
                   inputs / "per_channel_fs.parquet")
    seven_nine = synthetic_cardio(n_subjects=8, windows_per_subject=4, with_acc=True, window_s=2.0, seed=9)
    seven_nine.labels[:] = np.where(seven_nine.labels == 1, 9, 7)
    seven_nine.class_names = []
    write_parquet(seven_nine, inputs / "labels_7_9.parquet")
    (inputs / "latin1.yaml").write_bytes("epochs: 2\n# caf\xe9\n".encode("latin-1"))
    (inputs / "twice.yaml").write_text("epochs: 2\nlr: 0.001\nepochs: 3\n")
    (inputs / "empty.csv").write_text("")
    (inputs / "header_only.csv").write_text("subject,split\n")
    (inputs / "empty.pt").write_bytes(b"")


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    data = root / "data"
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in data.rglob("*")} if data.exists() else {}


def _state() -> tuple[int, int]:
    client = MlflowClient()
    experiments = [e.experiment_id for e in client.search_experiments()]
    running = len(client.search_runs(experiments, "attributes.status = 'RUNNING'"))
    versions = sum(len(client.search_model_versions(f"name = '{m.name}'")) for m in client.search_registered_models())
    return running, versions


IN = "inputs/"
#: (command line, a fragment of the one line that must name the culprit); exit code 2 unless a third item.
CASES: list[tuple[list[str], str]] = [
    # log-dataset
    (["log-dataset", "--source", "nope.parquet"], "config key 'source': source not found: nope.parquet"),
    (["log-dataset", "--source", "synthetic:nope"], "unknown synthetic source 'synthetic:nope'"),
    (["log-dataset", "--source", IN + "garbage.npz"], "garbage.npz: not a NumPy .npz archive"),
    (["log-dataset", "--source", IN + "text.parquet"], "cannot read inputs/text.parquet as parquet"),
    (["log-dataset", "--source", IN + "notes.txt"], "unsupported source file type '.txt'"),
    (["log-dataset", "--source", "muse:" + IN + "afile"], "muse: needs a directory"),
    (["log-dataset", "--source", "muse:" + IN + "missing_dir"], "source not found: inputs/missing_dir"),
    (["log-dataset", "--source", IN + "nan.npz", "--channels", "ACC_X,ACC_Y,ACC_Z,PPG,ECG", "--fs", "125"],
     "window 0, channel ACC_X, sample 5"),
    (["log-dataset", "--source", IN + "eeg.parquet", "--output", IN + "occupied.parquet"],
     "config key 'output': inputs/occupied.parquet already holds dataset"),
    (["log-dataset", "--good_fraction", "2"], "config key 'good_fraction' must be in"),
    (["log-dataset", "--n_subjects", "-1"], "config key 'n_subjects' must be > 0, got -1"),
    (["log-dataset", "--n_subjects", "abc"], "config key 'n_subjects' (from command line) must be an integer"),
    (["log-dataset", "--output", "out.csv"], "config key 'output' must end in .parquet"),
    (["log-dataset", "--kind", "Bad Kind"], "config key 'kind' must be lower-case"),
    (["log-dataset", "--missing_acc", "drop"], "config key 'missing_acc' (from command line) must be one of"),
    (["log-dataset", "--preprocess", "missing.yaml"], "config key 'preprocess': file not found: missing.yaml"),
    (["log-dataset", "--config", "missing.yaml"], "config file not found: missing.yaml"),
    (["log-dataset", "--config", IN + "list.yaml"], "must hold a mapping"),
    (["log-dataset", "--config", IN + "invalid.yaml"], "is not valid YAML"),
    (["log-dataset", "--tracking-uri", "http://alice:hunter2@localhost:5000"],
     "'tracking_uri' (from command line) holds a password"),
    (["log-dataset", "--tracking-uri", "file:///tmp/mlruns"], "is a file store"),
    (["log-dataset", "--tracking-uri", "sqlite:////nonexistent/dir/mlflow.db"], "the folder /nonexistent/dir does not exist"),
    (["log-dataset", "--tracking-uri", f"sqlite:///{IN}afile/mlflow.db"], "does not exist (or is a file)"),
    (["log-dataset", "--experiment", ""], "experiment must not be empty"),
    (["log-dataset", "--seed", "1.5"], "config key 'seed' (from command line) must be an integer"),
    (["log-dataset", "--no-such-key", "x"], "No such option '--no-such-key'"),
    # prepare-splits
    (["prepare-splits", "--data", "missing.parquet"], "config key 'data': source not found: missing.parquet"),
    (["prepare-splits", "--cv", "1"], "config key 'cv' must be 0"),
    (["prepare-splits", "--val_fraction", "0"], "config key 'val_fraction' must be in"),
    (["prepare-splits", "--test_fraction", "1"], "config key 'test_fraction' must be in"),
    (["prepare-splits", "--data", IN + "two_subjects.parquet"], "has 2 subject(s)"),
    # pretrain
    (["pretrain", "--epochs", "0"], "config key 'epochs'"),
    (["pretrain", "--lr", "nan"], "config key 'lr' (from command line) must be a finite number, got 'nan'"),
    (["pretrain", "--lr", "inf"], "must be a finite number, got 'inf'"),
    (["pretrain", "--mask_ratio", "1.5"], "config key 'mask_ratio'"),
    (["pretrain", "--context_length", "0"], "config key 'context_length': 0 holds fewer than 2 patches"),
    (["pretrain", "--arch", "tspulse", "--backbone-options", "depth=3"],
     "config key 'backbone_options': 'depth=3' is not key=value with a key of arch tspulse "
     "(its options: expansion_factor, fuse_fft, mode)"),
    (["pretrain", "--arch", "tspulse", "--backbone-options", "fuse_fft=maybe"],
     "config key 'backbone_options fuse_fft' (from backbone_options) must be true or false"),
    (["finetune", "--adaptation", "lora", "--stage2-epochs", "0"], "config key 'adaptation' lora trains its adapters in stage 2"),
    (["pretrain", "--arch", "lstm"], "config key 'arch': no backbone 'lstm' is installed; installed: mamba2, tspulse, ttm"),
    (["pretrain", "--channels", "PPG,FOO"], "FOO"),
    (["pretrain", "--resume", "0123abcd", "--config", "pretrain.yaml"], "config key 'resume': no run with id '0123abcd'"),
    (["pretrain", "--data", IN + "eeg.parquet", "--config", "pretrain.yaml"], "PPG"),
    # finetune
    (["finetune", "--checkpoint", "ttm_nothing_c64_p16_m40_mae"], "ttm_nothing_c64_p16_m40_mae"),
    (["finetune", "--checkpoint", IN + "missing_dir/"], "checkpoint path not found: inputs/missing_dir"),
    (["finetune", "--checkpoint", IN + "ckpt_truncated", *TINY_FINETUNE[:6]], "model.safetensors cannot be read"),
    (["finetune", "--checkpoint", IN + "ckpt_no_weights", *TINY_FINETUNE[:6]], "has no model.safetensors"),
    (["finetune", "--checkpoint", IN + "ckpt_no_keys", *TINY_FINETUNE[:6]], "lacks the key(s) channels, fs"),
    (["finetune", "--checkpoint", IN + "ckpt_not_json", *TINY_FINETUNE[:6]], "biosig.json is not valid JSON"),
    (["finetune", "--checkpoint", FINETUNED, *TINY_FINETUNE[:6]], "is a finetuned model"),
    (["finetune", "--split_manifest", "missing.csv"], "config key 'split_manifest': file not found: missing.csv"),
    (["finetune", "--pretrain_config", "pretrain.yaml", *TINY_FINETUNE[:6], "--split_manifest",
      IN + "manifest_unknown.csv"], "does not assign 8 subject(s) of"),
    (["finetune", "--pretrain_config", "pretrain.yaml", *TINY_FINETUNE[:6], "--split_manifest",
      IN + "manifest_badsplit.csv"], "unknown split value(s) ['holdout']"),
    (["finetune", "--pretrain_config", "pretrain.yaml", *TINY_FINETUNE[:6], "--split_manifest",
      IN + "manifest_columns.csv"], "must have the columns subject,split"),
    (["finetune", "--cv", "1"], "config key 'cv' must be empty, an integer >= 2"),
    (["finetune", "--cv", "3", "--split_manifest", IN + "manifest_unknown.csv"], "exclude each other"),
    (["finetune", "--class_weights", "1,x"], "class_weights"),
    (["finetune", "--promote", "staging", "--register", "false"], "config key 'promote' needs register=true"),
    (["finetune", "--stage1_epochs", "0", "--stage2_epochs", "0"], "nothing to train"),
    (["finetune", "--head_dropout", "1"], "config key 'head_dropout' must be in"),
    (["finetune", "--pretrain_config", "missing.yaml"], "config key 'pretrain_config': file not found"),
    (["finetune", "--pretrain_config", "pretrain.yaml", "--data", IN + "one_class.parquet"], "class"),
    (["finetune", "--pretrain_config", "pretrain.yaml", "--data", IN + "eeg.parquet"], "channel"),
    # tune
    (["tune", "--storage", f"{IN}afile/optuna.journal"], "config key 'storage': "),
    (["tune", "--n_trials", "0"], "config key 'n_trials' must be >= 1"),
    (["tune", "--lr_min", "1e-2", "--lr_max", "1e-3"], "is empty or inverted"),
    (["tune", "--search_space", "missing.yaml"], "config key 'search_space': file not found"),
    (["tune", "--pretrain_config", "pretrain.yaml", *TINY_FINETUNE[:6], "--search_space", IN + "space.yaml",
      "--n_trials", "1"], "unknown_key"),
    (["tune", "--n_jobs", "0"], "config key 'n_jobs' must be >= 1"),
    (["tune", "--cv", "3"], "config key 'cv' does not apply to tune"),
    (["tune", "--storage", "postgresql://alice:hunter2@127.0.0.1/optuna"], "BIOSIG_OPTUNA_STORAGE"),
    # evaluate
    (["evaluate"], "model"),
    (["evaluate", "--model", "nothing_here"], "nothing_here"),
    (["evaluate", "--model", f"{TINY_NAME}/1"], f"{TINY_NAME}/1 is a pretrained model, not a fine-tuned classifier"),
    (["evaluate", "--model", f"{FINETUNED}/7"], f"registered model '{FINETUNED}' has no version 7"),
    (["evaluate", "--model", FINETUNED, "--overlap", "1"], "config key 'overlap'"),
    (["evaluate", "--model", FINETUNED, "--calibration", "magic"], "config key 'calibration' (from command line) must be one of"),
    (["evaluate", "--model", FINETUNED, "--data", "missing.parquet"], "config key 'data': source not found"),
    # compare
    (["compare"], "checkpoints"),
    (["compare", "--checkpoints", "nothing_*"], "nothing_*"),
    (["compare", "--checkpoints", TINY_NAME, "--modes", "guess"], "config key 'modes' (from command line) must be one of"),
    (["compare", "--checkpoints", TINY_NAME, "--finetune_config", "missing.yaml"],
     "config key 'finetune_config': file not found"),
    # promote
    (["promote", "--model", "nothing_here"], "nothing_here"),
    (["promote", "--model", FINETUNED, "--version", "99"], "99"),
    (["promote", "--model", FINETUNED, "--policies", "missing_dir"], "config key 'policies': file not found"),
    (["promote", "--model", FINETUNED, "--policies", IN + "policy_bad.yaml"], "policy_bad.yaml:4: unknown operator '=>'"),
    (["promote", "--model", FINETUNED, "--to", "prod"], "config key 'to' (from command line) must be one of"),
    # issue 29: tracebacks and silent acceptances before
    (["log-dataset", "--source", IN + "per_channel_fs.npz"], "per_channel_fs.npz stores per-channel sampling rates"),
    (["log-dataset", "--source", IN + "per_channel_fs.parquet"],
     "per_channel_fs.parquet stores per-channel sampling rates"),
    (["log-dataset", "--source", IN + "one_sample.npz"], "have 1 sample(s): a window needs at least 8"),
    (["log-dataset", "--window_s", "1e9"], "config key 'window_s' must be in (0, 3600.0]"),
    (["log-dataset", "--windows_per_subject", "0"], "config key 'windows_per_subject' must be > 0"),
    (["log-dataset", "--n_subjects", "0"], "config key 'n_subjects' must be > 0"),
    (["log-dataset", "--source", IN + "nan.npz", "--fs", "0"], "config key 'fs' must be > 0"),
    (["log-dataset", "--fs", "125"], "config key 'fs' describes .npz files"),
    (["log-dataset", "--channels", "PPG,ECG"], "config key 'channels' describes .npz files"),
    (["log-dataset", "--source", IN + "nan.npz", "--channels", "PPG,PPG"], "duplicated channel name(s) ['PPG']"),
    (["log-dataset", "--source", IN + "nan.npz", "--channels", ""], "config key 'channels' is empty"),
    (["pretrain", "--config", IN + "latin1.yaml"], "latin1.yaml is not UTF-8 text (byte 15"),
    (["pretrain", "--config", IN + "twice.yaml"], "key 'epochs' is given twice (lines 1 and 3)"),
    (["finetune", "--config", IN + "twice.yaml"], "key 'epochs' is given twice"),
    (["promote", "--model", FINETUNED, "--policies", IN + "latin1.yaml"], "latin1.yaml is not UTF-8 text"),
    (["pretrain", "--epochs", "99999999999999999999999"], "config key 'epochs' (from command line) is out of range"),
    (["pretrain", "--checkpoint_every", "5"], "config key 'checkpoint_every' saves mid-epoch positions of a streamed"),
    (["pretrain", "--epochs", "1000000"], "config key 'epochs' must be in [1, 100000]"),
    (["finetune", "--stage2-epochs", "1000000"], "config key 'stage2_epochs' must be in [0, 100000]"),
    (["finetune", "--channels", ""], "config key 'channels' is empty"),
    (["finetune", "--split_manifest", IN + "empty.csv"], "split manifest inputs/empty.csv cannot be read as CSV"),
    (["finetune", "--split_manifest", IN + "header_only.csv"], "split manifest inputs/header_only.csv lists no subjects"),
    (["finetune", "--checkpoint", TINY_NAME, "--data", IN + "labels_7_9.parquet"],
     "has labels [7, 9] and no class names: classes [0, 1, 2, 3, 4, 5, 6, 8] have no window"),
    (["finetune", "--checkpoint", "s3://no-such-bucket/checkpoint"], "cannot download checkpoint s3://no-such-bucket"),
    (["evaluate", "--model", FINETUNED, "--data", IN + "per_channel_fs.npz"], "stores per-channel sampling rates"),
    (["log-dataset", "--window_s", "0"], "config key 'window_s' must be in (0, 3600.0]"),
    (["log-dataset", "--window_s", "-3"], "config key 'window_s' must be in (0, 3600.0]"),
    (["log-dataset", "--source", IN + "nan.npz", "--fs", "-125"], "config key 'fs' must be > 0"),
    (["log-dataset", "--n_subjects", "-2"], "config key 'n_subjects' must be > 0"),
    (["finetune", "--channels", "ECG,ECG"], "duplicated channel name(s) ['ECG']"),
    (["finetune", "--channels", "PPG,XYZ"], "unknown channel name(s) ['XYZ']"),
    (["finetune", "--stage1-epochs", "99999999999999999999999"], "config key 'stage1_epochs' (from command line) is out"),
    (["finetune", "--config", IN + "latin1.yaml"], "latin1.yaml is not UTF-8 text"),
    (["tune", "--checkpoint", TINY_NAME, "--search-space", IN + "latin1.yaml"], "latin1.yaml is not UTF-8 text"),
    (["tune", "--checkpoint", TINY_NAME, "--search-space", IN + "twice.yaml"], "key 'epochs' is given twice"),
    (["prepare-splits", "--config", IN + "twice.yaml"], "key 'epochs' is given twice"),
    (["doctor", "--stale-after", "inf"], "'--stale-after': must be a finite number, got inf"),
    (["import-checkpoint", "--path", IN + "empty.pt", "--arch", "ttm", "--channels", "PPG,ECG"],
     "empty.pt cannot be read as a state dict"),
    # main
    (["main", "--data", "missing.parquet"], "config key 'data': source not found"),
    (["main", "--pretrain_config", "missing.yaml"], "config key 'pretrain_config': file not found"),
    (["main", "--reference", "oracle"], "config key 'reference' (from command line) must be one of"),
    # doctor and registry views
    (["doctor", "--experiment", "nope"], "--experiment 'nope': no such experiment"),
    (["doctor", "--stale-after", "-1"], "--stale-after"),
    (["doctor", "--stale-after", "nan"], "'--stale-after': must be a finite number, got nan"),
    # tracking stores biosig cannot talk to: one line in seconds, not minutes of retries or a driver traceback
    (["doctor", "--tracking-uri", "http://127.0.0.1:1"], "tracking server http://127.0.0.1:1 does not answer"),
    (["evaluate", "--model", FINETUNED, "--tracking_uri", "mysql://u@127.0.0.1/db"],
     "tracking store mysql://u@127.0.0.1/db: no database driver for it here"),
    (["pretrain", "--tracking_uri", "mssql+pyodbc://u@127.0.0.1/db", "--epochs", "1"], "no database driver"),
]


@pytest.mark.slow
@pytest.mark.parametrize("argv,fragment", CASES, ids=[" ".join(c[0])[:60] for c in CASES])
def test_bad_input_is_one_clear_line_and_leaves_nothing_behind(world, argv, fragment, capsys):
    before_files, (_, before_versions) = _snapshot(world), _state()
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not _mlflow_log_line(line)]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("biosig: error: "), err
    assert fragment in lines[0], lines[0]
    assert "Traceback" not in err and "hunter2" not in err
    assert _snapshot(world) == before_files
    running, versions = _state()
    assert running == 0 and versions == before_versions


@pytest.mark.parametrize("value", ["abc", "0", "nan"])
def test_an_unusable_heartbeat_interval_is_one_line_before_any_run(world, value, monkeypatch, capsys):
    monkeypatch.setenv("BIOSIG_HEARTBEAT_S", value)
    before, files = _state(), _snapshot(world)
    assert main(["log-dataset", "--source", "synthetic:ppg-ecg"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("biosig: error: environment variable BIOSIG_HEARTBEAT_S must be a number of seconds >= 0.1, "
                   f"got {value!r}")
    assert _state() == before and _snapshot(world) == files


def _mlflow_log_line(line: str) -> bool:
    """MLflow's own INFO lines (database migrations of a new store) are not biosig's output."""
    return " INFO mlflow." in line or line.startswith("INFO ")


def test_the_table_covers_every_command():
    commands = {argv[0] for argv, _ in CASES}
    assert commands >= {"log-dataset", "prepare-splits", "pretrain", "finetune", "tune", "evaluate", "compare",
                        "promote", "main", "doctor"}
    assert len(CASES) >= 60
