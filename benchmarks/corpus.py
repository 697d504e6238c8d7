"""Corpus scale: a synthetic PPG+ECG corpus larger than RAM built in parallel and streamed into pretraining.

Prints, in one run:
  build      windows/s and MB/s of the whole command with workers=1 and workers=2 on the same corpus
             (--ratio-gb), and their ratio (target >= 1.8x); then the full corpus (--size-gb, default 30,
             larger than this machine's 24 GB of RAM) built with workers=2: GB on disk, minutes, peak RSS of
             the largest process and of all processes together (target: each <= 3 GB)
  epoch      one pretraining epoch streamed from the full corpus (tiny TTM): windows/s and peak RSS
  in-memory  streamed vs in-memory pretraining throughput on a corpus that fits (target ratio >= 0.9)
  S3         stream read throughput (windows/s) from moto's S3 server next to the same corpus on disk

Peak RSS comes from polling the command's process tree (psutil, every 0.2 s). Throughputs come from the
runs' `train/windows_per_s` metric (the training pass only, validation excluded). `--size-gb 2` gives a
quick run; the issue note records the full-size figures. Synthetic subjects are generated one at a time
(~2,400 windows/s per process on this machine), which bounds a build's speed here, not the I/O.

    python benchmarks/corpus.py [--size-gb 30] [--dir /var/tmp/biosig-corpus] [--keep]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import psutil

WINDOW_BYTES = 2 * 1024 * 4  # PPG + ECG, 1024 float32 samples each
WINDOWS_PER_SUBJECT = 2000
SHARD_ROWS = 16384  # 128 MB shards: a build worker holds one group's arrays (synthesis needs ~8x that)
TINY_TTM = ["--d-model", "16", "--num-layers", "1", "--patch-length", "64", "--batch-size", "256",
            "--epochs", "1", "--val-fraction", "0.02", "--register", "false", "--system-metrics", "false"]


def run_measured(args: list[str], cwd: Path) -> tuple[float, float, float]:
    """(seconds, peak RSS of the largest process, peak RSS summed over the tree) of a biosig command."""
    started = time.perf_counter()
    process = psutil.Popen([sys.executable, "-m", "biosig", *args], cwd=cwd, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
    largest = total = 0.0
    while process.poll() is None:
        try:
            tree = [process, *process.children(recursive=True)]
            sizes = [p.memory_info().rss for p in tree if p.is_running()]
        except psutil.Error:
            continue
        largest, total = max(largest, max(sizes)), max(total, sum(sizes))
        time.sleep(0.2)
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        sys.exit(f"biosig {' '.join(args)} failed:\n{process.stderr.read()[-3000:]}")
    return seconds, largest / 2**30, total / 2**30


def build(out: Path, cwd: Path, n_windows: int, workers: int) -> tuple[float, float, float]:
    subjects = max(2, n_windows // WINDOWS_PER_SUBJECT)
    return run_measured(["log-dataset", "--source", "synthetic:ppg-ecg", "--n-subjects", str(subjects),
                         "--windows-per-subject", str(WINDOWS_PER_SUBJECT), "--shard-rows", str(SHARD_ROWS),
                         "--workers", str(workers), "--output", f"{out}/", "--system-metrics", "false"], cwd)


def last_throughput(cwd: Path) -> tuple[float, int]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    run = client.search_runs(experiments, "tags.`biosig.command` = 'pretrain'", order_by=["start_time DESC"])[0]
    return run.data.metrics["train/windows_per_s"], int(run.data.metrics["train/windows"])


def pretrain(data: str, cwd: Path, workers: int = 1) -> tuple[float, float, float, int]:
    seconds, largest, total = run_measured(["pretrain", "--data", data, "--data-workers", str(workers), *TINY_TTM],
                                           cwd)
    rate, windows = last_throughput(cwd)
    return rate, largest, total, windows


def stream_rate(root: str, batches: int = 0) -> float:
    """Windows/s of one pass of a ShardStream (no model): what the storage delivers."""
    from biosig.data.shards import read_manifest
    from biosig.training.stream import ShardStream, stream_loader

    stream = ShardStream(read_manifest(root), 256, seed=0)
    started, seen = time.perf_counter(), 0
    for n, (x, _) in enumerate(stream_loader(stream, 1), 1):
        seen += len(x)
        if batches and n >= batches:
            break
    return seen / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=30.0, help="the large corpus's size on disk")
    parser.add_argument("--ratio-gb", type=float, default=2.0, help="the corpora built with 1 and 2 workers")
    parser.add_argument("--small-gb", type=float, default=0.5,
                        help="the corpus for streamed vs in-memory training and S3 (fits in RAM)")
    parser.add_argument("--dir", default="", help="where corpora are written (default: a temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the corpora")
    args = parser.parse_args()
    base = Path(args.dir or tempfile.mkdtemp(prefix="biosig-corpus-"))
    base.mkdir(parents=True, exist_ok=True)
    os.environ["BIOSIG_CACHE_DIR"] = str(base / "cache")
    try:
        ratio_windows = int(args.ratio_gb * 2**30 / WINDOW_BYTES)
        rates = {}
        for workers in (1, 2):
            seconds, largest, _ = build(base / f"ratio{workers}", base, ratio_windows, workers)
            rates[workers] = ratio_windows / seconds
            print(f"build {args.ratio_gb:g} GB, workers={workers}: {rates[workers]:,.0f} windows/s "
                  f"({rates[workers] * WINDOW_BYTES / 1e6:.0f} MB/s, whole command), peak RSS {largest:.2f} GB "
                  "per process")
            shutil.rmtree(base / f"ratio{workers}")
        print(f"build speed-up with 2 workers: {rates[2] / rates[1]:.2f}x (target >= 1.8)")

        build(base / "small2", base, int(args.small_gb * 2**30 / WINDOW_BYTES), 2)
        streamed = pretrain(str(base / "small2"), base)
        subprocess.run([sys.executable, "-m", "biosig", "log-dataset", "--source", str(base / "small2"),
                        "--output", str(base / "small.parquet"), "--system-metrics", "false"], cwd=base, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        in_memory = pretrain(str(base / "small.parquet"), base)
        print(f"pretraining on {args.small_gb:g} GB: streamed {streamed[0]:,.0f} windows/s (peak RSS {streamed[1]:.2f} GB), "
              f"in memory {in_memory[0]:,.0f} windows/s (peak RSS {in_memory[1]:.2f} GB): "
              f"ratio {streamed[0] / in_memory[0]:.2f} (target >= 0.9)")
        (base / "small.parquet").unlink()

        local_rate = stream_rate(str(base / "small2"))
        s3_rate = s3_stream_rate(base / "small2")
        print(f"stream read, no model: local {local_rate:,.0f} windows/s, S3 (moto) {s3_rate:,.0f} windows/s "
              f"({s3_rate / local_rate:.2f}x)")

        large = int(args.size_gb * 2**30 / WINDOW_BYTES)
        seconds, largest, total = build(base / "large", base, large, 2)
        size = sum(p.stat().st_size for p in (base / "large").glob("*.parquet")) / 2**30
        print(f"build {size:.1f} GB ({large:,} windows) with workers=2: {seconds / 60:.1f} min "
              f"({size * 1024 / seconds:.0f} MB/s), peak RSS {largest:.2f} GB largest process, {total:.2f} GB all "
              f"(target: each <= 3 GB)")
        rate, largest, total, windows = pretrain(str(base / "large"), base)
        print(f"one pretraining epoch streamed from {size:.1f} GB: {windows:,} windows at {rate:,.0f} windows/s, "
              f"peak RSS {largest:.2f} GB largest process, {total:.2f} GB all (target: each <= 3 GB)")
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


def s3_stream_rate(local: Path) -> float:
    """Upload the corpus to moto's S3 server (over HTTP) and time one stream pass from it."""
    import logging
    import socket

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's per-request access log

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                           "AWS_DEFAULT_REGION": "us-east-1", "MLFLOW_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}"})
        client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}")
        client.create_bucket(Bucket="corpus")
        for path in sorted(local.iterdir()):
            if path.is_file():
                client.upload_file(str(path), "corpus", f"small/{path.name}")
        return statistics.median([stream_rate("s3://corpus/small/") for _ in range(1)])
    finally:
        server.stop()


if __name__ == "__main__":
    main()
