"""Building a sharded dataset in parallel with bounded memory, on one machine or many.

A build divides its source into *groups* of records (synthetic: blocks of subjects; `butppg:` /
`vitaldb:`: record folders / .vital files; other sources: one group) and writes each group's windows as
one or more shards (biosig.data.shards). `workers` processes take groups from a queue, so a process holds
one group at a time: peak memory grows with the number of workers, not with the corpus.

The plan (source, options, groups) is written to `_build.json` under the output prefix, and each finished
group leaves `_parts/group-NNNNN.json` (its shards and the problems of its records): an interrupted build
restarts without redoing finished groups, and `part=(i, n)` builds the i-th of n disjoint, contiguous
slices of the groups (a Slurm array or a Kubernetes Indexed Job runs one slice per task). `finalize`
writes manifest.json once every group is there; the same source and options give the same manifest
digest however the build was divided or interrupted.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import multiprocessing
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

import biosig.data.shards as shard_format
from biosig.data.atomic import remove_dead_temporaries
from biosig.data.naming import check_kind, conventional_name
from biosig.data.shards import (
    FORMAT,
    MANIFEST_FILE,
    SHARD_ROWS,
    Manifest,
    Shard,
    join,
    make_manifest,
    read_manifest,
    read_text,
    shard_schema,
    write_shard,
    write_text,
)
from biosig.data.sources import SourceOptions, load_source, record_units
from biosig.data.windowset import WindowSet
from biosig.errors import ConfigError, DataError, FileProblem

PLAN_FILE = shard_format.BUILD_FILE
PARTS_DIR = "_parts"
RECORDS_PER_GROUP = {"butppg": 512, "vitaldb": 4}  # BUT PPG records are 10 s; VitalDB cases are hours


@dataclasses.dataclass(frozen=True)
class Plan:
    source: str
    options: dict[str, Any]
    kind: str
    shard_rows: int
    row_group_rows: int
    groups: list[list[Any]]  # per group: its units (record names, or [first, stop) subject ranges)

    @property
    def key(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, **dataclasses.asdict(self)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str) -> "Plan":
        try:
            body = json.loads(text)
            return cls(body["source"], body["options"], body["kind"], body["shard_rows"], body["row_group_rows"],
                       body["groups"])
        except (json.JSONDecodeError, KeyError) as exc:
            raise DataError(f"{where} is not a biosig build plan ({type(exc).__name__}: {exc})") from None


@dataclasses.dataclass
class BuildResult:
    root: str
    plan: Plan
    built: list[int]  # groups written by this call
    skipped: list[int]  # groups a previous (interrupted or other-slice) build had finished
    pending: list[int]  # groups of other slices not finished yet


def make_plan(source: str, options: SourceOptions, *, kind: str, shard_rows: int = SHARD_ROWS,
              records_per_shard: int = 0) -> Plan:
    """Divide `source` into groups of records; a group's windows are one to a few shards."""
    check_kind(kind)
    if shard_rows < 1:
        raise ConfigError(f"config key 'shard_rows' must be >= 1, got {shard_rows}")
    if source.startswith("synthetic:"):
        groups = _synthetic_groups(source, options, shard_rows)
    elif source.startswith(("butppg:", "vitaldb:")):
        records = record_units(source)
        size = records_per_shard or RECORDS_PER_GROUP[source.split(":", 1)[0]]
        groups = [records[i:i + size] for i in range(0, len(records), size)]
    else:
        groups = [[]]  # muse:, files, folders: read in one process, written in shards of shard_rows
    return Plan(source, dataclasses.asdict(options), kind, shard_rows, shard_format.ROW_GROUP_ROWS, groups)


