"""Batched metric logging: one log_batch call per flush instead of one request per value, each name
logged under its namespaced key (tracking.metric_names: `test_auroc` -> `test/auroc`).

Per-call log_metric is ~90/s on SQLite and ~14/s against a server (measured on MLflow 3.17).
"""

from __future__ import annotations

import time
from typing import Mapping

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from biosig.tracking.metric_names import logged_key

MAX_BATCH = 1000  # MLflow's per-request metric limit


class MetricBatcher:
    """Buffer metrics and flush them in batches (at `flush_every` values, on flush() and on close).

    `flush(wait=False)` hands the batch to MLflow's background logging thread, so a training loop can
    publish each epoch without waiting for the store; `flush()` (wait=True) also waits for those.
    """

    def __init__(self, client: MlflowClient, run_id: str, flush_every: int = 500) -> None:
        self._client = client
        self._run_id = run_id
        self._flush_every = flush_every
        self._buffer: list[Metric] = []
        self._pending: list = []  # RunOperations of asynchronous batches
        self._model_id: str | None = None
        self._dataset: tuple[str, str] | None = None

    def link(self, model_id: str, dataset: tuple[str, str] | None = None) -> None:
        """From now on the model's results also belong to logged model `model_id` (evaluated on `dataset`: its
        MLflow name and digest), whose page then shows them once each: values logged at step 0 (summaries)
        and those logged as `result` (test metrics at the best epoch), not the per-epoch curves (those stay
        on the run)."""
        self._model_id, self._dataset = model_id, dataset

    def log(self, metrics: Mapping[str, float], step: int = 0, *, result: bool = False) -> None:
        now = int(time.time() * 1000)
        linked = result or step == 0
        model_id = self._model_id if linked else None
        name, digest = self._dataset if (self._dataset and linked) else (None, None)
        for key, value in metrics.items():
            self._buffer.append(Metric(key=logged_key(key), value=float(value), timestamp=now, step=int(step),
                                       model_id=model_id, dataset_name=name, dataset_digest=digest))
        if len(self._buffer) >= self._flush_every:
            self.flush()

    def flush(self, wait: bool = True) -> None:
        while self._buffer:
            batch, self._buffer = self._buffer[:MAX_BATCH], self._buffer[MAX_BATCH:]
            if wait:
                self._client.log_batch(self._run_id, metrics=batch, synchronous=True)
            else:
                self._pending.append(self._client.log_batch(self._run_id, metrics=batch, synchronous=False))
        if wait:
            pending, self._pending = self._pending, []
            for operation in pending:
                operation.wait()  # re-raises a failed background write
