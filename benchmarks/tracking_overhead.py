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


class _NoMetrics:
    def log(self, *args, **kwargs) -> None:
        pass

    def flush(self, wait: bool = True) -> None:
        pass


class UntrackedContext:
    """The RunContext surface the trainer uses, recording nothing."""

    run_id = "untracked"
    metrics = _NoMetrics()

    def log_metrics(self, *args, **kwargs) -> None:
        pass

    def set_tags(self, *args, **kwargs) -> None:
        pass

    def log_dict(self, *args, **kwargs) -> None:
        pass


class TimedContext:
    """Forwards to the real RunContext and adds up the seconds spent in tracking calls."""

    def __init__(self, ctx) -> None:
        self.ctx, self.seconds, self.run_id = ctx, 0.0, ctx.run_id
        self.metrics = self

    def _timed(self, fn, *args, **kwargs):
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - started

    def log_metrics(self, *args, **kwargs) -> None:
        self._timed(self.ctx.log_metrics, *args, **kwargs)

    def flush(self, wait: bool = True) -> None:
        self._timed(self.ctx.metrics.flush, wait=wait)

    def set_tags(self, *args, **kwargs) -> None:
        self._timed(self.ctx.set_tags, *args, **kwargs)

    def log_dict(self, *args, **kwargs) -> None:
        self._timed(self.ctx.log_dict, *args, **kwargs)


def epoch_seconds(ctx, config, parent, data, epochs: int) -> float:
    loop.seed_everything(0)
    model, masks = ft.build_model(UntrackedContext(), parent, data, config)
    trainer = ft.Trainer(ctx, config, model, masks, data, loop.resolve_device("cpu"), loop.seed_everything(0))
    started = time.perf_counter()
    trainer._stage(2, epochs, config.lr)
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
                untracked.append(epoch_seconds(UntrackedContext(), config, parent, data, args.epochs))
                timed = TimedContext(ctx)
                tracked.append(epoch_seconds(timed, config, parent, data, args.epochs))
                in_calls.append(timed.seconds / args.epochs)
            ctx.metrics.flush()
        t, u, c = statistics.median(tracked), statistics.median(untracked), statistics.median(in_calls)
        print(f"untracked {u:.3f} s/epoch  tracked {t:.3f} s/epoch  ratio tracked/untracked {t / u:.3f} "
              f"(wall clock, noisy on a shared 2-core machine)")
        print(f"time inside tracking calls {c * 1000:.2f} ms/epoch  ratio (untracked + calls)/untracked "
              f"{(u + c) / u:.4f} (target <= 1.02)")


if __name__ == "__main__":
    main()
