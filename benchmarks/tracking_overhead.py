"""Cost of MLflow tracking in the fine-tuning loop.

Runs the same fine-tuning stage (default TTM c1024/p128/d64, 5 channels, synthetic quality data) once
with full tracking (per-epoch metrics batched and flushed each epoch to SQLite) and once with a
context that records nothing, alternating, and prints the median seconds per epoch of each and the
ratio tracked / untracked (target <= 1.02).

    python benchmarks/tracking_overhead.py [--epochs 3 --repeats 3 --subjects 24]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import pretrained_checkpoint, use_store

from biosig.commands import finetune as ft
from biosig.config import load_config
from biosig.registry.discovery import resolve_checkpoint
from biosig.tracking.datasets import use_dataset
from biosig.tracking.run import tracked_run
from biosig.training import loop
from biosig.training.classifier import build_classifier
from biosig.training.settings import Stage
from biosig.training.trainer import ListLog, fit


class TimedContext:
    """Forwards to the real RunContext and adds up the seconds spent in tracking calls."""

    def __init__(self, ctx) -> None:
        self.ctx, self.seconds = ctx, 0.0

    def _timed(self, fn, *args, **kwargs):
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - started

    def log_metrics(self, *args, **kwargs) -> None:
        self._timed(self.ctx.log_metrics, *args, **kwargs)

    def flush_metrics(self, wait: bool = True) -> None:
        self._timed(self.ctx.flush_metrics, wait=wait)


def epoch_seconds(log_to, config, parent, data, epochs: int) -> float:
    """Seconds per epoch of one stage-2 fit (validation included, as in every fine-tune)."""
    loop.seed_everything(0)
    built = build_classifier(parent.meta, parent.path, parent.uri, data.channels, len(data.class_names),
                             config.head_settings())
    started = time.perf_counter()
    fit(log_to, config.fit_settings(), built.model, data, [Stage(2, epochs, config.lr)], masks=built.masks,
        generator=loop.seed_everything(0))
    return (time.perf_counter() - started) / epochs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--subjects", type=int, default=24)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        use_store(Path(tmp))
        checkpoint = pretrained_checkpoint()
        config = load_config(ft.FinetuneConfig, None, {"checkpoint": checkpoint, "n_subjects": args.subjects,
                                                        "patience": 100, "experiment": "benchmarks"})
        parent = resolve_checkpoint(checkpoint)
        with tracked_run("benchmark", config) as ctx:
            logged = use_dataset(ctx, config.data, ft.SourceOptions(n_subjects=args.subjects))
            data = ft.prepare_data(logged.windows, logged.name, config, parent)
            print(f"{len(data.y['train'])} train windows x {len(data.channels)} channels, {args.epochs} epochs "
                  f"per measurement, {args.repeats} repeats")
            tracked, untracked, in_calls = [], [], []
            for _ in range(args.repeats):
                untracked.append(epoch_seconds(ListLog(), config, parent, data, args.epochs))
                timed = TimedContext(ctx)
                tracked.append(epoch_seconds(timed, config, parent, data, args.epochs))
                in_calls.append(timed.seconds / args.epochs)
            ctx.flush_metrics()
        t, u, c = statistics.median(tracked), statistics.median(untracked), statistics.median(in_calls)
        print(f"untracked {u:.3f} s/epoch  tracked {t:.3f} s/epoch  ratio tracked/untracked {t / u:.3f} "
              f"(wall clock, noisy on a shared 2-core machine)")
        print(f"time inside tracking calls {c * 1000:.2f} ms/epoch  ratio (untracked + calls)/untracked "
              f"{(u + c) / u:.4f} (target <= 1.02)")


if __name__ == "__main__":
    main()
