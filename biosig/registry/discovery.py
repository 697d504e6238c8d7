"""Checkpoint discovery: turn a `checkpoint=` value into a local checkpoint directory plus lineage.

Accepted forms (never a guess; anything else is an error that says what was tried):
  auto                   the conventional name derived from the pretrain config, latest version
  NAME                   a registered conventional name, latest (highest) version
  NAME@alias, NAME/3     a registered version by alias or number
  models:/NAME@alias, models:/NAME/3, models:/NAME
  runs:/RUN_ID/path      a run artifact directory
  s3://bucket/key        an artifact directory in S3 (MLFLOW_S3_ENDPOINT_URL for MinIO / moto)
  PATH                   a local checkpoint directory
An unknown registered name fails with the closest registered names and the pretrain command that
would create it.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from biosig import backbones
from biosig.errors import ConfigError, DataError
from biosig.models.checkpoint import PRETRAINED_KEYS, read_meta, require_keys
from biosig.registry.naming import FINETUNED_SUFFIX, ModelName, is_conventional, parse_name
from biosig.tracking.tags import KIND_TAG, PARENT_NAME_TAG, PARENT_RUN_ID_TAG, PARENT_URI_TAG, PARENT_VERSION_TAG

_VERSIONED = re.compile(r"^(?P<name>[^@/]+)(?:@(?P<alias>[\w-]+)|/(?P<version>\d+))?$")


@dataclasses.dataclass
class ResolvedCheckpoint:
    path: Path
    meta: dict[str, Any]
    uri: str  # what the user asked for, normalised
    name: str | None = None
    version: str | None = None
    run_id: str | None = None

    @property
    def arch(self) -> str:
        return self.meta.get("backbone", {}).get("arch", "?")

    @property
    def model_name(self) -> str:
        """The registered name, else the name its biosig.json records (a path or URI checkpoint)."""
        return self.name or self.meta.get("name", "")

    def lineage(self) -> dict[str, str]:
        tags = {PARENT_URI_TAG: self.uri}
        if self.name:
            tags[PARENT_NAME_TAG] = self.name
        if self.version:
            tags[PARENT_VERSION_TAG] = self.version
        if self.run_id:
            tags[PARENT_RUN_ID_TAG] = self.run_id
        return tags

    def describe(self) -> str:
        where = f"{self.name} version {self.version}" if self.name else self.uri
        return f"{where} ({self.arch}, channels {self.meta.get('channels')}; weights read from {self.path})"


def resolve_pretrained(spec: str, *, auto_name: str | None = None,
                       expected_arch: str | None = None) -> ResolvedCheckpoint:
    """A pretrained checkpoint to fine-tune: resolved and its biosig.json checked for the keys fine-tuning
    reads, before any run exists."""
    resolved = resolve_checkpoint(spec, auto_name=auto_name, expected_arch=expected_arch)
    require_keys(resolved.meta, PRETRAINED_KEYS, f"checkpoint {resolved.uri}: biosig.json")
    return resolved


def resolve_checkpoint(spec: str, *, auto_name: str | None = None, expected_arch: str | None = None,
                       client: MlflowClient | None = None) -> ResolvedCheckpoint:
    """Resolve `spec` (see module doc); check it is a pretrained biosig checkpoint of `expected_arch`."""
    spec = spec.strip()
    if not spec:
        raise ConfigError("config key 'checkpoint' is empty: pass auto, a registered name, a URI or a path")
    client = client or MlflowClient()
    if spec == "auto":
        if not auto_name:
            raise ConfigError("checkpoint=auto needs the pretrain config to derive the model name from")
        spec = auto_name
    if spec.startswith("models:/"):
        resolved = _from_registry(client, spec[len("models:/"):], spec)
    elif spec.startswith("runs:/"):
        resolved = _download(spec, run_id=spec[len("runs:/"):].split("/", 1)[0])
    elif spec.startswith(("s3://", "mlflow-artifacts:/", "http://", "https://", "gs://", "wasbs://")):
        resolved = _download(spec)
    elif spec.startswith("file:") or Path(spec).expanduser().exists():
        path = Path(unquote(urlparse(spec).path)) if spec.startswith("file:") else Path(spec).expanduser()
        resolved = ResolvedCheckpoint(path.resolve(), read_meta(path), str(path.resolve()))
    elif _VERSIONED.match(spec) and ("/" not in spec or spec.rsplit("/", 1)[1].isdigit()):
        resolved = _from_registry(client, spec, f"models:/{spec}")
    else:
        raise DataError(f"checkpoint path not found: {spec}")
    _check_kind(resolved, expected_arch)
    return resolved


def parse_model_reference(reference: str) -> tuple[str, str | None, str | None]:
    """NAME@alias, NAME/3, models:/NAME@alias, models:/NAME/3 or bare NAME as (name, alias, version);
    a bare NAME gives (name, None, None)."""
    ref = reference[len("models:/"):] if reference.startswith("models:/") else reference
    m = _VERSIONED.match(ref)
    if not m:
        raise ConfigError(f"cannot read a registered model from {reference!r}: expected NAME, NAME@alias, NAME/3 "
                          "or models:/…")
    return m["name"], m["alias"], m["version"]


def resolve_version(client: MlflowClient, reference: str, *, bare: str = "latest"):
    """The one resolver of registry references: the ModelVersion named by NAME@alias, NAME/3 or
    models:/…; a bare NAME means its latest version (`bare="latest"`) or the version holding that alias
    (e.g. `bare="candidate"`). Anything missing is a DataError that lists what exists."""
    name, alias, number = parse_model_reference(reference)
    if not alias and not number and bare != "latest":
        alias = bare
    try:
        if alias:
            return client.get_model_version_by_alias(name, alias)
        if number:
            return client.get_model_version(name, number)
        found = client.search_model_versions(f"name = '{name}'", max_results=1, order_by=["version_number DESC"])
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
        raise DataError(_not_found(client, name, alias, number)) from None
    if not found:
        raise DataError(_not_found(client, name, None, None))
    return found[0]


def expand_checkpoints(client: MlflowClient, specs: list[str]) -> list[str]:
    """Checkpoint references with glob patterns (`mamba2_eeg_d256_*`) expanded to the registered
    pretrained names they match, sorted; anything else is kept as given. A pattern matching nothing is
    an error."""
    out: list[str] = []
    for spec in specs:
        if not any(ch in spec for ch in "*?[") or "://" in spec:
            out.append(spec)
            continue
        like = spec.replace("%", "\\%").replace("*", "%").replace("?", "_")
        names = sorted(m.name for m in client.search_registered_models(f"name LIKE '{like}'", max_results=1000)
                       if fnmatch.fnmatchcase(m.name, spec) and not m.name.endswith(FINETUNED_SUFFIX))
        if not names:
            raise DataError(f"no registered pretrained model matches {spec!r}")
        out.extend(n for n in names if n not in out)
    return out


def _from_registry(client: MlflowClient, ref: str, uri: str) -> ResolvedCheckpoint:
    version = resolve_version(client, ref)
    name = version.name
    kind = version.tags.get(KIND_TAG, "pretrained")
    if kind != "pretrained":
        raise DataError(f"checkpoint {uri} is a {kind} model; fine-tuning starts from a pretrained one")
    source = version.source
    if source.startswith(("models:/", "runs:/")):  # indirect sources: ask the registry where they live
        source = client.get_model_version_download_uri(name, version.version)
    resolved = _download(source, run_id=version.run_id)
    resolved.uri, resolved.name, resolved.version = uri, name, str(version.version)
    return resolved


def _download(uri: str, run_id: str | None = None) -> ResolvedCheckpoint:
    """Local file URIs are used in place; anything remote is downloaded once into MLflow's temp dir."""
    parsed = urlparse(uri)
    if parsed.scheme == "file" or (not parsed.scheme and Path(uri).exists()):
        path = Path(unquote(parsed.path))
    else:
        try:
            path = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
        except MlflowException as exc:
            raise DataError(f"cannot download checkpoint {uri}: {exc.message}") from None
        except OSError as exc:
            raise DataError(f"cannot download checkpoint {uri}: {exc}") from None
        except Exception as exc:  # botocore's NoCredentialsError, EndpointConnectionError, ClientError, …
            if type(exc).__module__.split(".")[0] not in ("botocore", "boto3", "google", "azure"):
                raise
            hint = ": set AWS credentials in the environment" if "Credentials" in type(exc).__name__ else ""
            raise DataError(f"cannot download checkpoint {uri} ({type(exc).__name__}: {exc}){hint}") from None
    return ResolvedCheckpoint(path, read_meta(path), uri, run_id=run_id)


