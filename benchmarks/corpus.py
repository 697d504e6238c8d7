"""Corpus scale: a synthetic PPG+ECG corpus larger than RAM built in parallel and streamed into pretraining.

Prints, in one run:
  build      windows/s and MB/s of the whole command with workers=1 and workers=2 on the same corpus
             (--ratio-gb), and their ratio (target >= 1.8x); then the full corpus (--size-gb, default 30,
             larger than this machine's 24 GB of RAM) built with workers=2: GB on disk, minutes, peak RSS of
             the largest process and of all processes together (target: each <= 3 GB)
  epoch      one pretraining epoch streamed from the full corpus (tiny TTM): windows/s and peak RSS
  in-memory  streamed vs in-memory pretraining throughput on a corpus that fits (target ratio >= 0.9)
  S3         stream read throughput (windows/s) from moto's S3 server next to the same corpus on disk
  finetune   streamed vs in-memory fine-tuning on a labelled corpus that fits (synthetic:quality, 5 channels
             x 1250 samples, --finetune-gb): training windows/s (median over epochs), whole command seconds
             and peak RSS of each (the streamed one reads labels, a normalisation sample and row groups)

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
    return run.data.metrics["train/windows_per_s"], int(run.data.params["size.train_windows"])


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


PARTS = ("build", "train", "s3", "finetune", "large")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=30.0, help="the large corpus's size on disk")
    parser.add_argument("--ratio-gb", type=float, default=2.0, help="the corpora built with 1 and 2 workers")
    parser.add_argument("--small-gb", type=float, default=1.0,
                        help="the corpus for streamed vs in-memory training and S3 (fits in RAM)")
    parser.add_argument("--finetune-gb", type=float, default=0.5, help="the labelled corpus for fine-tuning")
    parser.add_argument("--repeats", type=int, default=3, help="streamed / in-memory runs, alternating (medians)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"which measurements ({', '.join(PARTS)})")
    parser.add_argument("--dir", default="", help="where corpora are written (default: a temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the corpora")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    base = Path(args.dir or tempfile.mkdtemp(prefix="biosig-corpus-"))
    base.mkdir(parents=True, exist_ok=True)
    os.environ["BIOSIG_CACHE_DIR"] = str(base / "cache")
    try:
        if "build" in parts:
            build_ratio(base, args.ratio_gb)
        if parts & {"train", "s3"}:
            build(base / "small", base, int(args.small_gb * 2**30 / WINDOW_BYTES), 2)
        if "train" in parts:
            streamed_vs_in_memory(base, args.small_gb, args.repeats)
        if "s3" in parts:
            local_rate = stream_rate(str(base / "small"))
            s3_rate = s3_stream_rate(base / "small")
            print(f"stream read, no model: local {local_rate:,.0f} windows/s, S3 (moto) {s3_rate:,.0f} windows/s "
                  f"({s3_rate / local_rate:.2f}x)")
        if "finetune" in parts:
            finetune_streamed_vs_in_memory(base, args.finetune_gb, args.repeats)
        if "large" in parts:
            larger_than_ram(base, args.size_gb)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


def build_ratio(base: Path, size_gb: float) -> None:
    windows = int(size_gb * 2**30 / WINDOW_BYTES)
    rates = {}
    for workers in (1, 2):
        seconds, largest, _ = build(base / f"ratio{workers}", base, windows, workers)
        rates[workers] = windows / seconds
        print(f"build {size_gb:g} GB, workers={workers}: {rates[workers]:,.0f} windows/s "
              f"({rates[workers] * WINDOW_BYTES / 1e6:.0f} MB/s, whole command), peak RSS {largest:.2f} GB per process")
        shutil.rmtree(base / f"ratio{workers}")
    print(f"build speed-up with 2 workers: {rates[2] / rates[1]:.2f}x (target >= 1.8)")


def streamed_vs_in_memory(base: Path, size_gb: float, repeats: int) -> None:
    """The same rows streamed from shards and read whole from one parquet, runs alternating."""
    subprocess.run([sys.executable, "-m", "biosig", "log-dataset", "--source", str(base / "small"),
                    "--output", str(base / "small.parquet"), "--system-metrics", "false"], cwd=base, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    streamed, in_memory = [], []
    for _ in range(repeats):
        streamed.append(pretrain(str(base / "small"), base))
        in_memory.append(pretrain(str(base / "small.parquet"), base))
    s_rate = statistics.median(r[0] for r in streamed)
    m_rate = statistics.median(r[0] for r in in_memory)
    print(f"pretraining on {size_gb:g} GB (median of {repeats}): streamed {s_rate:,.0f} windows/s "
          f"(peak RSS {max(r[1] for r in streamed):.2f} GB), in memory {m_rate:,.0f} windows/s "
          f"(peak RSS {max(r[1] for r in in_memory):.2f} GB): ratio {s_rate / m_rate:.2f} (target >= 0.9); "
          f"runs: streamed {', '.join(f'{r[0]:,.0f}' for r in streamed)}, "
          f"in memory {', '.join(f'{r[0]:,.0f}' for r in in_memory)}")
    (base / "small.parquet").unlink()


QUALITY_WINDOW_BYTES = 5 * 1250 * 4
FINETUNE = ["--stage1-epochs", "2", "--stage2-epochs", "2", "--unfreeze-last-n", "1", "--batch-size", "256",
            "--register", "false", "--system-metrics", "false"]


def finetune_streamed_vs_in_memory(base: Path, size_gb: float, repeats: int) -> None:
    """A tiny TTM pretrained on the labelled corpus, then fine-tuned from the shards and from one parquet."""
    from mlflow.tracking import MlflowClient

    per_subject = 200
    subjects = max(9, int(size_gb * 2**30 / QUALITY_WINDOW_BYTES) // per_subject)
    corpus, whole = base / "quality", base / "quality.parquet"
    run_measured(["log-dataset", "--source", "synthetic:quality", "--n-subjects", str(subjects),
                  "--windows-per-subject", str(per_subject), "--shard-rows", "8192", "--workers", "2",
                  "--output", f"{corpus}/", "--system-metrics", "false"], base)
    run_measured(["log-dataset", "--source", str(corpus), "--output", str(whole), "--system-metrics", "false"], base)
    at = TINY_TTM.index("--register")
    tiny = TINY_TTM[:at] + TINY_TTM[at + 2:]  # registered: fine-tuning finds it by name
    run_measured(["pretrain", "--data", str(corpus), *tiny], base)
    client = MlflowClient(f"sqlite:///{base / 'mlflow.db'}")
    checkpoint = client.search_registered_models()[0].name
    results: dict[str, list[tuple[float, float, float]]] = {"streamed": [], "in memory": []}
    for _ in range(repeats):
        for label, data in (("streamed", corpus), ("in memory", whole)):
            seconds, largest, _ = run_measured(["finetune", "--checkpoint", checkpoint, "--data", str(data),
                                                *FINETUNE], base)
            experiments = [e.experiment_id for e in client.search_experiments()]
            run = client.search_runs(experiments, "tags.`biosig.command` = 'finetune'",
                                     order_by=["start_time DESC"])[0]
            rates = [m.value for m in client.get_metric_history(run.info.run_id, "train/windows_per_s")]
            results[label].append((statistics.median(rates), seconds, largest))
    size = sum(p.stat().st_size for p in corpus.glob("*.parquet")) / 2**30
    summary = {label: tuple(statistics.median(r[i] for r in runs) for i in range(2)) + (max(r[2] for r in runs),)
               for label, runs in results.items()}
    for label, (rate, seconds, largest) in summary.items():
        print(f"finetune on {size:.2f} GB ({subjects * per_subject:,} labelled windows), {label} (median of "
              f"{repeats}): {rate:,.0f} training windows/s, {seconds:.1f} s whole command, peak RSS {largest:.2f} GB")
    print(f"finetune streamed / in memory: training throughput {summary['streamed'][0] / summary['in memory'][0]:.2f}"
          f" (target >= 0.85), whole command {summary['in memory'][1] / summary['streamed'][1]:.2f}x the speed")
    shutil.rmtree(corpus)
    whole.unlink()


def larger_than_ram(base: Path, size_gb: float) -> None:
    windows = int(size_gb * 2**30 / WINDOW_BYTES)
    seconds, largest, total = build(base / "large", base, windows, 2)
    size = sum(p.stat().st_size for p in (base / "large").glob("*.parquet")) / 2**30
    print(f"build {size:.1f} GB ({windows:,} windows) with workers=2: {seconds / 60:.1f} min "
          f"({size * 1024 / seconds:.0f} MB/s), peak RSS {largest:.2f} GB largest process, {total:.2f} GB all "
          f"(target: each <= 3 GB)")
    rate, largest, total, trained = pretrain(str(base / "large"), base)
    print(f"one pretraining epoch streamed from {size:.1f} GB: {trained:,} windows at {rate:,.0f} windows/s, "
          f"peak RSS {largest:.2f} GB largest process, {total:.2f} GB all (target: each <= 3 GB)")


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
