"""Sharded datasets: built in parallel or in parts (same manifest digest), restarted after a kill,
streamed into pretraining (rank x worker exactly once, resumable mid-epoch), refused when a shard's bytes
changed, read from S3 through moto's server, and accepted by every command."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from biosig.cli import main
from biosig.data.shards import read_manifest, read_sharded, split_digest, verify_all
from biosig.errors import DataError
from biosig.training.stream import ShardStream, StreamPosition, stream_loader
from tests.helpers import TINY_FINETUNE, TINY_PRETRAIN, finished_runs, free_port, metrics_of, sizes_of, write_yaml

#: 12 subjects x 10 windows in blocks of 3 subjects: 4 groups, 4 shards of 30 windows (2 row groups of 16 + 14)
CORPUS = ["--source", "synthetic:ppg-ecg", "--n-subjects", "12", "--windows-per-subject", "10",
          "--shard-rows", "30", "--system-metrics", "false"]
PRETRAIN = {**TINY_PRETRAIN, "batch_size": 4, "system_metrics": False}


def build(out: str, *extra: str) -> int:
    return main(["log-dataset", *CORPUS, "--output", out, *extra])


@pytest.fixture
def corpus(workdir, monkeypatch):
    """A 4-shard corpus with row groups of 16 windows (so a shard has several)."""
    monkeypatch.setattr("biosig.data.shards.ROW_GROUP_ROWS", 16)
    assert build("corpus/", "--workers", "1") == 0
    return workdir / "corpus"


def pretrain_runs(status: str):
    return [r for r in finished_runs(status) if r.data.tags.get("biosig.command") == "pretrain"]


def fingerprints(batches) -> list[float]:
    return [float(v) for x in batches for v in x.double().sum(dim=(1, 2))]


@pytest.mark.slow
def test_the_manifest_is_the_same_however_the_build_is_divided(corpus, workdir, monkeypatch, capsys):
    manifest = read_manifest(str(corpus))
    assert [s.rows for s in manifest.shards] == [30, 30, 30, 30] and manifest.n_windows == 120
    assert all(s.row_groups == [16, 14] and s.file == f"part-{s.sha256[:16]}.parquet" for s in manifest.shards)
    assert sorted(manifest.subject_labels()) == [f"S{i:03d}" for i in range(12)]
    assert sum(manifest.label_counts().values()) == 120
    body = json.loads((corpus / "manifest.json").read_text())
    assert body["name"] == "PPG_8.192s_ppg-ecg_120windows_primary" and body["digest"] == manifest.digest

    # two worker processes; then two machines' parts and a finalize: the same bytes, the same digest
    assert build("parallel/", "--workers", "2") == 0
    assert build("parts/", "--shard", "1/2") == 0
    assert main(["dataset", "finalize", "parts/"]) == 2  # part 0 is missing
    assert "not built yet" in capsys.readouterr().err
    assert main(["pretrain", "--data", "parts/"]) == 2  # its shards are not a dataset yet
    assert "unfinished sharded build" in capsys.readouterr().err
    assert build("parts/", "--shard", "0/2") == 0  # the last part finalizes
    for other in ("parallel", "parts"):
        assert read_manifest(str(workdir / other)).digest == manifest.digest
    assert main(["dataset", "finalize", str(workdir / "parts")]) == 0  # idempotent

    ws = read_sharded(str(corpus))
    assert ws.n_windows == 120 and ws.source == str(corpus)
    ws.check_sorted()
    run = MlflowClient().get_run(finished_runs()[-1].info.run_id)  # the first log_dataset run
    (dataset,) = run.inputs.dataset_inputs
    assert dataset.dataset.digest == manifest.digest[:16] and dataset.dataset.name == manifest.name
    assert str(corpus) in dataset.dataset.source
    profile = json.loads(dataset.dataset.profile)
    assert profile["windows"] == 120 and profile["shards"] == 4 and "sample" in profile["profiled_from"]
    assert run.data.tags["biosig.dataset.digest"] == manifest.digest
    parts = [r for r in finished_runs("FINISHED") if r.data.tags.get("biosig.dataset.part")]
    assert {r.data.tags["biosig.dataset.part"] for r in parts} == {"0/2", "1/2"}


def test_a_build_holding_another_dataset_or_bad_keys_is_refused(corpus, capsys):
    capsys.readouterr()
    assert build("corpus/", "--seed", "1") == 2
    assert "holds a build of another dataset (options differ" in capsys.readouterr().err
    for args, key in ((["--output", "x/", "--shard", "2/2"], "'shard'"), (["--output", "x.csv"], "'output'"),
                      (["--output", "x.parquet", "--shard", "0/2"], "'shard'")):
        assert main(["log-dataset", *CORPUS, *args]) == 2
        assert key in capsys.readouterr().err
    assert not finished_runs("RUNNING")


@pytest.mark.slow
def test_an_interrupted_build_restarts_without_redoing_finished_groups(workdir):
    """kill -9 in the middle of a build; the restart keeps every finished group and the manifest digest
    equals an uninterrupted build's."""
    args = [sys.executable, "-m", "biosig", "log-dataset", "--source", "synthetic:ppg-ecg", "--n-subjects", "150",
            "--windows-per-subject", "4", "--shard-rows", "4", "--workers", "1", "--system-metrics", "false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([*args, "--output", "killed/"], cwd=workdir, env=env, stderr=subprocess.PIPE)
    parts = workdir / "killed" / "_parts"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(parts.glob("*.json"))) < 10 and process.poll() is None:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = len(list(parts.glob("*.json")))
    assert 10 <= finished < 150, f"the build was not interrupted midway ({finished} groups)"
    assert not (workdir / "killed" / "manifest.json").exists()

    restart = subprocess.run([*args, "--output", "killed/"], cwd=workdir, env=env, capture_output=True, text=True,
                             timeout=300)
    assert restart.returncode == 0, restart.stderr[-2000:]
    assert f"{finished} group(s) were already built" in restart.stdout
    clean = subprocess.run([*args, "--output", "clean/"], cwd=workdir, env=env, capture_output=True, text=True,
                           timeout=300)
    assert clean.returncode == 0, clean.stderr[-2000:]
    assert read_manifest(str(workdir / "killed")).digest == read_manifest(str(workdir / "clean")).digest
    assert not [p for p in (workdir / "killed").rglob("*") if p.name.endswith(".tmp")]


