"""Datasets any machine of a team can find: a dataset is identified by its content digest, and the source a
run records for it is one a second machine can read.

- With a team tracking server (http/https) a dataset file goes to the artifact store once (the first run that
  uses that digest logs it under `datasets/`; later runs reuse the recorded URI), or, with
  `$BIOSIG_DATA_ROOT=s3://bucket/prefix`, to that prefix under its content-addressed file name. The run's
  dataset input and `biosig.dataset.uri` then name that URI, not machine A's folder.
- Reading goes the other way (`find_dataset`): a local path that exists is used in place; a dataset name,
  `digest:HEX`, or a recorded path that is absent here is looked up by digest, first in `data_dir` (files are
  named `…_{digest12}.parquet`), then in the tracking store's record of it, downloaded once into
  `$BIOSIG_CACHE_DIR/datasets/`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from biosig.data.naming import ARTIFACT_URIS, DATASET_NAME, DIGEST_IN_FILE, DIGEST_SPEC
from biosig.data.parquet_io import stored_digest
from biosig.data.storage import cache_dir, upload
from biosig.errors import DataError
from biosig.tracking.run import RunContext
from biosig.tracking.tags import DATASET_DIGEST_TAG, DATASET_NAME_TAG, DATASET_URI_TAG

DATA_ROOT_ENV = "BIOSIG_DATA_ROOT"
ARTIFACT_FOLDER = "datasets"
PORTABLE = ("s3://", "mlflow-artifacts:", "runs:/", "models:/", "gs://", "wasbs://", "http://", "https://")
_NOT_FILES = ("synthetic:", "muse:", "butppg:", "vitaldb:")


def is_portable(uri: str) -> bool:
    """A URI any machine with the team's credentials can read (not a path on one machine's disk)."""
    return uri.startswith(PORTABLE)


def shared_store() -> str:
    """Where datasets go for other machines: $BIOSIG_DATA_ROOT, the artifact store of a team server
    ("artifacts"), or "" (one machine: datasets stay where they are)."""
    root = os.environ.get(DATA_ROOT_ENV, "").strip()
    if root:
        if not root.startswith("s3://"):
            raise DataError(f"${DATA_ROOT_ENV} must be an s3://bucket/prefix, got {root!r}")
        return root
    return "artifacts" if mlflow.get_tracking_uri().startswith(("http://", "https://")) else ""


def publish(ctx: RunContext, path: Path, digest: str) -> str:
    """The URI to record for the dataset file `path` (content `digest`): portable when a store is shared
    (uploaded once per digest), else the local path."""
    store = shared_store()
    if not store:
        return str(path.resolve())
    known = recorded_uri(digest)
    if known:
        return known
    if store == "artifacts":
        ctx.log_artifact(path, ARTIFACT_FOLDER)
        return mlflow.get_artifact_uri(f"{ARTIFACT_FOLDER}/{path.name}")
    uri = f"{store.rstrip('/')}/{path.name}"
    upload(path, uri)
    return uri


def recorded_uri(digest: str, client: MlflowClient | None = None) -> str:
    """A portable URI some run recorded for this digest ("" when none did)."""
    for run in _runs_with(f"tags.`{DATASET_DIGEST_TAG}` = '{digest}'", client):
        uri = run.data.tags.get(DATASET_URI_TAG, "")
        if is_portable(uri):
            return uri
    return ""


def find_dataset(spec: str, data_dir: str | Path = "data") -> tuple[str, str]:
    """(what to read here, the portable URI to record or "") for a data spec: see the module docstring.
    Sources that are not dataset files (synthetic:, muse:, directories, s3:// objects) pass unchanged."""
    if spec.startswith(_NOT_FILES) or spec.startswith("s3://") or Path(spec).exists():
        return spec, ""
    if spec.startswith(ARTIFACT_URIS):
        return str(_download(spec)), spec
    digest = DIGEST_SPEC.match(spec)
    if digest or DATASET_NAME.match(spec):
        field, value = ((DATASET_DIGEST_TAG, digest.group(1)) if digest else (DATASET_NAME_TAG, spec))
        return _by_record(spec, field, value, data_dir)
    named = DIGEST_IN_FILE.search(spec)
    if spec.endswith(".parquet") and named:  # a recorded path from another machine
        local = _in_data_dir(named.group(1), data_dir)
        if local is not None:
            return str(local), ""
        return _by_record(spec, DATASET_DIGEST_TAG, named.group(1), data_dir)
    return spec, ""  # load_source says what is wrong with it


def _by_record(spec: str, field: str, value: str, data_dir: str | Path) -> tuple[str, str]:
    """A dataset found through the runs that recorded it (by name, or digest prefix)."""
    operator = "LIKE" if field == DATASET_DIGEST_TAG else "="
    pattern = f"{value}%" if operator == "LIKE" else value
    runs = _runs_with(f"tags.`{field}` {operator} '{pattern}'")
    digests = {r.data.tags[DATASET_DIGEST_TAG] for r in runs if r.data.tags.get(DATASET_DIGEST_TAG)}
    if not digests:
        raise DataError(f"dataset {spec}: no run of this tracking store recorded it (and it is not a file here)")
    if len(digests) > 1:
        raise DataError(f"dataset {spec} names {len(digests)} different datasets (digests "
                        f"{', '.join(sorted(d[:12] for d in digests))}): pass digest:HEX")
    digest = digests.pop()
    local = _in_data_dir(digest[:12], data_dir)
    if local is not None:
        return str(local), ""
    for run in runs:
        uri = run.data.tags.get(DATASET_URI_TAG, "")
        if is_portable(uri):
            return str(_download(uri)), uri
        if uri and Path(uri).is_file():
            return uri, ""
    raise DataError(f"dataset {spec} (digest {digest[:12]}) is not on this machine: no {data_dir}/*_{digest[:12]}"
                    ".parquet, and its runs recorded only a path on another machine; log it through the team "
                    f"server (or set ${DATA_ROOT_ENV}) so every machine can read it")


def _in_data_dir(digest12: str, data_dir: str | Path) -> Path | None:
    for candidate in sorted(Path(data_dir).glob(f"*_{digest12}.parquet")):
        if (stored_digest(candidate) or "").startswith(digest12):
            return candidate.resolve()
    return None


def _download(uri: str) -> Path:
    """A remote dataset file in the local cache (downloaded once per URI)."""
    target = cache_dir().parent / "datasets" / hashlib.sha256(uri.encode()).hexdigest()[:24]
    existing = sorted(target.glob("*.parquet")) if target.is_dir() else []
    if existing:
        return existing[0]
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))  # never a half file in the cache
    try:
        name = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(partial))).name
        partial.replace(target)
    except (MlflowException, OSError) as exc:
        raise DataError(f"cannot download dataset {uri}: {str(exc).splitlines()[0][:300]}") from None
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target / name


def _runs_with(filter_string: str, client: MlflowClient | None = None) -> list:
    client = client or MlflowClient()
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return []
    return client.search_runs(experiments, filter_string=filter_string, order_by=["attributes.start_time DESC"],
                              max_results=50)
