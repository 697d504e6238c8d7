"""The MLflow pyfunc form of a fine-tuned classifier (or of a `features` reference model): windows in,
class probabilities out.

Input (enforced by the signature): a DataFrame with one column per channel whose cells are arrays of
`n_samples` floats (the layout of biosig's parquet datasets, so `pd.read_parquet(file)` works as is;
extra columns are ignored) or a dict {channel: float32 array [N, n_samples]}; `as_model_input` turns an
[N, C, T] array into that dict. Served (`mlflow models serve`), the same model takes JSON named tensors
(`{"inputs": {channel: [[...], ...]}}`) or, ~10x faster to parse, a parquet body of that DataFrame
(`parquet_request`, Content-Type application/vnd.apache.parquet). Output: a DataFrame with one probability column per class.
Preprocessing (channel order by name, context fit, training normalisation) comes from the checkpoint's
biosig.json, so it is exactly what fine-tuning used. A features reference (`kind: features_reference`)
takes the same input and computes its window features from the raw windows instead.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.models import Model, ModelSignature
from mlflow.types import ColSpec, Schema, TensorSpec

import biosig
from biosig.backbones import build_classifier
from biosig.data.adapt import prepare_windows, select_channels
from biosig.errors import DataError
from biosig.models.checkpoint import FINETUNED_KEYS, load_weights, read_meta, require_keys
from biosig.tracking.run import logged_model_name
from biosig.tracking.tags import KIND_TAG, PARENT_NAME_TAG, PARENT_VERSION_TAG
from biosig.training.calibration import apply_calibration
from biosig.training.reference import FeatureModel

FEATURES_KIND = "features_reference"

PREDICT_BATCH = 256
MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")


def tolerate_any_dataframe_index() -> None:
    """MLflow 3.17's tensor-signature check reads `column[0]` by label, so a DataFrame whose index lacks 0
    (`df[df.subject == "S005"]`, `df.sample(8)`) fails with `Error: 0` before the model sees it. Wrap
    that check to read the column positionally; the input contract (the signature) is unchanged."""
    from mlflow.models import utils

    original = getattr(utils, "_reshape_and_cast_pandas_column_values", None)
    if original is None or getattr(original, "biosig_positional", False):
        return

    def positional(name, pd_series, tensor_spec):
        return original(name, pd_series.reset_index(drop=True), tensor_spec)

    positional.biosig_positional = True
    utils._reshape_and_cast_pandas_column_values = positional


def frames_in_frames_out() -> None:
    """A DataFrame in gives a DataFrame out on the same index: MLflow's schema enforcement turns the frame
    into arrays (predictions came back on 0..n-1), warns about every column beside the channels (the
    dataset's own subject/label columns, documented as accepted), fails on an empty frame with `Error: 0`
    and puts a 0.4-2.2 KB dump of the frame before the useful words. For biosig's window classifiers only,
    PyFuncModel.predict keeps the input index, passes only the channel columns, and checks the frame itself:
    no rows, a missing channel or a wrong window length is one line naming it."""
    from mlflow.pyfunc import PyFuncModel

    original = PyFuncModel.predict
    if getattr(original, "biosig_frames", False):
        return

    def predict(self, data, params=None):
        classifier = _window_classifier(self)
        if classifier is None or not isinstance(data, pd.DataFrame):
            return original(self, data, params=params)
        spec = classifier.meta["input"]
        _check_frame(data, spec["channels"], spec["n_samples"])
        out = original(self, data[spec["channels"]], params=params)
        out.index = data.index
        return out

    predict.biosig_frames = True
    PyFuncModel.predict = predict


def _window_classifier(model) -> "WindowClassifier | None":
    try:
        inner = model.unwrap_python_model()
    except Exception:  # not a python model (a flavour MLflow loads natively)
        return None
    return inner if isinstance(inner, WindowClassifier) else None


def _check_frame(data: pd.DataFrame, channels: list[str], n_samples: int) -> None:
    """One line, as an INVALID_PARAMETER_VALUE (HTTP 400 when served), for a frame the model cannot take."""
    from mlflow.exceptions import MlflowException

    if data.empty:
        raise MlflowException.invalid_parameter_value(
            f"the model input has no rows: send at least one window (columns {channels}, {n_samples} samples each)")
    missing = [c for c in channels if c not in data.columns]
    if missing:
        raise MlflowException.invalid_parameter_value(
            f"model input lacks channel column(s) {missing}; expected one column per channel {channels}, each "
            f"holding windows of {n_samples} samples")
    for channel in channels:
        lengths = {len(np.atleast_1d(v)) for v in data[channel].head(1000)}
        if lengths - {n_samples}:
            raise MlflowException.invalid_parameter_value(
                f"column {channel!r} holds windows of {sorted(lengths)[:5]} samples; the model takes {n_samples} "
                f"per window (channels {channels})")


tolerate_any_dataframe_index()  # every process that loads a biosig pyfunc imports this module


def as_model_input(signals: np.ndarray, channels: list[str]) -> dict[str, np.ndarray]:
    """[N, C, T] windows -> {channel: float32 [N, T]} as the pyfunc signature expects."""
    return {c: np.ascontiguousarray(signals[:, i, :], dtype=np.float32) for i, c in enumerate(channels)}


#: The compact request body of `mlflow models serve` (MLflow's scoring server reads it with pd.read_parquet).
PARQUET_CONTENT_TYPE = "application/vnd.apache.parquet"


def parquet_request(signals: np.ndarray, channels: list[str]) -> bytes:
    """[N, C, T] windows as a parquet request body (Content-Type PARQUET_CONTENT_TYPE): one float32 list
    column per channel, the layout of biosig's datasets. Measured for 32 windows of 5 x 1250 samples:
    ~1.2 MB instead of 4.1 MB of JSON, and no JSON parsing on the server (benchmarks/serving.py)."""
    import io

    frame = pd.DataFrame({c: list(np.ascontiguousarray(signals[:, i, :], dtype=np.float32))
                          for i, c in enumerate(channels)})
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def signature(meta: dict[str, Any]) -> ModelSignature:
    n = meta["input"]["n_samples"]
    inputs = Schema([TensorSpec(np.dtype(np.float32), (-1, n), c) for c in meta["input"]["channels"]])
    outputs = Schema([ColSpec("double", name) for name in meta["class_names"]])
    return ModelSignature(inputs=inputs, outputs=outputs)


#: Where a serving environment (`mlflow models build-docker`, `--env-manager virtualenv`) gets torch: the
#: CPU wheels, so a CPU image does not pull 2.7 GB of CUDA libraries (pip prefers 2.11.0+cpu over 2.11.0).
#: Logging with BIOSIG_SERVING_TORCH_INDEX="" records plain PyPI torch instead (GPU images).
SERVING_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"


def pip_requirements() -> list[str]:
    """Pinned to what trained the model; given explicitly so that logging skips MLflow's inference."""
    import os
    from importlib.metadata import version

    index = os.environ.get("BIOSIG_SERVING_TORCH_INDEX", SERVING_TORCH_INDEX)
    pinned = [f"{pkg}=={version(pkg).split('+')[0]}" for pkg in
              ("mlflow", "torch", "granite-tsfm", "numpy", "pandas", "scipy", "safetensors", "pyyaml",
               "scikit-learn", "skops")]
    return ([f"--extra-index-url {index}"] if index else []) + pinned


def log_pyfunc(checkpoint: Path, meta: dict[str, Any], model_id: str | None = None):
    """Log the fine-tuned checkpoint as a pyfunc logged model of the active run, named after the model's
    registered name (meta `name`); with `model_id`, into the logged model the run began (so the metrics
    already linked to it stay exactly as logged: `log_model(model_id=…)` would copy step-0 run metrics
    onto it a second time). Models-from-code (no pickle), biosig's source as code_paths so the model
    loads wherever the pinned requirements are installed; explicit pip_requirements keep MLflow from
    inferring them (~5 s). Returns the ModelInfo (`model_uri`, `model_id`)."""
    options = dict(python_model=str(MODEL_CODE), artifacts={"checkpoint": str(checkpoint)}, signature=signature(meta),
                   pip_requirements=pip_requirements(), code_paths=[str(Path(biosig.__file__).parent)])
    with warnings.catch_warnings():
        # The signature is set explicitly; an input example would re-run the model at logging time.
        warnings.filterwarnings("ignore", message=".*input example")
        if model_id is None:
            return mlflow.pyfunc.log_model(name=logged_model_name(meta.get("name", "")), model_type=meta.get("kind"),
                                           params=model_params(meta), **options)
        from biosig.registry.publish import publish_model_files

        client = mlflow.MlflowClient()
        client.log_model_params(model_id, model_params(meta))
        model = client.get_logged_model(model_id)
        run_id = mlflow.active_run().info.run_id
        with tempfile.TemporaryDirectory() as tmp:
            mlflow.pyfunc.save_model(f"{tmp}/model", mlflow_model=Model(
                artifact_path=model.artifact_location, run_id=run_id, model_id=model_id, model_uuid=model_id), **options)
            publish_model_files(model_id, Path(tmp) / "model", run_id=run_id)
        return mlflow.models.get_model_info(f"models:/{model_id}")


def model_params(meta: dict[str, Any]) -> dict[str, str]:
    """What a logged model's page lists as its parameters: task, classes, input and provenance."""
    provenance, model_input = meta.get("provenance", {}), meta.get("input", {})
    parent = provenance.get("parent") or {}
    params = {"task": meta.get("task"), "class_names": ",".join(meta.get("class_names", [])),
              "channels": ",".join(model_input.get("channels", [])), "fs": model_input.get("fs"),
              "n_samples": model_input.get("n_samples"), "dataset": provenance.get("dataset"),
              "best_epoch": provenance.get("best_epoch"),
              "parent": "/".join(filter(None, (parent.get(PARENT_NAME_TAG), parent.get(PARENT_VERSION_TAG))))}
    return {k: str(v)[:500] for k, v in params.items() if v not in (None, "")}


class WindowClassifier(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper around a fine-tuned checkpoint directory (artifact key `checkpoint`)."""

    # The explicit signature (named per-channel tensors) is the input contract, not predict() type hints.
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        self.load(Path(context.artifacts["checkpoint"]))

    def load(self, path: Path) -> "WindowClassifier":
        self.meta = read_meta(path)
        if self.meta.get("kind") == FEATURES_KIND:
            require_keys(self.meta, ("channels", "class_names", "input"), str(path))
            self.features = FeatureModel.load(path, self.meta)
            return self
        self.features = None
        require_keys(self.meta, FINETUNED_KEYS, str(path))
        self.model = build_classifier(self.meta)
        load_weights(path, self.model)
        self.model.eval()
        return self

    @torch.inference_mode()
    def logits(self, prepared: np.ndarray) -> np.ndarray:
        """Raw class scores for already prepared windows [N, C, context] (batches of PREDICT_BATCH)."""
        out = [self.model(torch.from_numpy(prepared[i:i + PREDICT_BATCH])).float().numpy()
               for i in range(0, len(prepared), PREDICT_BATCH)]
        return np.concatenate(out) if out else np.zeros((0, len(self.meta["class_names"])), np.float32)

    def predict(self, context, model_input, params: dict[str, Any] | None = None) -> pd.DataFrame:
        spec = self.meta["input"]
        x = _windows(model_input, spec["channels"])
        _refuse_non_finite(x, spec["channels"])
        if self.features is not None:
            x = select_channels(x, spec["channels"], self.meta["channels"], "the model input")
            return pd.DataFrame(self.features.predict_proba(x), columns=self.meta["class_names"])
        x = prepare_windows(x, spec["channels"], spec["fs"], self.meta, where="the model input")
        prob = apply_calibration(self.meta.get("calibration"), self.logits(x))
        return pd.DataFrame(prob.astype(np.float64), columns=self.meta["class_names"])


def load_window_classifier(reference: str) -> tuple[WindowClassifier, Any]:
    """A registered fine-tuned model (NAME@alias, NAME/3, models:/…) as its pyfunc wrapper + version."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from biosig.registry.discovery import resolve_version
    from biosig.registry.publish import CANDIDATE_ALIAS

    version = resolve_version(MlflowClient(), reference, bare=CANDIDATE_ALIAS)
    name = version.name
    kind = version.tags.get(KIND_TAG, "")
    if kind and kind != "finetuned":
        raise DataError(f"{reference} is a {kind} model, not a fine-tuned classifier: evaluate takes a "
                        f"`…_finetuned` name (fine-tune it first: biosig finetune --checkpoint {name})")
    try:
        model = mlflow.pyfunc.load_model(f"models:/{name}/{version.version}")
    except (MlflowException, OSError) as exc:
        raise DataError(f"{reference} cannot be loaded as an MLflow pyfunc model "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    wrapper = model.unwrap_python_model()
    if not isinstance(wrapper, WindowClassifier) or wrapper.features is not None:
        raise DataError(f"{reference} is not a biosig fine-tuned classifier"
                        f"{' (it is a features reference model)' if isinstance(wrapper, WindowClassifier) else ''}")
    return wrapper, version


def _refuse_non_finite(x: np.ndarray, channels: list[str]) -> None:
    """NaN probabilities are not an answer (and not valid JSON): name the windows instead. An
    MlflowException with INVALID_PARAMETER_VALUE is what `mlflow models serve` turns into HTTP 400."""
    bad = ~np.isfinite(x)
    if not bad.any():
        return
    from mlflow.exceptions import MlflowException

    rows = np.flatnonzero(bad.any(axis=(1, 2)))
    where = sorted({channels[c] for c in np.flatnonzero(bad.any(axis=(0, 2)))})
    raise MlflowException.invalid_parameter_value(
        f"{len(rows)} input window(s) contain NaN or infinite samples (rows {rows[:10].tolist()}"
        f"{' ...' if len(rows) > 10 else ''}, channels {where}): interpolate or drop them before predicting")


def _windows(model_input: Any, channels: list[str]) -> np.ndarray:
    if isinstance(model_input, np.ndarray):
        if model_input.ndim != 3 or model_input.shape[1] != len(channels):
            raise DataError(f"expected windows [N, {len(channels)}, T] for channels {channels}, "
                            f"got an array of shape {model_input.shape}")
        return model_input.astype(np.float32, copy=False)
    if isinstance(model_input, pd.DataFrame):
        model_input = {c: np.stack(model_input[c].to_numpy()) for c in channels if c in model_input}
    missing = [c for c in channels if c not in model_input]
    if missing:
        raise DataError(f"model input lacks channel(s) {missing}; expected {channels}")
    return np.stack([np.asarray(model_input[c], dtype=np.float32) for c in channels], axis=1)


frames_in_frames_out()  # after WindowClassifier exists: the check reads it