@pytest.mark.skipif(not Path("/dev/shm").is_dir() or os.stat("/dev/shm").st_dev == os.stat(tempfile.gettempdir()).st_dev,
                    reason="needs $TMPDIR and the output on two filesystems (a tmpfs at /dev/shm)")
@pytest.mark.slow
def test_a_build_onto_another_filesystem_than_tmpdir_renames_within_it(workdir, monkeypatch):
    """The usual lab set-up: $TMPDIR on one disk, the corpus on another (os.rename across them fails)."""
    scratch = Path(tempfile.mkdtemp(dir="/dev/shm", prefix="biosig-test-tmp-"))
    try:
        monkeypatch.setenv("TMPDIR", str(scratch))
        monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR in this process; workers inherit it
        assert os.stat(scratch).st_dev != os.stat(workdir).st_dev
        assert build("corpus/", "--workers", "2") == 0
        assert len(read_manifest(str(workdir / "corpus")).shards) == 4
        assert not [p for p in (workdir / "corpus").rglob("*") if p.name.endswith(".tmp")]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def test_two_ranks_by_two_workers_read_each_window_once_per_epoch(corpus):
    manifest = read_manifest(str(corpus))
    seen: list[float] = []
    for rank in range(2):
        stream = ShardStream(manifest, 8, seed=3, rank=rank, world_size=2, buffer_windows=32)
        stream.set_epoch(1)
        seen += fingerprints(x for x, _ in stream_loader(stream, 2))
    everything = fingerprints([torch.from_numpy(read_sharded(str(corpus)).signals)])
    assert sorted(seen) == sorted(everything) and len(set(seen)) == 120

    stream = ShardStream(manifest, 8, seed=3, buffer_windows=32)
    orders = []
    for epoch in (1, 2):
        stream.set_epoch(epoch)
        orders.append(fingerprints(x for x, _ in stream_loader(stream, 2)))
    assert orders[0] != orders[1] and sorted(orders[0]) == sorted(orders[1])  # reshuffled per epoch, same windows


