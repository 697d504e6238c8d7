"""Preprocessing throughput: resample + band-pass + window + gates/SQIs on 1 hour of 5-channel signal
(BUT PPG rates: ECG 1000 Hz, PPG 30 Hz, ACC 3 x 100 Hz -> 125 Hz, 10 s windows).

Prints windows/s, the ratio of signal time to processing time (x real time), and peak memory (Python
allocations through tracemalloc, which numpy reports to, and the process's max RSS).

    python benchmarks/preprocess.py [--hours 1] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
import tracemalloc

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np

from biosig.data.channels import QUALITY_CHANNELS
from biosig.data.preprocess import PreprocessConfig, prepare_channels, window_recording


def recording(seconds: float, seed: int = 0) -> dict[str, tuple[np.ndarray, float]]:
    rng = np.random.default_rng(seed)

    def beat_train(fs: float, width: float) -> np.ndarray:
        t = np.arange(int(seconds * fs)) / fs
        phase = np.mod(t * (70 + 5 * np.sin(2 * np.pi * t / 300)) / 60, 1.0)
        return np.exp(-0.5 * ((phase - 0.3) / width) ** 2) + rng.normal(0, 0.02, t.size)

    n_acc = int(seconds * 100)
    return {"ECG": (beat_train(1000, 0.012), 1000.0), "PPG": (beat_train(30, 0.08), 30.0),
            **{axis: (rng.normal(0, 0.02, n_acc) + g, 100.0) for axis, g in zip(("ACC_X", "ACC_Y", "ACC_Z"),
                                                                                 (0.1, 0.2, 0.97))}}


def run_once(signals, config: PreprocessConfig) -> tuple[float, int, int]:
    started = time.perf_counter()
    channels, x = prepare_channels(signals, config, "benchmark")
    windows = window_recording(channels, x, config, order=QUALITY_CHANNELS)
    return time.perf_counter() - started, len(windows.signals), windows.total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    seconds = args.hours * 3600
    signals = recording(seconds)
    config = PreprocessConfig(target_fs=125.0, window_s=10.0)
    times = []
    for _ in range(args.repeats):
        elapsed, kept, total = run_once(signals, config)
        times.append(elapsed)
    tracemalloc.start()  # a separate run: tracing numpy's allocations slows it several-fold
    run_once(signals, config)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    median = statistics.median(times)
    input_mb = sum(x.nbytes for x, _ in signals.values()) / 2**20
    print(f"{args.hours:g} h of ACC_X/Y/Z (100 Hz), PPG (30 Hz), ECG (1000 Hz) -> 125 Hz, 10 s windows, gates on")
    print(f"  windows: {total} ({kept} kept); median of {args.repeats}: {median:.2f} s")
    print(f"  {total / median:,.0f} windows/s; {seconds / median:,.0f}x real time")
    print(f"  peak traced memory {peak / 2**20:.0f} MiB for {input_mb:.0f} MiB of input "
          f"(ratio {peak / 2**20 / input_mb:.1f}); max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
