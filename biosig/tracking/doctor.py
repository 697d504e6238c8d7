"""`biosig doctor`: check a tracking store for what interrupted or careless use leaves behind.

- runs left RUNNING by a process that is gone (kill -9, a lost node): found by host + pid on this
  machine and by the heartbeat tag elsewhere; `--fix` ends them KILLED, saying why;
- runs whose recorded dataset digest no longer matches the bytes at the recorded source (the file
  is missing, unreadable or was replaced): reported with the run ids that depend on it;
- scratch folders (`$TMPDIR/biosig-{command}-{pid}-…`) of processes that are gone: `--fix` removes them;
- runs whose parameters hold a password (from `mlflow run -P`): `--fix` deletes them and, on a
  database store, removes them for good (what `mlflow gc` does);
- orphan model versions: registered by a run that did not finish (KILLED or FAILED, RUNNING with a dead
  process, or gone), e.g. a kill -9 just after the version row appeared: `--fix` deletes them (`--keep`:
  tags them `biosig.orphan` instead), and no alias is left pointing at one.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Iterable, Iterator

from mlflow.entities import Run, ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from biosig.errors import BiosigError, ConfigError
from biosig.logs import get_logger
from biosig.secrets import has_password
from biosig.tracking.liveness import leftover_scratch, liveness
from biosig.tracking.run import close_dead_run, configure_tracking
from biosig.tracking.tags import DATASET_DIGEST_TAG, DATASET_URI_TAG

log = get_logger(__name__)



@dataclasses.dataclass
class Finding:
    kind: str  # stale-run | dataset | secret
    subject: str  # a run id or a dataset URI
    detail: str
    fixed: bool = False

    def line(self) -> str:
        return f"{'fixed' if self.fixed else 'PROBLEM'}  {self.kind:<9} {self.subject}: {self.detail}"


def run_doctor(experiments: Iterable[str] = (), tracking_uri: str = "", fix: bool = False,
               stale_after_min: float | None = None, keep: bool = False) -> int:
    """Print one line per finding and a summary; exit code 0 when nothing is left to fix, else 1."""
    configure_tracking(tracking_uri)
    client = MlflowClient()
    ids = _experiment_ids(client, list(experiments))
    stale_after_s = None if stale_after_min is None else stale_after_min * 60
    findings = [*stale_runs(client, ids, fix, stale_after_s), *orphan_versions(client, ids, fix, keep, stale_after_s),
                *dataset_drift(client, ids), *secret_runs(client, ids, fix), *scratch_leftovers(fix)]
    for finding in findings:
        log.info(finding.line())
    left = [f for f in findings if not f.fixed]
    log.info(f"doctor: {len(ids)} experiment(s) checked; {len(findings)} finding(s), {len(left)} left"
             + ("" if fix or not left else " (--fix closes dead runs, deletes orphan versions and purges runs holding "
                                          "passwords)"))
    return 1 if left else 0


def _experiment_ids(client: MlflowClient, names: list[str]) -> list[str]:
    if not names:
        return [e.experiment_id for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY)]
    ids = []
    for name in names:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise ConfigError(f"--experiment {name!r}: no such experiment in this tracking store")
        ids.append(experiment.experiment_id)
    return ids


def _runs(client: MlflowClient, ids: list[str], filter_string: str = "",
          view: int = ViewType.ACTIVE_ONLY) -> Iterator[Run]:
    token = None
    while ids:
        page = client.search_runs(ids, filter_string, run_view_type=view, max_results=1000, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def stale_runs(client: MlflowClient, ids: list[str], fix: bool, stale_after_s: float | None) -> list[Finding]:
    findings = []
    for run in _runs(client, ids, "attributes.status = 'RUNNING'"):
        state = liveness(run, stale_after_s=stale_after_s)
        if state.alive:
            continue
        finding = Finding("stale-run", run.info.run_id, f"RUNNING but {state.reason}")
        if fix:
            close_dead_run(client, run.info.run_id, f"closed by biosig doctor: {state.reason}")
            finding.fixed, finding.detail = True, f"{finding.detail}; ended KILLED"
        findings.append(finding)
    return findings


ORPHAN_TAG = "biosig.orphan"  # doctor --fix --keep: a version whose run did not finish, kept for inspection


def orphan_versions(client: MlflowClient, ids: list[str], fix: bool, keep: bool,
                    stale_after_s: float | None) -> list[Finding]:
    """Versions whose registering run (in the checked experiments) did not finish."""
    findings = []
    for model in client.search_registered_models(max_results=1000):
        aliases = client.get_registered_model(model.name).aliases  # search results carry none
        for version in client.search_model_versions(f"name = '{model.name}'", max_results=10000):
            why = _unfinished(client, version.run_id, ids, stale_after_s)
            if not why or (ORPHAN_TAG in version.tags and not (fix and not keep)):
                continue  # a kept orphan is acknowledged; a plain --fix still deletes it
            held = sorted(a for a, v in aliases.items() if str(v) == str(version.version))
            finding = Finding("orphan", f"{model.name}/{version.version}",
                              f"version {version.version} of {model.name} belongs to {why}"
                              + (f" and holds @{', @'.join(held)}" if held else ""))
            if fix:
                for alias in held:
                    client.delete_registered_model_alias(model.name, alias)
                if keep:
                    client.set_model_version_tag(model.name, version.version, ORPHAN_TAG, why)
                    finding.detail += f"; tagged {ORPHAN_TAG}" + (", aliases removed" if held else "")
                else:
                    client.delete_model_version(model.name, version.version)
                    finding.detail += "; deleted"
                finding.fixed = True
            findings.append(finding)
    return findings


def _unfinished(client: MlflowClient, run_id: str | None, ids: list[str], stale_after_s: float | None) -> str:
    """Why the run that registered a version did not finish ('' when it did, or is outside `ids`)."""
    if not run_id:
        return ""
    try:
        run = client.get_run(run_id)
    except MlflowException:
        return f"run {run_id}, which no longer exists"
    if run.info.experiment_id not in ids:
        return ""
    status = run.info.status
    if status in ("KILLED", "FAILED"):
        return f"{status} run {run_id}"
    if status == "RUNNING" and not (state := liveness(run, stale_after_s=stale_after_s)).alive:
        return f"RUNNING run {run_id} whose process is gone ({state.reason})"
    return ""


def dataset_drift(client: MlflowClient, ids: list[str]) -> list[Finding]:
    """Every run's recorded dataset digest against the content now at its recorded source."""
    expected: dict[tuple[str, str], list[str]] = {}
    for run in _runs(client, ids):
        uri, digest = run.data.tags.get(DATASET_URI_TAG), run.data.tags.get(DATASET_DIGEST_TAG)
        if uri and digest:
            expected.setdefault((uri, digest), []).append(run.info.run_id)
    actual: dict[str, str] = {}
    findings = []
    for (uri, digest), run_ids in sorted(expected.items()):
        if uri not in actual:
            actual[uri] = _content_digest(uri)
        now = actual[uri]
        if now == "missing" and _copy_here(digest):
            continue  # another machine's path, and this machine holds the same bytes in ./data
        if now != digest:
            what = now if now.startswith(("missing", "unreadable")) else f"holds {now[:12]}, not {digest[:12]}"
            findings.append(Finding("dataset", uri, f"{what}; recorded by run(s) {', '.join(sorted(run_ids))}"))
    return findings