def test_decoded_row_groups_are_cached_for_later_epochs_and_read_back_the_same(corpus, monkeypatch):
    """stream_cache: the first epoch decodes parquet and keeps each row group as .npy; the second reads those
    (the parquet decoder is not called), and the batches are the ones an uncached stream gives."""
    import biosig.data.shards as shards
    from biosig.data.storage import cache_root

    manifest = read_manifest(str(corpus))
    plain = ShardStream(manifest, 8, seed=3, buffer_windows=32, subjects={"S000", "S001", "S002"})
    cached = ShardStream(manifest, 8, seed=3, buffer_windows=32, subjects={"S000", "S001", "S002"})
    assert plain.use_cache("auto", 1).startswith("row groups decoded once") and not plain.cache
    assert plain.use_cache("off", 5).endswith("(stream_cache=off)") and not plain.cache
    assert "cached under" in cached.use_cache("auto", 2) and cached.cache
    decoded = []
    monkeypatch.setattr(shards, "signals_of", lambda *a, _real=shards.signals_of: decoded.append(1) or _real(*a))
    for epoch in (1, 2):
        plain.set_epoch(epoch), cached.set_epoch(epoch)
        expected = fingerprints(x for x, _ in stream_loader(plain, 0))
        before = len(decoded)
        assert fingerprints(x for x, _ in stream_loader(cached, 0)) == expected and len(expected) > 0
        assert (len(decoded) > before) == (epoch == 1)  # epoch 2 never decodes parquet
    entries = list((cache_root() / "rowgroups").rglob("*.npy"))
    assert len(entries) == len(cached.units)
    entries[0].write_bytes(b"not numpy")  # a damaged entry is read as a miss
    cached.set_epoch(3), plain.set_epoch(3)
    assert fingerprints(x for x, _ in stream_loader(cached, 0)) == fingerprints(x for x, _ in stream_loader(plain, 0))
    monkeypatch.setenv("BIOSIG_CACHE_DIR", "off")
    assert cached.use_cache("on", 5).endswith("(BIOSIG_CACHE_DIR=off)") and not cached.cache


@pytest.mark.parametrize("stop", [3, 6])
def test_resuming_mid_epoch_continues_the_uninterrupted_stream(corpus, stop):
    manifest = read_manifest(str(corpus))

    def run(position=None):
        stream = ShardStream(manifest, 8, seed=5, buffer_windows=32)
        stream.set_epoch(2)
        if position is not None:
            stream.resume(position)
        return [(int(r), x) for x, r in stream_loader(stream, 2)]

    full = run()
    position = StreamPosition(epoch=2, readers=2)
    for reader, _ in full[:stop]:
        position.count(torch.tensor(reader))
    rest = run(StreamPosition.from_dict(json.loads(json.dumps(position.to_dict()))))
    assert len(rest) == len(full) - stop
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(full[stop:], rest))


def test_pretraining_streams_a_sharded_dataset(corpus, workdir):
    config = write_yaml(workdir / "pretrain.yaml", {**PRETRAIN, "data": str(corpus)})
    assert main(["pretrain", "--config", str(config), "--data-workers", "2"]) == 0
    (run,) = [r for r in finished_runs("FINISHED") if r.data.tags.get("biosig.command") == "pretrain"]
    sizes = sizes_of(run)
    assert sizes["train_windows"] + sizes["val_windows"] == 120
    history = MlflowClient().get_metric_history(run.info.run_id, "train/windows_seen")
    assert [m.value for m in history] == [sizes["train_windows"]] * 2  # every training window, every epoch
    assert run.data.tags["biosig.dataset.digest"] == read_manifest(str(corpus)).digest
    assert run.data.tags["biosig.dataset.uri"] == str(corpus)


