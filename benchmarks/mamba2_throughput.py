"""Mamba-2 pure-PyTorch path on CPU: training throughput (windows/s, forward + backward + AdamW step) of
the EEG backbone, d_model 256, 2 layers, batch 32, 4 channels x 2048 samples, patch 16.

Prints the median of several timed steps per configuration and the ratio to the issue's reference
(~7-13 windows/s for per-channel patches, 2 threads). Set OMP_WAIT_POLICY=PASSIVE (done here): with 2
threads step times swing several-fold without it.

    python benchmarks/mamba2_throughput.py [--threads 2] [--steps 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

from biosig.backbones import build_backbone
from biosig.models.masking import MaskedTokenModel

MUSE = ["AF7", "AF8", "TP9", "TP10"]
REFERENCE_WINDOWS_PER_S = 7.0  # the low end for per-channel patches, 2 threads


def measure(config: dict, *, objective: str | None, batch: int, steps: int) -> float:
    torch.manual_seed(0)
    backbone = build_backbone("mamba2", MUSE, config)
    model = MaskedTokenModel(backbone, objective, 0.2) if objective else backbone
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 4, config["context_length"])
    generator = torch.Generator().manual_seed(0)
    times = []
    for i in range(steps + 1):
        started = time.perf_counter()
        loss = model(x, generator)[0] if objective else model(x).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if i:  # the first step warms allocators up
            times.append(time.perf_counter() - started)
    return batch / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base = {"context_length": 2048, "patch_length": 16, "d_model": 256, "num_layers": 2}
    rows = [
        ("per-channel, unidirectional, backbone only", {**base, "bidirectional": False}, None),
        ("per-channel, bidirectional, backbone only", {**base, "bidirectional": True}, None),
        ("per-channel, bidirectional, MAE pretraining step", {**base, "bidirectional": True}, "mae"),
        ("per-channel, bidirectional, BERT pretraining step", {**base, "bidirectional": True}, "bert"),
        ("joint-channel, bidirectional, backbone only", {**base, "tokenization": "joint"}, None),
    ]
    print(f"threads {args.threads}, batch {args.batch}, d_model 256, 2 layers, 4 x 2048 samples, patch 16")
    for label, config, objective in rows:
        rate = measure(config, objective=objective, batch=args.batch, steps=args.steps)
        print(f"  {label:50s} {rate:7.1f} windows/s  ratio to {REFERENCE_WINDOWS_PER_S:g}/s: "
              f"{rate / REFERENCE_WINDOWS_PER_S:.2f}")


if __name__ == "__main__":
    main()