def _synthetic_groups(source: str, options: SourceOptions, shard_rows: int) -> list[list[Any]]:
    """Blocks of subjects of about shard_rows windows each (EEG: at least 2 subjects, one per class)."""
    defaults = {"synthetic:eeg": (16, 24), "synthetic:ppg-ecg": (24, 20), "synthetic:quality": (24, 20)}
    n_subjects = options.n_subjects or defaults[source][0]
    per_subject = options.windows_per_subject or defaults[source][1]
    size = max(2 if source == "synthetic:eeg" else 1, shard_rows // per_subject)
    starts = list(range(0, n_subjects, size))
    if source == "synthetic:eeg" and len(starts) > 1 and n_subjects - starts[-1] < 2:
        starts.pop()  # no one-subject block: it could not hold both classes
    return [[[a, b]] for a, b in zip(starts, starts[1:] + [n_subjects])]


def build(plan: Plan, root: str, *, workers: int = 1, part: tuple[int, int] = (0, 1),
          on_group: Callable[[int, int], None] | None = None) -> BuildResult:
    """Build slice `part` = (i, n) of the plan's groups under `root` with `workers` processes."""
    index, count = part
    if not 0 <= index < count:
        raise ConfigError(f"config key 'shard' must be i/n with 0 <= i < n, got {index}/{count}")
    _claim(plan, root)
    if not root.startswith("s3://"):  # a writer killed mid-shard (kill -9) left its temporary file behind
        for folder in (Path(root), Path(root) / PARTS_DIR):
            remove_dead_temporaries(folder)
    groups = len(plan.groups)
    mine = list(range(index * groups // count, (index + 1) * groups // count))
    done = {g for g in range(groups) if _finished(plan, root, g)}
    todo = [g for g in mine if g not in done]
    if todo:
        _run_groups(plan, root, todo, workers, on_group)
    pending = [g for g in range(groups) if g not in done and g not in todo]
    return BuildResult(root, plan, built=todo, skipped=sorted(done & set(mine)), pending=pending)


def _claim(plan: Plan, root: str) -> None:
    """Write the plan under `root`, or check that the one there is this build's."""
    where = join(root, PLAN_FILE)
    existing = read_text(where)
    if existing is None:
        if read_text(join(root, MANIFEST_FILE)) is not None:
            raise DataError(f"config key 'output': {root} already holds a finished dataset; datasets are never "
                            "replaced: choose another output prefix")
        write_text(where, plan.to_json())
        return
    other = Plan.from_json(existing, where)
    if other.key != plan.key:
        differs = [k for k in ("source", "options", "kind", "shard_rows", "row_group_rows", "groups")
                   if getattr(other, k) != getattr(plan, k)]
        raise DataError(f"config key 'output': {root} holds a build of another dataset ({', '.join(differs)} "
                        f"differ, see {where}); choose another output prefix")


def _marker(root: str, group: int) -> str:
    return join(join(root, PARTS_DIR), f"group-{group:05d}.json")


def _read_marker(plan: Plan, root: str, group: int) -> dict[str, Any] | None:
    text = read_text(_marker(root, group))
    if text is None:
        return None
    body = json.loads(text)
    return body if body.get("plan") == plan.key else None


def groups_built(plan: Plan, root: str) -> int:
    """How many of the plan's groups have their marker under `root` (what a rerun will not redo)."""
    return sum(_finished(plan, root, g) for g in range(len(plan.groups)))


def every_group_built(root: str) -> bool:
    """True when the build under `root` has a marker for each of its groups (finished, manifest or not)."""
    text = read_text(join(root, PLAN_FILE))
    if text is None:
        return False
    plan = Plan.from_json(text, join(root, PLAN_FILE))
    return all(_finished(plan, root, g) for g in range(len(plan.groups)))


def _finished(plan: Plan, root: str, group: int) -> bool:
    return _read_marker(plan, root, group) is not None


def _run_groups(plan: Plan, root: str, todo: list[int], workers: int,
                on_group: Callable[[int, int], None] | None) -> None:
    if workers <= 1 or len(todo) == 1:
        for n, group in enumerate(todo, 1):
            build_group(plan.to_json(), root, group)
            if on_group:
                on_group(n, len(todo))
        return
    # spawn: workers start clean (no copy of the parent's MLflow threads, locks or open files)
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(min(workers, len(todo)), mp_context=context) as pool:
        futures = [pool.submit(build_group, plan.to_json(), root, g) for g in todo]
        try:
            for n, future in enumerate(concurrent.futures.as_completed(futures), 1):
                future.result()
                if on_group:
                    on_group(n, len(todo))
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def build_group(plan_json: str, root: str, group: int) -> None:
    """Read one group's records, write its shards, then its marker (in a worker process)."""
    plan = Plan.from_json(plan_json, PLAN_FILE)
    problems: list[FileProblem] = []
    ws = _load_group(plan, group, problems)
    shards: list[Shard] = []
    schema = None
    if ws is not None:
        ws = ws.sorted()
        schema = shard_schema(ws)
        # A local shard is written under a temporary name in its own directory and renamed there (never
        # across filesystems: $TMPDIR and a data disk usually differ); S3 shards are uploaded from $TMPDIR.
        remote = "://" in root
        with tempfile.TemporaryDirectory(prefix="biosig-shard-") if remote else contextlib.nullcontext(root) as scratch:
            for start in range(0, ws.n_windows, plan.shard_rows):
                part = ws.take(np.arange(start, min(start + plan.shard_rows, ws.n_windows)))
                shards.append(write_shard(part, root, scratch=Path(scratch), row_group_rows=plan.row_group_rows))
    marker = {"plan": plan.key, "group": group, "schema": schema, "shards": [dataclasses.asdict(s) for s in shards],
              "problems": [dataclasses.asdict(p) for p in problems]}
    write_text(_marker(root, group), json.dumps(marker))


def _load_group(plan: Plan, group: int, problems: list[FileProblem]) -> WindowSet | None:
    from biosig.data.sources import _load_recordings

    options = SourceOptions(**plan.options)
    units = plan.groups[group]
    if plan.source.startswith("synthetic:"):
        (first, stop), = units
        return _synthetic_block(plan.source, options, first, stop)
    try:
        if plan.source.startswith(("butppg:", "vitaldb:")):
            return _load_recordings(plan.source, options, problems, records=units)
        return load_source(plan.source, options, problems)
    except DataError as exc:
        if plan.source.startswith(("butppg:", "vitaldb:")):  # no record of this group gave a window
            problems.append(FileProblem(f"{plan.source} group {group}", str(exc), "warning"))
            return None
        raise


def _synthetic_block(source: str, options: SourceOptions, first: int, stop: int) -> WindowSet:
    """Subjects [first, stop) of a synthetic corpus, named by their global index (zero-padded, so subject
    order is block order). Cardio subjects are generated one at a time from their own seed, so the corpus
    does not depend on how it is divided (and small arrays generate ~2x faster per window than one large
    block); EEG subjects per block, whose labels are balanced within it."""
    width = max(3, len(str(max(stop - 1, 0))))
    if source == "synthetic:eeg":
        return _renamed(load_source(source, dataclasses.replace(options, n_subjects=stop - first,
                                                                 seed=_seed(options.seed, first))), first, width)
    parts = [_renamed(load_source(source, dataclasses.replace(options, n_subjects=1, seed=_seed(options.seed, i))),
                      i, width) for i in range(first, stop)]
    return WindowSet.concat(parts, source=source)


def _seed(seed: int, index: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{index}".encode()).digest()[:4], "little")


def _renamed(ws: WindowSet, first: int, width: int) -> WindowSet:
    """Subjects renamed to {prefix}{first + local index}."""
    local = np.unique(ws.subject, return_inverse=True)[1]
    names = np.array([f"{ws.subject[0][0]}{first + i:0{width}d}" for i in range(local.max() + 1)])
    return dataclasses.replace(ws, subject=names[local], source=ws.source.split("?")[0])


def group_problems(plan: Plan, root: str, groups: list[int]) -> list[FileProblem]:
    """The problems of the records of `groups` (from their markers), for data_errors.csv."""
    markers = [_read_marker(plan, root, g) for g in sorted(groups)]
    return [FileProblem(**p) for m in markers if m is not None for p in m["problems"]]


def finalize(root: str) -> tuple[Manifest, list[FileProblem]]:
    """Write manifest.json from a finished build's group markers (the problems of every record come back
    for data_errors.csv). A manifest already there is returned as it is."""
    where = join(root, PLAN_FILE)
    text = read_text(where)
    if text is None:
        if read_text(join(root, MANIFEST_FILE)) is not None:
            return read_manifest(root), []
        raise DataError(f"{root} holds no build ({PLAN_FILE} not found): build it with "
                        f"`biosig log-dataset --output {root.rstrip('/')}/` first")
    plan = Plan.from_json(text, where)
    markers = [_read_marker(plan, root, g) for g in range(len(plan.groups))]
    missing = [g for g, m in enumerate(markers) if m is None]
    if missing:
        raise DataError(f"{root}: {len(missing)} of {len(plan.groups)} group(s) are not built yet "
                        f"(e.g. {missing[:5]}); run the remaining shard=i/n parts, then finalize again")
    problems = group_problems(plan, root, list(range(len(plan.groups))))
    built = [m for m in markers if m["shards"]]
    if not built:
        raise DataError(f"{plan.source}: no window survived in any of {len(plan.groups)} group(s); "
                        "see data_errors.csv")
    schema = built[0]["schema"]
    for m in built[1:]:
        if m["schema"] != schema:
            keys = sorted(k for k in schema if schema[k] != m["schema"].get(k))
            raise DataError(f"{root}: group {m['group']} differs from group {built[0]['group']} in {keys}: "
                            "its records cannot form one dataset with the others")
    shards = [Shard(**s) for m in built for s in m["shards"]]
    n_windows = sum(s.rows for s in shards)
    name = conventional_name(schema["modality"], schema["n_samples"] / schema["fs"], schema["channels"], n_windows,
                             plan.kind)
    manifest = make_manifest(shards, schema, name=name, root=root,
                             build={"source": plan.source, "plan": plan.key, "groups": len(plan.groups)})
    existing = read_text(join(root, MANIFEST_FILE))
    if existing is not None:
        return read_manifest(root), problems
    write_text(join(root, MANIFEST_FILE), manifest.to_json())
    return read_manifest(root), problems
