"""MLflow run lifecycle for every biosig command.

`tracked_run` sets the tracking store and experiment, attaches to the run that `mlflow run` created
(MLFLOW_RUN_ID) or starts one, records the environment and the resolved config (secrets redacted),
batches metrics, and always ends the run: FINISHED on success, FAILED with the error as a tag on any
exception, KILLED on Ctrl-C or SIGTERM. No run is ever left RUNNING by biosig.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import tempfile
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import mlflow
import yaml
from mlflow.entities import Param, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from biosig.config import BaseConfig
from biosig.errors import Terminated, TrackingError
from biosig.logs import get_logger
from biosig.secrets import has_password, redact, redact_value
from biosig.tracking.environment import environment
from biosig.tracking.liveness import heartbeat, heartbeat_seconds, owner_tags
from biosig.tracking.metric_names import SIZE_PARAM_PREFIX
from biosig.tracking.metrics import MetricBatcher
from biosig.tracking.tags import (
    CHANNEL_MAPPING_TAG,
    CHANNELS_DROPPED_TAG,
    CLASS_WEIGHTS_TAG,
    COLLAPSED_CLASSES_TAG,
    COMMAND_TAG,
    ERROR_TAG,
    ERROR_TYPE_TAG,
    NORMALISATION_TAG,
    NOTE_CHANNELS_TAG,
    NOTE_NORMALISATION_TAG,
    NOTE_TAG,
    RUN_NAME_TAG,
    SELECTION_FALLBACK_TAG,
    WARNING_TAG,
)

if TYPE_CHECKING:
    from biosig.training.classifier import BuiltClassifier
    from biosig.training.labelled import LabelledSplits
    from biosig.training.trainer import FitOutcome

log = get_logger(__name__)

MAX_PARAM_LENGTH = 6000


def resolve_tracking_uri(configured: str = "") -> str:
    """Config value > $MLFLOW_TRACKING_URI > sqlite:///<cwd>/mlflow.db (never the file store)."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri:
        uri = f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    if uri.startswith("sqlite:///"):
        _require_writable_sqlite(Path(uri[len("sqlite:///"):]), uri)
    if has_password(uri):  # MLflow would print it in every "View run … at:" line
        raise TrackingError(
            f"the tracking URI {redact_value(uri)} holds a password: pass it without one and set "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (a postgresql:// store: PGPASSWORD or ~/.pgpass)")
    if uri.startswith("file:") or (("://" not in uri) and not uri.startswith("databricks")):
        raise TrackingError(
            f"tracking_uri {redact_value(uri)!r} is a file store, which biosig does not use: "
            "use sqlite:///path/mlflow.db, postgresql://… or http(s)://server"
        )
    return uri


def _require_writable_sqlite(db: Path, uri: str) -> None:
    """SQLite creates the file but not its folder; say so instead of a 70-line SQLAlchemy traceback."""
    folder = db.parent
    if not folder.is_dir():
        raise TrackingError(f"tracking store {uri}: the folder {folder} does not exist (or is a file)")
    if (db.exists() and not os.access(db, os.W_OK)) or not os.access(folder, os.W_OK):
        raise TrackingError(f"tracking store {uri} is not writable by this user")


def check_reachable(uri: str) -> None:
    """One line, in seconds, for a store biosig cannot talk to: a server that does not answer (MLflow would
    retry for minutes), or a database URI whose driver is not installed (a 70-line traceback)."""
    if uri.startswith(("http://", "https://")):
        import requests

        try:
            requests.get(f"{uri.rstrip('/')}/health", timeout=REACH_TIMEOUT_S)
        except requests.RequestException as exc:
            raise TrackingError(f"tracking server {redact_value(uri)} does not answer ({type(exc).__name__}): start "
                                "it (`biosig server`) or check the URI") from None
    elif "://" in uri and not uri.startswith(("sqlite:", "databricks")):
        from sqlalchemy.engine import make_url

        try:
            make_url(uri).get_dialect().import_dbapi()  # imports the driver, connects to nothing
        except Exception as exc:  # NoSuchModuleError, ModuleNotFoundError of the driver, bad URL
            raise TrackingError(f"tracking store {redact_value(uri)}: no database driver for it here "
                                f"({type(exc).__name__}: {exc}); postgresql:// works out of the box") from None


REACH_TIMEOUT_S = 10


def configure_tracking(configured_uri: str = "") -> str:
    heartbeat_seconds()  # an unusable $BIOSIG_HEARTBEAT_S is one line now, not a traceback inside a run
    uri = resolve_tracking_uri(configured_uri)
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def logged_model_name(name: str) -> str:
    """A registered name as an MLflow logged-model name (which may not hold / : . % " ')."""
    return re.sub(r"[/:.%\"']", "-", name) or "model"


class RunContext:
    """What a command sees of its run: ids, batched metrics, artifact helpers."""

    def __init__(self, run: mlflow.ActiveRun, client: MlflowClient) -> None:
        self.run = run
        self.run_id = run.info.run_id
        self.client = client
        self.metrics = MetricBatcher(client, self.run_id)
        self._cleanups: list[Callable[[], None]] = []
        self.model_id: str | None = None  # the run's logged model, once begin_model created it
        self.registered = ""  # NAME/version this run registered, printed when it ends
        self.named = False  # True when the user chose the run name (config key run_name)

    def name_run(self, name: str) -> None:
        """A readable run name from the command and its subject (`pretrain ttm_ppg-ecg_…`, `evaluate NAME/3`)
        instead of MLflow's random one, unless the user chose a name."""
        if not self.named:
            self.client.set_tag(self.run_id, RUN_NAME_TAG, name[:250])

    def describe(self, text: str) -> None:
        """The run's description in the MLflow UI (markdown): what it used, what it found, what it registered."""
        self.client.set_tag(self.run_id, NOTE_TAG, redact_value(text)[:5000])

    def log_metrics(self, metrics: dict[str, float], step: int = 0, *, result: bool = False) -> None:
        """Batched; with a logged model begun, values at step 0 and `result`s (e.g. test metrics at the best
        epoch) are linked to it, per-epoch curves stay on the run."""
        self.metrics.log(metrics, step, result=result)

    def flush_metrics(self, wait: bool = True) -> None:
        """Send the batched metrics now (`wait=False`: in the background)."""
        self.metrics.flush(wait=wait)

    def log_sizes(self, sizes: dict[str, int]) -> None:
        """Counts of a run (windows, parameters) as params `size.<name>`: one value each, so they sit in the
        params table rather than as single-point charts; a resumed run's equal values are not sent again."""
        existing = self.client.get_run(self.run_id).data.params
        params = [Param(SIZE_PARAM_PREFIX + k, str(int(v))) for k, v in sizes.items()
                  if existing.get(SIZE_PARAM_PREFIX + k) != str(int(v))]
        if params:
            self.client.log_batch(self.run_id, params=params, synchronous=True)

    def begin_model(self, name: str, *, model_type: str, dataset: tuple[str, str] | None = None,
                    params: dict[str, Any] | None = None) -> str:
        """Create the run's MLflow 3 logged model (PENDING) before training, so that every metric logged
        from then on (epochs, test) is linked to it and to `dataset` (MLflow name, digest): its model page
        shows them and `search_logged_models` filters on them. The command fills and finalises it
        (log_pyfunc / log_checkpoint_model with `model_id`); a run that fails leaves it FAILED."""
        model = mlflow.initialize_logged_model(
            name=logged_model_name(name), source_run_id=self.run_id, model_type=model_type,
            params={k: (",".join(map(str, v)) if isinstance(v, list) else str(v))[:500]
                    for k, v in (params or {}).items() if v not in (None, "")})
        self.model_id = model.model_id
        self.metrics.link(model.model_id, dataset)
        self.on_failure(lambda: mlflow.finalize_logged_model(model.model_id, "FAILED"))
        return model.model_id

    def set_tags(self, tags: dict[str, Any]) -> None:
        mlflow.set_tags({k: redact_value(str(v)) for k, v in tags.items()})

    def log_dict(self, data: Any, artifact_file: str) -> None:
        mlflow.log_dict(data, artifact_file)

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        mlflow.log_artifact(str(local_path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        mlflow.log_text(text, artifact_file)

    def log_table(self, table, artifact_file: str) -> None:
        """A DataFrame as a `.json` table the MLflow UI previews (and compares across runs)."""
        mlflow.log_table(table, artifact_file)

    def log_artifacts(self, local_dir: str | Path, artifact_path: str | None = None) -> None:
        mlflow.log_artifacts(str(local_dir), artifact_path)

    def find_run(self, run_id: str):
        """The run with this id, or None when the store has none."""
        try:
            return self.client.get_run(run_id)
        except MlflowException:
            return None

    def download_artifacts(self, run_id: str, artifact_path: str, dst: str | Path) -> Path | None:
        """A run's artifact directory downloaded under `dst`, or None when the run did not log it."""
        try:
            return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path,
                                                            dst_path=str(dst)))
        except (MlflowException, OSError):
            return None

    def on_failure(self, cleanup: Callable[[], None]) -> None:
        """Register an undo step (e.g. delete an output file) run if the command fails."""
        self._cleanups.append(cleanup)

    def _undo(self) -> None:
        for cleanup in reversed(self._cleanups):
            with contextlib.suppress(Exception):
                cleanup()


class _NoMetrics:
    def log(self, metrics: dict[str, float], step: int = 0, *, result: bool = False) -> None:
        pass

    def flush(self, wait: bool = True) -> None:
        pass


class FollowerContext:
    """The RunContext of a non-leader process in multi-process training (torchrun): the leader (rank 0)
    owns the one MLflow run, so every tracking call here does nothing and nothing is registered twice."""

    run = None
    run_id = ""
    metrics = _NoMetrics()

    def log_metrics(self, metrics: dict[str, float], step: int = 0, *, result: bool = False) -> None:
        pass

    def flush_metrics(self, wait: bool = True) -> None:
        pass

    def log_sizes(self, sizes: dict[str, int]) -> None:
        pass

    def begin_model(self, name: str, *, model_type: str, dataset: tuple[str, str] | None = None,
                    params: dict[str, Any] | None = None) -> str:
        return ""

    def set_tags(self, tags: dict[str, Any]) -> None:
        pass

    def log_dict(self, data: Any, artifact_file: str) -> None:
        pass

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def log_text(self, text: str, artifact_file: str) -> None:
        pass

    def log_table(self, table, artifact_file: str) -> None:
        pass

    def log_artifacts(self, local_dir: str | Path, artifact_path: str | None = None) -> None:
        pass

    def on_failure(self, cleanup: Callable[[], None]) -> None:
        pass

    def name_run(self, name: str) -> None:
        pass

    def describe(self, text: str) -> None:
        pass


@contextlib.contextmanager
def tracked_run(command: str, config: BaseConfig, *, tags: dict[str, str] | None = None,
                nested: bool = False, parent_run_id: str | None = None,
                param_keys: tuple[str, ...] | None = None) -> Iterator[RunContext]:
    """`nested`: a child of the active run; `parent_run_id`: a child of that run, from any process;
    `param_keys`: the config keys this run logs as params (default all; run/config.yaml holds all anyway)."""
    uri = configure_tracking(config.tracking_uri)
    client = MlflowClient()
    nested = nested or parent_run_id is not None
    with _auth_errors(uri):
        run = _start(client, config, nested, parent_run_id)
    ctx = RunContext(run, client)
    ctx.named = bool(config.run_name)
    ctx.name_run(command)  # refined by the command once its subject is known
    previous = _install_sigterm()
    status = RunStatus.to_string(RunStatus.FINISHED)
    try:
        _record_setup(ctx, command, config, {**(tags or {}), **owner_tags()}, param_keys)
        with heartbeat(client, ctx.run_id):
            yield ctx
        ctx.metrics.flush()
        if not nested:
            _print_done(ctx, uri)
    except BaseException as exc:
        status = RunStatus.to_string(RunStatus.KILLED if isinstance(exc, (KeyboardInterrupt, Terminated))
                                     else RunStatus.FAILED)
        _record_failure(ctx, exc)
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        mlflow.end_run(status=status)


def ui_base(uri: str) -> str:
    """Where the MLflow UI of this tracking store is: the server itself, or `mlflow ui`'s default address."""
    return uri.rstrip("/") if uri.startswith("http") else "http://127.0.0.1:5000"


def _print_done(ctx: RunContext, uri: str) -> None:
    """Every command ends with its run id, where to see it and what it registered."""
    url = f"{ui_base(uri)}/#/experiments/{ctx.run.info.experiment_id}/runs/{ctx.run_id}"
    log.info(f"run {ctx.run_id}: {url}" + (f"  (registered {ctx.registered})" if ctx.registered else "")
             + ("" if uri.startswith("http") else f"  [UI: mlflow ui --backend-store-uri {redact_value(uri)}]"))


@contextlib.contextmanager
def _env_run_id_hidden() -> Iterator[None]:
    saved = os.environ.pop("MLFLOW_RUN_ID", None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ["MLFLOW_RUN_ID"] = saved


def _start(client: MlflowClient, config: BaseConfig, nested: bool, parent_run_id: str | None) -> mlflow.ActiveRun:
    run_id = None if nested else os.environ.get("MLFLOW_RUN_ID")
    if run_id:  # `mlflow run` created the run in the experiment it was given (--experiment-name)
        run = mlflow.start_run(run_id=run_id, run_name=config.run_name or None,
                               log_system_metrics=config.system_metrics)
        _warn_experiment_mismatch(client, run, config.experiment)
        _mark_model_development(client, run.info.experiment_id)
    else:
        parent = client.get_run(parent_run_id) if parent_run_id else mlflow.active_run() if nested else None
        experiment_id = parent.info.experiment_id if parent else _experiment_id(config.experiment)
        with _env_run_id_hidden():  # start_run would otherwise resume MLFLOW_RUN_ID instead of a child
            run = mlflow.start_run(experiment_id=experiment_id, nested=nested, parent_run_id=parent_run_id,
                                   run_name=config.run_name or None, log_system_metrics=config.system_metrics)
    return run


#: the MLflow UI opens an experiment without this tag in its GenAI view (traces, evaluations, agent
#: versions); biosig's experiments are model development: runs, metrics charts, models
EXPERIMENT_KIND_TAG, MODEL_DEVELOPMENT = "mlflow.experimentKind", "custom_model_development"


def _mark_model_development(client: MlflowClient, experiment_id: str) -> None:
    """Tag an experiment biosig writes to as model development, unless someone chose a kind already."""
    with contextlib.suppress(MlflowException):  # a read-only user can still log runs where allowed
        if EXPERIMENT_KIND_TAG not in client.get_experiment(experiment_id).tags:
            client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, MODEL_DEVELOPMENT)


@contextlib.contextmanager
def _auth_errors(uri: str) -> Iterator[None]:
    """A tracking server's 401/403 as one clear line instead of a REST traceback."""
    try:
        yield
    except MlflowException as exc:
        status = re.search(r"error code (40[13])\b", str(exc))
        if exc.error_code == "UNAUTHENTICATED" or (status and status[1] == "401"):
            raise TrackingError(f"the tracking server {redact_value(uri)} refused the credentials (HTTP 401): "
                                "check MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD") from None
        if exc.error_code == "PERMISSION_DENIED" or (status and status[1] == "403"):
            raise TrackingError(f"the tracking server {redact_value(uri)} denied this user access (HTTP 403): "
                                "ask an admin for EDIT permission on the experiment") from None
        raise


def _experiment_id(name: str) -> str:
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            raise TrackingError(f"experiment '{name}' is deleted: restore it or choose another --experiment")
        if EXPERIMENT_KIND_TAG not in experiment.tags:
            _mark_model_development(MlflowClient(), experiment.experiment_id)
        return experiment.experiment_id
    return mlflow.create_experiment(name, tags={EXPERIMENT_KIND_TAG: MODEL_DEVELOPMENT})


def _warn_experiment_mismatch(client: MlflowClient, run: mlflow.ActiveRun, wanted: str) -> None:
    actual = client.get_experiment(run.info.experiment_id).name
    if actual != wanted:
        log.warning(f"biosig: note: this run is in experiment '{actual}' (chosen by `mlflow run`); "
                    f"pass `mlflow run --experiment-name {wanted}` to file it under '{wanted}'")


def _install_sigterm():
    def handler(signum, frame):
        raise Terminated("terminated by SIGTERM")

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        return None


def _record_setup(ctx: RunContext, command: str, config: BaseConfig, tags: dict[str, str],
                  param_keys: tuple[str, ...] | None = None) -> None:
    env = environment()
    resolved = redact(config.to_dict())
    ctx.set_tags({COMMAND_TAG: command, **tags})
    if env["git_commit"] and not ctx.run.data.tags.get("mlflow.source.git.commit"):
        ctx.set_tags({"mlflow.source.git.commit": env["git_commit"]})
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
        (Path(tmp) / "environment.json").write_text(json.dumps(env, indent=2))
        mlflow.log_artifacts(tmp, artifact_path="run")
    _log_params(ctx, resolved if param_keys is None else {k: v for k, v in resolved.items() if k in param_keys})


def _log_params(ctx: RunContext, resolved: dict[str, Any]) -> None:
    """Log the resolved config as params, skipping keys `mlflow run` already logged from -P
    (same value, possibly spelled differently: '1e-3' vs '0.001'; MLflow refuses to change a param)."""
    existing = ctx.client.get_run(ctx.run_id).data.params
    params = [Param(k, _param_value(v)) for k, v in flatten(resolved).items() if k not in existing]
    for i in range(0, len(params), 100):
        ctx.client.log_batch(ctx.run_id, params=params[i:i + 100], synchronous=True)


def _param_value(value: Any) -> str:
    text = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    return text[:MAX_PARAM_LENGTH]


def flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def _record_failure(ctx: RunContext, exc: BaseException) -> None:
    ctx._undo()
    with contextlib.suppress(Exception):
        ctx.metrics.flush()
    with contextlib.suppress(Exception):
        mlflow.set_tags(failure_tags(exc))
        if not isinstance(exc, (KeyboardInterrupt, Terminated)):
            mlflow.log_text(redact_value("".join(traceback.format_exception(exc))), "run/error.txt")


def failure_tags(exc: BaseException) -> dict[str, str]:
    """The error (redacted) as the `biosig.error` tag and as the run's description, which the UI shows whole."""
    message = redact_value(f"{type(exc).__name__}: {exc}")[:5000]
    stopped = isinstance(exc, (KeyboardInterrupt, Terminated))
    return {ERROR_TAG: message, ERROR_TYPE_TAG: type(exc).__name__,
            NOTE_TAG: f"**{'Stopped' if stopped else 'Failed'}**: {message}"}


def fail_run_from_env(exc: BaseException, tracking_uri: str = "") -> None:
    """End the run `mlflow run` created (MLFLOW_RUN_ID) as FAILED when a command fails before
    `tracked_run` could attach to it, e.g. on a bad parameter."""
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        return
    with contextlib.suppress(Exception):
        configure_tracking(tracking_uri)
        client = MlflowClient()
        for key, value in failure_tags(exc).items():
            client.set_tag(run_id, key, value)
        status = "KILLED" if isinstance(exc, (KeyboardInterrupt, Terminated)) else "FAILED"
        client.set_terminated(run_id, status=status)
        purge_if_params_hold_secrets(client, run_id)


def run_tags(run_id: str) -> dict[str, str]:
    """The tags of a run in the configured store ({} when there is no such run)."""
    try:
        return dict(MlflowClient().get_run(run_id).data.tags)
    except MlflowException:
        return {}


def close_dead_run(client: MlflowClient, run_id: str, why: str) -> None:
    """End a run whose process is gone as KILLED, saying why (`resume=`, `biosig doctor --fix`)."""
    client.set_tag(run_id, ERROR_TAG, why)
    client.set_tag(run_id, NOTE_TAG, f"**Stopped**: {why}")
    client.set_terminated(run_id, status="KILLED")


def purge_if_params_hold_secrets(client: MlflowClient, run_id: str) -> None:
    """`mlflow run -P key=URI-with-password` logs the value as a param before biosig can refuse it, and
    MLflow never changes a param: delete that run (soft; `mlflow run` still reads it after we exit) and
    say how to remove it for good."""
    params = client.get_run(run_id).data.params
    if not any(has_password(value) for value in params.values()):
        return
    client.delete_run(run_id)
    log.warning(f"biosig: run {run_id} held a password in its parameters (from -P) and was deleted; "
                f"`biosig doctor --fix` (or `mlflow gc --run-ids {run_id}`) removes it for good")


def record_fit(ctx: RunContext | FollowerContext, outcome: FitOutcome) -> None:
    """A fit's decisions as run tags (class weights, selection fallback, mode collapse), its history and
    stage counts as artifacts, and the stage counts as `size.stage<k>.trainable_params` / `frozen_params`."""
    tags: dict[str, str] = {}
    if outcome.class_weights is not None:
        tags[CLASS_WEIGHTS_TAG] = ",".join(f"{w:.4g}" for w in outcome.class_weights)
    if outcome.selection_fallback:
        tags[SELECTION_FALLBACK_TAG] = "val_loss"
    if outcome.collapsed:
        tags.update({WARNING_TAG: "mode_collapse", COLLAPSED_CLASSES_TAG: ",".join(outcome.collapsed)})
    if tags:
        ctx.set_tags(tags)
    ctx.log_dict(outcome.history, "history.json")
    ctx.log_dict(outcome.stage_counts, "stages.json")
    ctx.log_sizes({f"stage{number}.{kind}_params": counts[kind] for number, counts in outcome.stage_counts.items()
                   for kind in ("trainable", "frozen")})


def record_classifier(ctx: RunContext | FollowerContext, built: BuiltClassifier, data: LabelledSplits) -> None:
    """How a classifier was made for its data, as run tags: the normalisation (and why auto chose it), the
    channel mapping of the pretrained weights, and pretrained channels the data lacks."""
    if data.note:
        log.info(f"  note: {data.note}")
        ctx.set_tags({NOTE_NORMALISATION_TAG: data.note})
    ctx.set_tags({NORMALISATION_TAG: data.stats.kind})
    if built.dropped:
        ctx.set_tags({CHANNELS_DROPPED_TAG: ",".join(built.dropped), NOTE_CHANNELS_TAG: built.dropped_note})
    if built.mapping:
        ctx.set_tags({CHANNEL_MAPPING_TAG: built.mapping})