@pytest.mark.slow
def test_pretraining_killed_mid_epoch_resumes_to_the_uninterrupted_result(corpus, workdir, monkeypatch, capsys):
    from biosig.training import loop

    keys = {**PRETRAIN, "data": str(corpus), "data_workers": 0, "checkpoint_every": 2, "register": False}
    config = write_yaml(workdir / "pretrain.yaml", keys)
    assert main(["pretrain", "--config", str(config)]) == 0
    (whole,) = pretrain_runs("FINISHED")
    per_epoch = sizes_of(whole)["train_windows"] / keys["batch_size"]  # steps in one epoch (about)

    step, calls = loop.step, []

    def dies_in_epoch_two(*args, **kwargs):  # Ctrl-C at an odd step of epoch 2: after a mid-epoch save
        calls.append(1)
        if len(calls) == int(per_epoch) + 7:
            raise KeyboardInterrupt
        return step(*args, **kwargs)

    monkeypatch.setattr(loop, "step", dies_in_epoch_two)
    assert main(["pretrain", "--config", str(config)]) == 130
    (killed,) = finished_runs("KILLED")
    monkeypatch.setattr(loop, "step", step)
    capsys.readouterr()
    assert main(["pretrain", "--config", str(config), "--resume", killed.info.run_id]) == 0
    assert re.search(r"resuming run \w+ at batch [2468] of epoch 2", capsys.readouterr().out)  # not from its start
    (resumed,) = [r for r in pretrain_runs("FINISHED") if r.info.run_id != whole.info.run_id]
    client = MlflowClient()
    for key in ("train/loss", "val/loss"):
        expected = [m.value for m in client.get_metric_history(whole.info.run_id, key)]
        got = [m.value for m in sorted(client.get_metric_history(resumed.info.run_id, key), key=lambda m: m.step)]
        assert got == pytest.approx(expected, rel=1e-6, abs=1e-7), key
    assert resumed.data.tags["biosig.resumed_at_epoch"] == "1"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None,
                    reason="torchrun is not installed next to this Python")
@pytest.mark.slow
def test_torchrun_two_ranks_by_two_workers_train_on_each_window_once(corpus, workdir):
    config = write_yaml(workdir / "pretrain.yaml", {**PRETRAIN, "data": str(corpus), "data_workers": 2})
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    result = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", str(free_port()), "-m", "biosig",
                             "pretrain", "--config", str(config)], cwd=workdir, capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = [r for r in finished_runs("FINISHED") if r.data.tags.get("biosig.command") == "pretrain"]
    assert run.data.tags["biosig.world_size"] == "2"
    history = MlflowClient().get_metric_history(run.info.run_id, "train/windows_seen")
    assert [m.value for m in history] == [sizes_of(run)["train_windows"]] * 2