def _check_kind(resolved: ResolvedCheckpoint, expected_arch: str | None) -> None:
    kind = resolved.meta.get("kind", "pretrained")
    if kind != "pretrained":
        raise DataError(f"checkpoint {resolved.uri} is a {kind} model; fine-tuning starts from a pretrained one")
    if expected_arch and resolved.arch != expected_arch:
        raise DataError(f"checkpoint {resolved.uri} is a {resolved.arch} model, but this config expects "
                        f"arch={expected_arch}")


def _not_found(client: MlflowClient, name: str, alias: str | None, version: str | None) -> str:
    if _registered(client, name):
        what = f"alias '@{alias}'" if alias else f"version {version}" if version else "any version"
        return f"registered model '{name}' has no {what}; list them with `biosig registry show {name}`"
    names = [m.name for m in client.search_registered_models(max_results=1000)]
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.0)
    message = f"no registered model named '{name}'"
    message += f"; closest registered: {', '.join(close)}" if close else "; the registry holds no models yet"
    if is_conventional(name):
        message += f". Create it with: {pretrain_command(parse_name(name))}"
    return message


def _registered(client: MlflowClient, name: str) -> bool:
    try:
        client.get_registered_model(name)
    except MlflowException:
        return False
    return True


def pretrain_command(model: ModelName) -> str:
    """The `biosig pretrain` command line whose registered model would carry this name."""
    spec = backbones.get(model.arch)
    return f"biosig pretrain --arch {spec.arch} {spec.command_args(model.fields)}"
