"""`mlflow models serve` of a registered fine-tuned model, started for real: the named-tensor JSON input
and the compact parquet input give the same probabilities as loading the model in-process, and a
request that lacks a channel is refused with HTTP 400 naming it."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import mlflow
import numpy as np
import pytest

from biosig.cli import main
from biosig.data.synthetic import synthetic_cardio
from biosig.registry.pyfunc import PARQUET_CONTENT_TYPE, as_model_input, parquet_request
from tests.helpers import TINY_FINETUNE, TINY_NAME, free_port

FINETUNED = f"{TINY_NAME}_finetuned"


def post(url: str, body: bytes, content_type: str) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture
def served(pretrained, workdir):
    assert main(["finetune", "--pretrain-config", str(pretrained), *TINY_FINETUNE]) == 0
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{FINETUNED}@candidate",
         "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
        cwd=workdir, stdout=subprocess.DEVNULL, stderr=open(workdir / "serve.log", "wb"), start_new_session=True,
        env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}",
             "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ.get('PATH', '')}"})  # uvicorn
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"mlflow models serve did not start: {(workdir / 'serve.log').read_text()[-2000:]}")
                time.sleep(0.5)
        yield base
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.integration
def test_json_and_parquet_requests_agree_with_the_model(served):
    ws = synthetic_cardio(n_subjects=2, windows_per_subject=4, with_acc=True, window_s=10.0, seed=9)
    expected = mlflow.pyfunc.load_model(f"models:/{FINETUNED}@candidate").predict(as_model_input(ws.signals, ws.channels))
    named = {"inputs": {c: ws.signals[:, i, :].tolist() for i, c in enumerate(ws.channels)}}
    status, body = post(f"{served}/invocations", json.dumps(named).encode(), "application/json")
    assert status == 200, body[:500]
    from_json = json.loads(body)["predictions"]
    status, body = post(f"{served}/invocations", parquet_request(ws.signals, ws.channels), PARQUET_CONTENT_TYPE)
    assert status == 200, body[:500]
    from_parquet = json.loads(body)["predictions"]
    for rows in (from_json, from_parquet):
        got = np.array([[row[c] for c in expected.columns] for row in rows])
        np.testing.assert_allclose(got, expected.to_numpy(), atol=1e-6)

    no_ecg = [c for c in ws.channels if c != "ECG"]
    status, body = post(f"{served}/invocations", parquet_request(ws.signals[:, :-1], no_ecg), PARQUET_CONTENT_TYPE)
    assert status == 400 and b"ECG" in body, body[:500]