def test_a_shard_whose_bytes_changed_is_refused_with_its_name(corpus, workdir, capsys):
    config = write_yaml(workdir / "pretrain.yaml", {**PRETRAIN, "data": str(corpus)})
    assert main(["doctor"]) == 0
    shard = read_manifest(str(corpus)).shards[2]
    path = corpus / shard.file
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte different
    path.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["pretrain", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert shard.file in err and "no longer match" in err
    assert main(["finetune", "--checkpoint", "auto", "--pretrain-config", str(config), "--data", str(corpus)]) == 2
    assert not finished_runs("RUNNING")
    capsys.readouterr()
    assert main(["doctor"]) == 1  # the log_dataset run recorded the corpus before it changed
    report = capsys.readouterr().out
    assert f"dataset   {corpus}: unreadable (shard {shard.file}" in report


def test_tampering_that_restores_size_and_mtime_is_caught_and_every_bad_shard_named(corpus):
    manifest = read_manifest(str(corpus))
    verify_all(manifest)  # checked once: this machine remembers the shards
    flipped, truncated = manifest.shards[1], manifest.shards[3]
    path = corpus / flipped.file
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x01
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # size and mtime as they were
    (corpus / truncated.file).write_bytes((corpus / truncated.file).read_bytes()[:100])
    with pytest.raises(DataError) as caught:
        verify_all(manifest)
    message = str(caught.value)
    assert message.startswith(f"2 shards of {corpus} fail their check")
    assert f"shard {flipped.file}: its bytes no longer match" in message and truncated.file in message


def test_a_finished_build_whose_manifest_was_deleted_says_so(corpus, capsys):
    (corpus / "manifest.json").unlink()
    assert main(["pretrain", "--data", str(corpus), "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "holds a finished sharded build whose manifest.json is missing (deleted?)" in err
    assert f"biosig dataset finalize {corpus}" in err
    assert main(["doctor"]) == 1
    assert "finished sharded build whose manifest.json is missing" in capsys.readouterr().out


@pytest.mark.slow
def test_an_s3_prefix_is_built_and_streamed_through_moto(s3, workdir):
    assert build("s3://models/corpus/", "--workers", "1") == 0
    listed = s3.list_objects_v2(Bucket="models", Prefix="corpus/")["Contents"]
    assert any(o["Key"] == "corpus/manifest.json" for o in listed)
    manifest = read_manifest("s3://models/corpus/")
    assert len(manifest.shards) == 4 and manifest.root == "s3://models/corpus"
    config = write_yaml(workdir / "pretrain.yaml", {**PRETRAIN, "data": "s3://models/corpus/"})
    assert main(["pretrain", "--config", str(config), "--data-workers", "0"]) == 0
    (run,) = [r for r in finished_runs("FINISHED") if r.data.tags.get("biosig.command") == "pretrain"]
    assert run.data.tags["biosig.dataset.uri"] == "s3://models/corpus"
    assert sizes_of(run)["train_windows"] + sizes_of(run)["val_windows"] == 120
    assert not (Path(os.environ["BIOSIG_CACHE_DIR"]) / "s3").exists()  # ranged reads, no whole-object download


@pytest.mark.slow
def test_a_labelled_multi_shard_corpus_goes_through_every_command(workdir, monkeypatch):
    monkeypatch.setattr("biosig.data.shards.ROW_GROUP_ROWS", 16)
    assert main(["log-dataset", "--source", "synthetic:quality", "--n-subjects", "9", "--windows-per-subject", "6",
                 "--shard-rows", "20", "--output", "quality/", "--system-metrics", "false"]) == 0
    data = str(workdir / "quality")
    assert len(read_manifest(data).shards) == 3
    pretrain = write_yaml(workdir / "pretrain.yaml", {**PRETRAIN, "data": data, "epochs": 1})
    finetune = ["--checkpoint", "auto", "--pretrain-config", str(pretrain), *TINY_FINETUNE, "--data", data,
                "--reference", "features,scratch"]
    model = "ttm_ppg-ecg_c64_p16_m40_mae_finetuned"
    with monkeypatch.context() as streamed_only:  # no command reads the corpus whole: each streams it
        for reader in ("biosig.tracking.datasets.read_sharded", "biosig.commands.finetune_evidence.read_sharded"):
            streamed_only.setattr(reader, None)
        assert main(["pretrain", "--config", str(pretrain)]) == 0
        assert main(["finetune", *finetune]) == 0
        assert main(["evaluate", "--model", f"{model}@candidate", "--data", data]) == 0
        assert main(["tune", "--checkpoint", "ttm_ppg-ecg_c64_p16_m40_mae", *TINY_FINETUNE, "--data", data,
                     "--n-trials", "2", "--pruner", "none"]) == 0
        assert main(["compare", "--checkpoints", "ttm_ppg-ecg_c64_*", "--modes", "probe", "--data", data,
                     "--reference", ""]) == 0
    digest = read_manifest(data).digest
    for run in finished_runs("FINISHED"):
        if run.data.tags.get("biosig.command") in ("pretrain", "finetune", "evaluate") and \
                "biosig.reference" not in run.data.tags:  # a reference's run records its split, not the input
            assert run.data.tags["biosig.dataset.digest"] == digest, run.data.tags["biosig.command"]
    assert not finished_runs("RUNNING")
    assert np.isfinite(metrics_of(MlflowClient().get_run(
        MlflowClient().get_model_version_by_alias(model, "candidate").run_id))["test_auroc"])
    assert main(["log-dataset", "--source", data, "--output", "whole.parquet", "--system-metrics", "false"]) == 0
    assert main(["evaluate", "--model", f"{model}@candidate", "--data", str(workdir / "whole.parquet")]) == 0
    by_command = {}
    for run in sorted(finished_runs("FINISHED"), key=lambda r: r.info.start_time):
        by_command.setdefault(run.data.tags.get("biosig.command"), []).append(run)
    streamed, whole = by_command["evaluate"]
    assert streamed.data.tags["biosig.test.digest"] == by_command["finetune"][0].data.tags["biosig.test.digest"]
    for name in ("test_auroc", "test_f1", "val_ece", "test_subject_accuracy"):  # the same windows, scored alike
        assert metrics_of(streamed)[name] == pytest.approx(metrics_of(whole)[name], abs=1e-6), name


def test_streamed_fine_tuning_data_holds_the_in_memory_splits(workdir, monkeypatch):
    """prepare_streamed reads labels, subjects and a normalisation sample; its splits, labels, inputs and
    statistics are those prepare_data makes of the same rows in memory."""
    from types import SimpleNamespace

    from biosig.commands.configs import FinetuneConfig
    from biosig.commands.finetune_data import prepare_data, prepare_streamed

    monkeypatch.setattr("biosig.data.shards.ROW_GROUP_ROWS", 16)
    assert main(["log-dataset", "--source", "synthetic:quality", "--n-subjects", "9", "--windows-per-subject", "6",
                 "--shard-rows", "20", "--output", "quality/", "--system-metrics", "false"]) == 0
    data = str(workdir / "quality")
    parent = SimpleNamespace(meta={"channels": ["PPG", "ECG"], "context_length": 64, "patch_length": 16, "fs": 125.0})
    config = FinetuneConfig(data=data)
    whole = prepare_data(read_sharded(data), "quality", config, parent)
    streamed = prepare_streamed(read_manifest(data), "quality", config, parent)
    assert streamed.x == {} and streamed.channels == whole.channels
    for split in ("train", "val", "test"):
        pairs = sorted(zip(streamed.subject[split].tolist(), streamed.y[split].tolist()))
        assert pairs == sorted(zip(whole.subject[split].tolist(), whole.y[split].tolist())), split
        inputs = np.concatenate(list(streamed.inputs(split, batch_size=5)))
        assert len(inputs) == len(streamed.y[split])
        assert np.sort(inputs.sum(axis=(1, 2))) == pytest.approx(np.sort(whole.x[split].sum(axis=(1, 2))), abs=1e-3)
        raw = np.concatenate(list(streamed.raw_inputs(split)))
        assert raw.shape[1:] == whole.raw[split].shape[1:] and len(raw) == len(whole.raw[split])
    # the sample is every training window here (fewer than NORMALISATION_SAMPLE): the same statistics
    assert streamed.stats.mean == pytest.approx(whole.stats.mean, rel=1e-4)
    assert streamed.stats.std == pytest.approx(whole.stats.std, rel=1e-4)
    assert streamed.test_digest == split_digest(read_manifest(data), set(whole.subject["test"].tolist()))


def test_a_split_manifest_missing_subjects_of_a_corpus_is_refused_naming_it(corpus, workdir, capsys):
    config = write_yaml(workdir / "pretrain.yaml", {**PRETRAIN, "data": str(corpus), "epochs": 1})
    assert main(["pretrain", "--config", str(config)]) == 0
    (workdir / "split.csv").write_text("subject,split\nS000,train\nS001,val\nS002,test\n")
    capsys.readouterr()
    assert main(["finetune", "--checkpoint", "auto", "--pretrain-config", str(config), *TINY_FINETUNE,
                 "--data", str(corpus), "--split-manifest", "split.csv"]) == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if "split manifest" in line]  # one line
    assert f"split manifest split.csv does not assign 9 subject(s) of {corpus}, e.g. S003" in line
    assert not finished_runs("RUNNING")
    assert not [m.name for m in MlflowClient().search_registered_models() if m.name.endswith("_finetuned")]


def test_a_restart_sweeps_only_the_temporaries_of_writers_that_are_gone(tmp_path):
    from biosig.data.atomic import remove_dead_temporaries

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = tmp_path / f".part-0123.parquet.{gone.pid}.x1y2.tmp"
    live = tmp_path / f".part-4567.parquet.{os.getpid()}.a1b2.tmp"
    shard_scratch = tmp_path / f".shard-89ab.{gone.pid}.tmp"
    for path in (dead, live, shard_scratch):
        path.write_bytes(b"partial")
    assert remove_dead_temporaries(tmp_path) == 2
    assert [p.name for p in tmp_path.iterdir()] == [live.name]


def test_a_cache_that_cannot_be_written_is_skipped_not_an_error(tmp_path, monkeypatch):
    """A full or read-only cache disk (atomic_path's one-line DataError) must not fail the read it serves."""
    import contextlib

    import pyarrow as pa

    from biosig.data import arrow_cache, rowgroup_cache

    @contextlib.contextmanager
    def full_disk(path, **_):
        raise DataError(f"no space left on the device of {path}")
        yield

    monkeypatch.setenv("BIOSIG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(rowgroup_cache, "atomic_path", full_disk)
    monkeypatch.setattr(arrow_cache, "atomic_path", full_disk)
    signals = np.zeros((2, 1, 8), dtype=np.float32)
    rowgroup_cache.write("ab" * 32, 0, ["PPG"], signals, np.array(["s", "s"]), np.zeros(2, dtype=np.int64))
    assert rowgroup_cache.read("ab" * 32, 0, ["PPG"]) is None
    source = tmp_path / "x.parquet"
    source.write_bytes(b"x")
    arrow_cache.write_cached(source, "cd" * 32, pa.table({"a": [1]}))
    assert arrow_cache.read_cached(source, "cd" * 32) is None
