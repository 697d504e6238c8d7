"""pyfunc serving overhead: `mlflow.pyfunc` predict vs the bare model forward at batch 256.

Fine-tunes the default TTM briefly, registers it, loads `models:/…@candidate` as pyfunc and times
predict() on 256 raw windows (dict input: schema check, channel order, crop, normalisation, softmax,
DataFrame) against model(x) on the already-prepared tensor. Prints medians and the ratio
bare / pyfunc throughput (target >= 0.9).

    python benchmarks/inference.py [--batch 256 --repeats 15]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import mlflow
import torch
from common import pretrained_checkpoint, use_store

from biosig.commands.finetune import FinetuneConfig, run_finetune
from biosig.config import load_config
from biosig.data.adapt import prepare_windows
from biosig.data.synthetic import synthetic_cardio
from biosig.registry.pyfunc import as_model_input


def interleaved_medians(first, second, repeats: int) -> tuple[float, float]:
    """Median seconds of each, measured alternately so that machine load hits both alike."""
    first(), second()  # warm-up
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fn, bucket in ((first, times[0]), (second, times[1])):
            started = time.perf_counter()
            fn()
            bucket.append(time.perf_counter() - started)
    return statistics.median(times[0]), statistics.median(times[1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        use_store(Path(tmp))
        config = load_config(FinetuneConfig, None, {"checkpoint": pretrained_checkpoint(), "n_subjects": 8,
                                                    "stage1_epochs": 1, "stage2_epochs": 0,
                                                    "experiment": "benchmarks"})
        result = run_finetune(config)
        model = mlflow.pyfunc.load_model(f"models:/{result.name}@candidate")
        wrapper = model.unwrap_python_model()
        ws = synthetic_cardio(n_subjects=max(1, args.batch // 20 + 1), with_acc=True, window_s=10.0, seed=5)
        signals = ws.signals[:args.batch]
        raw = as_model_input(signals, ws.channels)
        prepared = torch.from_numpy(prepare_windows(signals, ws.channels, ws.fs, wrapper.meta, "benchmark"))

        def bare():
            with torch.inference_mode():
                wrapper.model(prepared)

        pyfunc, forward = interleaved_medians(lambda: model.predict(raw), bare, args.repeats)
        print(f"batch {len(signals)}: bare forward {forward * 1000:.1f} ms ({len(signals) / forward:.0f} windows/s), "
              f"pyfunc predict {pyfunc * 1000:.1f} ms ({len(signals) / pyfunc:.0f} windows/s)")
        print(f"ratio bare/pyfunc time = pyfunc throughput / bare throughput: {forward / pyfunc:.3f} (target >= 0.9)")


if __name__ == "__main__":
    main()
