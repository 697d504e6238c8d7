"""Serving latency: 32-window requests to `mlflow models serve`, named-tensor JSON vs the parquet body.

Fine-tunes the default TTM briefly (5 channels x 1250 samples, BUT-PPG-like), registers it, starts
`mlflow models serve` for real and times --requests requests of each kind, interleaved so machine load
hits both alike. Prints p50/p95 and body sizes of each and the ratio JSON p50 / parquet p50
(target >= 3).

    python benchmarks/serving.py [--windows 32 --requests 40]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import pretrained_checkpoint, use_store

from biosig.commands.finetune import FinetuneConfig, run_finetune
from biosig.config import load_config
from biosig.data.synthetic import synthetic_cardio
from biosig.registry.pyfunc import PARQUET_CONTENT_TYPE, parquet_request


def start_server(model_uri: str, port: int, log: Path) -> subprocess.Popen:
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager",
                               "local", "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=log.open("wb"), start_new_session=True,
                              env={**os.environ,  # the server execs uvicorn from this interpreter's bin/
                                   "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ.get('PATH', '')}"})
    deadline = time.monotonic() + 300
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                return server
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"mlflow models serve did not start:\n{log.read_text()[-3000:]}") from None
            time.sleep(0.5)


def timed_post(url: str, body: bytes, content_type: str) -> float:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as response:
        response.read()
    return time.perf_counter() - started


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=32)
    parser.add_argument("--requests", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        use_store(Path(tmp))
        config = load_config(FinetuneConfig, None, {"checkpoint": pretrained_checkpoint(), "n_subjects": 8,
                                                    "stage1_epochs": 1, "stage2_epochs": 0, "bootstrap": 0,
                                                    "experiment": "benchmarks", "system_metrics": False})
        name = run_finetune(config).name
        ws = synthetic_cardio(n_subjects=args.windows // 10 + 1, with_acc=True, window_s=10.0, seed=5)
        signals = ws.signals[:args.windows]
        bodies = {
            "json (named tensors)": (json.dumps({"inputs": {c: signals[:, i, :].tolist()
                                                            for i, c in enumerate(ws.channels)}}).encode(),
                                     "application/json"),
            "parquet": (parquet_request(signals, ws.channels), PARQUET_CONTENT_TYPE),
        }
        port = free_port()
        server = start_server(f"models:/{name}@candidate", port, Path(tmp) / "serve.log")
        url = f"http://127.0.0.1:{port}/invocations"
        try:
            times: dict[str, list[float]] = {label: [] for label in bodies}
            for body, content_type in bodies.values():  # warm-up
                timed_post(url, body, content_type)
            for _ in range(args.requests):
                for label, (body, content_type) in bodies.items():
                    times[label].append(timed_post(url, body, content_type))
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
    print(f"{args.windows} windows x {len(ws.channels)} channels x {ws.n_samples} samples, "
          f"{args.requests} requests each through `mlflow models serve`")
    for label, (body, _) in bodies.items():
        print(f"  {label:<22} p50 {statistics.median(times[label]) * 1000:7.1f} ms  "
              f"p95 {percentile(times[label], 95) * 1000:7.1f} ms  body {len(body) / 1e6:5.2f} MB")
    ratio = statistics.median(times["json (named tensors)"]) / statistics.median(times["parquet"])
    print(f"  parquet speed-up (JSON p50 / parquet p50): {ratio:.1f}x (target >= 3: {'met' if ratio >= 3 else 'NOT met'})")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    main()