def _content_digest(uri: str) -> str:
    from pathlib import Path

    from biosig.data.parquet_io import read_parquet
    from biosig.data.shards import check_finished, is_sharded, read_manifest, verify_shard
    from biosig.data.storage import fetch
    from biosig.tracking.dataset_store import find_dataset, is_portable

    try:
        if not uri.endswith(".parquet"):
            check_finished(uri)  # a sharded build without its manifest says so, not "expected a .parquet file"
        if is_sharded(uri):  # every shard re-hashed (not trusting this machine's earlier checks)
            manifest = read_manifest(uri)
            for shard in manifest.shards:
                verify_shard(manifest, shard, remembered=False)
            return manifest.digest
        if is_portable(uri) and not uri.startswith("s3://"):  # the team server's artifact store
            return read_parquet(Path(find_dataset(uri)[0]), cache=False).digest
        path = fetch(uri) if uri.startswith("s3://") else Path(uri)
        if not path.exists():
            return "missing"
        return read_parquet(path, cache=False).digest  # the bytes on disk, not a cached copy
    except BiosigError as exc:
        return f"unreadable ({exc})"


def _copy_here(digest: str, data_dir: str = "data") -> bool:
    """True when this machine's data folder holds a file with exactly this content (by its digest)."""
    from biosig.tracking.dataset_store import find_dataset

    try:
        return Path(find_dataset(f"digest:{digest}", data_dir)[0]).is_file()
    except BiosigError:
        return False


def secret_runs(client: MlflowClient, ids: list[str], fix: bool) -> list[Finding]:
    findings = []
    store = client._tracking_client.store
    for run in _runs(client, ids, view=ViewType.ALL):
        keys = sorted(k for k, v in run.data.params.items() if has_password(v))
        if not keys:
            continue
        finding = Finding("secret", run.info.run_id, f"parameter(s) {', '.join(keys)} hold a password")
        if fix:
            if run.info.lifecycle_stage != "deleted":
                client.delete_run(run.info.run_id)
            if hasattr(store, "_hard_delete_run"):  # what `mlflow gc` does on a database store
                store._hard_delete_run(run.info.run_id)
                finding.fixed, finding.detail = True, f"{finding.detail}; run removed"
            else:
                finding.detail += f"; deleted, the server's admin must run `mlflow gc --run-ids {run.info.run_id}`"
        findings.append(finding)
    return findings


def scratch_leftovers(fix: bool) -> list[Finding]:
    findings = []
    for path in leftover_scratch():
        finding = Finding("scratch", str(path), "temporary folder of a process that is gone")
        if fix:
            shutil.rmtree(path, ignore_errors=True)
            finding.fixed, finding.detail = True, f"{finding.detail}; removed"
        findings.append(finding)
    return findings
