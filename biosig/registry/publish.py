"""Register a model version all-or-nothing: version + tags + alias, or nothing at all.

A failure after the version exists (alias, tag, interrupted process) deletes the version again, and the
registered model too when this call created it, so the registry never holds a half-registered model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
from mlflow.entities import LoggedModel, LoggedModelOutput
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

from biosig.tracking.tags import REGISTERED_MODEL_TAG, REGISTERED_VERSION_TAG

if TYPE_CHECKING:
    from biosig.tracking.run import RunContext

CANDIDATE_ALIAS = "candidate"


def publish_model_files(model_id: str, local_dir: Path, *, run_id: str, step: int = 0) -> LoggedModel:
    """Fill the logged model `model_id` (created by RunContext.begin_model) with a directory (a pretrained
    checkpoint, a saved pyfunc), mark it READY and list it among the run's outputs. A failed upload
    leaves it FAILED, never READY with half its files."""
    client = MlflowClient()
    try:
        client.log_model_artifacts(model_id, str(local_dir))
    except BaseException:
        mlflow.finalize_logged_model(model_id, "FAILED")
        raise
    client.log_outputs(run_id, [LoggedModelOutput(model_id, step=step)])
    return mlflow.finalize_logged_model(model_id, "READY")


def publish_version(name: str, *, source: str, run_id: str, tags: dict[str, Any], model_id: str | None = None,
                    alias: str | None = CANDIDATE_ALIAS, description: str = "",
                    model_tags: dict[str, str] | None = None) -> ModelVersion:
    """Register `source` (an artifact URI, or `models:/<model_id>` of a logged model) as a new version
    holding `alias` (None: no alias; fine-tunes claim @candidate by rule, `registry.candidate`)."""
    client = MlflowClient()
    created_model = _create_if_missing(client, name, model_tags or {}, description)
    version: ModelVersion | None = None
    tags = {k: str(v) for k, v in tags.items()}
    try:
        version = client.create_model_version(name, source, run_id=run_id, tags=tags, model_id=model_id,
                                              description=description or None)
        if model_id:
            _link_logged_model(client, model_id, name, str(version.version))
        if alias:
            client.set_registered_model_alias(name, alias, version.version)
        return client.get_model_version(name, version.version)
    except BaseException:
        _undo(client, name, version, created_model)
        raise


def register_from_run(ctx: "RunContext", name: str, *, source: str, tags: dict[str, Any], description: str,
                      model_id: str | None = None, model_tags: dict[str, str] | None = None,
                      alias: str | None = CANDIDATE_ALIAS) -> str:
    """The one registration path of every command: publish `source` as a new version of `name` holding
    `alias`, undo it if the run then fails (a failed run registers nothing), and tag the run with
    what it registered. Returns the version number."""
    version = publish_version(name, source=source, run_id=ctx.run_id, tags=tags, model_id=model_id,
                              description=description, model_tags=model_tags, alias=alias)
    ctx.on_failure(lambda: unpublish_version(name, version.version))
    ctx.set_tags({REGISTERED_MODEL_TAG: name, REGISTERED_VERSION_TAG: version.version})
    ctx.registered = f"{name}/{version.version}"
    return str(version.version)


def version_with_tags(name: str, tags: dict[str, str]) -> ModelVersion | None:
    """The oldest version of `name` carrying every tag of `tags` (None when there is none, or no such model):
    how a re-import of the same bytes finds the version it already made."""
    versions = MlflowClient().search_model_versions(f"name = '{name}'")
    matching = [v for v in versions if all(v.tags.get(k) == str(value) for k, value in tags.items())]
    return min(matching, key=lambda v: int(v.version), default=None)


def unpublish_version(name: str, version: str) -> None:
    """Delete a version registered by a run that then failed; the model too when nothing is left."""
    client = MlflowClient()
    _unlink_source(client, client.get_model_version(name, version))
    client.delete_model_version(name, version)
    if not client.search_model_versions(f"name = '{name}'", max_results=1):
        client.delete_registered_model(name)


def _link_logged_model(client: MlflowClient, model_id: str, name: str, version: str, *, unlink: bool = False) -> None:
    """The logged model ↔ version link that `mlflow.register_model` makes (the `mlflow.modelVersions` tag
    the UI's model page reads): a tracking server sets it itself, a SQLite or PostgreSQL store does not."""
    entry = {"name": name, "version": version}
    linked = json.loads(client.get_logged_model(model_id).tags.get(MLFLOW_MODEL_VERSIONS) or "[]")
    linked = [e for e in linked if {k: str(v) for k, v in e.items()} != entry]
    client.set_logged_model_tags(model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(linked if unlink else linked + [entry])})


def _unlink_source(client: MlflowClient, version: ModelVersion) -> None:
    if version.source.startswith("models:/m-"):
        _link_logged_model(client, version.source[len("models:/"):], version.name, str(version.version), unlink=True)


def _create_if_missing(client: MlflowClient, name: str, tags: dict[str, str], description: str) -> bool:
    """Create the registered model unless it exists; True when this call created it. Create-and-tolerate
    instead of check-then-create: two processes registering a new name at once both succeed."""
    try:
        client.create_registered_model(name, tags=tags, description=description or None)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_ALREADY_EXISTS":
            return False
        raise
    return True


def _undo(client: MlflowClient, name: str, version: ModelVersion | None, created_model: bool) -> None:
    """Remove our version; the model too when this call created it and no other process has put a version
    under it meanwhile."""
    try:
        if version is not None:
            _unlink_source(client, version)
            client.delete_model_version(name, version.version)
        if created_model and not client.search_model_versions(f"name = '{name}'", max_results=1):
            client.delete_registered_model(name)
    except MlflowException:
        pass
