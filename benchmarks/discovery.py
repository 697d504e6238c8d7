"""Checkpoint discovery latency with many registered models on SQLite.

Registers --models conventional names (one version each, alias `candidate`, all pointing at one small
checkpoint directory) in a fresh SQLite store, then times resolve_checkpoint for NAME@candidate,
NAME/1 and bare NAME (latest version). Prints p50/p95 per form and the ratio p50 / 20 ms (target <= 1),
and the latency of `biosig registry show NAME` (versions, aliases and run metrics of one model).

    python benchmarks/discovery.py [--models 1000 --lookups 200]
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
logging.getLogger("mlflow").setLevel(logging.WARNING)

import mlflow  # noqa: E402
import torch  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from biosig.backbones.ttm import ttm_name  # noqa: E402
from biosig.models.checkpoint import save_checkpoint  # noqa: E402
from biosig.registry.discovery import resolve_checkpoint  # noqa: E402
from biosig.registry.report import show  # noqa: E402

TARGET_MS = 20.0


def names(n: int) -> list[str]:
    out = []
    for context in (512, 1024, 2048, 4096):
        for patch in (16, 32, 64, 128, 256):
            for mask in range(5, 96):
                out.append(ttm_name(channels=["PPG", "ECG"], context_length=context, patch_length=patch,
                                    objective="mae", mask_ratio=mask / 100))
    return out[:n]


def populate(client: MlflowClient, source: str, run_id: str, model_names: list[str]) -> None:
    started = time.perf_counter()
    for name in model_names:
        client.create_registered_model(name)
        version = client.create_model_version(name, source, run_id=run_id, tags={"biosig.arch": "ttm"})
        client.set_registered_model_alias(name, "candidate", version.version)
    print(f"registered {len(model_names)} models in {time.perf_counter() - started:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--lookups", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        client = MlflowClient()
        meta = {"kind": "pretrained", "backbone": {"arch": "ttm"}, "channels": ["PPG", "ECG"]}
        path = save_checkpoint(Path(tmp) / "ckpt", {"w": torch.zeros(4)}, meta)
        with mlflow.start_run() as run:
            mlflow.log_artifacts(str(path), "checkpoint")
        model_names = names(args.models)
        populate(client, f"{run.info.artifact_uri}/checkpoint", run.info.run_id, model_names)
        rng = random.Random(0)
        print(f"{'form':<16}{'p50 ms':>9}{'p95 ms':>9}{'p50/20ms':>10}")
        for form, spec in (("NAME@candidate", "{}@candidate"), ("NAME/1", "{}/1"), ("NAME (latest)", "{}")):
            times = []
            for _ in range(args.lookups):
                name = rng.choice(model_names)
                started = time.perf_counter()
                resolved = resolve_checkpoint(spec.format(name), client=client, expected_arch="ttm")
                times.append((time.perf_counter() - started) * 1000)
                assert resolved.name == name
            p50 = statistics.median(times)
            p95 = statistics.quantiles(times, n=20)[18]
            print(f"{form:<16}{p50:>9.2f}{p95:>9.2f}{p50 / TARGET_MS:>10.2f}")
        times = []
        for _ in range(max(10, args.lookups // 4)):
            name = rng.choice(model_names)
            started = time.perf_counter()
            show(client, name)
            times.append((time.perf_counter() - started) * 1000)
        print(f"{'registry show':<16}{statistics.median(times):>9.2f}{statistics.quantiles(times, n=20)[18]:>9.2f}"
              f"{'':>10}  (one model among {len(model_names)}; no target)")


if __name__ == "__main__":
    main()
