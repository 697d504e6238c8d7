"""Parquet dataset I/O vs np.load on the same [N, C, T] float32 array.

Prints the load-speed ratio (np.load time / read_parquet time) for the parquet decode itself (cache=False)
and for reads served by the Arrow IPC cache (biosig.data.arrow_cache; every read after the first: a
zero-copy view of the memory-mapped entry, target >= 0.8), the first read's cost, and parquet write
throughput in MB/s. Medians of --repeats runs; files live in a temporary directory (warm page cache).

    python benchmarks/dataset_io.py [--n 20000 --c 5 --t 1024 --repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np

from biosig.data import WindowSet, read_parquet, write_parquet
from biosig.data.channels import QUALITY_CHANNELS


def make(n: int, c: int, t: int) -> WindowSet:
    rng = np.random.default_rng(0)
    subjects = np.array([f"S{i:04d}" for i in range(n // 50 + 1)])
    subject = np.repeat(subjects, 50)[:n]
    order = (np.arange(n) % 50).astype(np.int64)[:, None]
    return WindowSet(signals=rng.standard_normal((n, c, t), dtype=np.float32),
                     labels=rng.integers(0, 2, n).astype(np.int64), subject=subject, order=order,
                     channels=QUALITY_CHANNELS[:c], fs=125.0)


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--c", type=int, default=5)
    parser.add_argument("--t", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    ws = make(args.n, args.c, args.t)
    mb = ws.signals.nbytes / 1e6
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["BIOSIG_CACHE_DIR"] = str(Path(tmp) / "cache")
        npy, pq_path = Path(tmp) / "x.npy", Path(tmp) / "x.parquet"
        np.save(npy, ws.signals)
        t_write = timed(lambda: write_parquet(ws, pq_path), args.repeats)
        t_npload = timed(lambda: np.load(npy), args.repeats)
        t_parquet = timed(lambda: read_parquet(pq_path, cache=False), args.repeats)
        started = time.perf_counter()
        read_parquet(pq_path)  # first read: decodes the parquet and writes the Arrow IPC cache entry
        t_first = time.perf_counter() - started
        t_cached = timed(lambda: read_parquet(pq_path), args.repeats)
        t_cached_unverified = timed(lambda: read_parquet(pq_path, verify_order=False), args.repeats)
        size = pq_path.stat().st_size / 1e6
    print(f"array [N={args.n}, C={args.c}, T={args.t}] float32 = {mb:.0f} MB; parquet file {size:.0f} MB")
    print(f"np.load                          {t_npload * 1e3:8.1f} ms")
    print(f"read_parquet, parquet decode     {t_parquet * 1e3:8.1f} ms   ratio {t_npload / t_parquet:.2f} (cache=False)")
    print(f"read_parquet, first read         {t_first * 1e3:8.1f} ms   (decode + digest + cache entry written)")
    print(f"read_parquet, cached (validated) {t_cached * 1e3:8.1f} ms   ratio {t_npload / t_cached:.2f} (target >= 0.8)")
    print(f"read_parquet, cached, no order   {t_cached_unverified * 1e3:8.1f} ms")
    print(f"write throughput                 {mb / t_write:8.0f} MB/s  ({t_write:.2f} s incl. sort and atomic rename)")

if __name__ == "__main__":
    main()
