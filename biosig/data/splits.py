"""Subject-level splits: every window of a subject lands in exactly one of train/val/test, so no
subject's physiology leaks from training into evaluation."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from biosig.data.atomic import atomic_path
from biosig.data.shards import Manifest
from biosig.data.windowset import WindowSet
from biosig.errors import ConfigError, DataError

SPLITS = ("train", "val", "test")


def subject_split(ws: WindowSet, val_fraction: float, test_fraction: float, seed: int = 0) -> dict[str, WindowSet]:
    """Split by subject, stratified by each subject's majority label so that val and test see every
    class when there are enough subjects. Fractions are of subjects; with test_fraction 0 there is no
    'test' entry."""
    _check_fractions(val_fraction, test_fraction)
    subjects, inverse = np.unique(ws.subject, return_inverse=True)
    _check_enough(len(subjects), test_fraction, ws.where, ws.subject_name)
    majority = np.array([np.bincount(ws.labels[inverse == i].clip(0)).argmax() for i in range(len(subjects))])
    window_split = _assign(majority, val_fraction, test_fraction, seed)[inverse]
    return {name: ws.take(np.flatnonzero(window_split == name)) for name in SPLITS if (window_split == name).any()}


def manifest_subject_split(manifest: Manifest, val_fraction: float, test_fraction: float,
                           seed: int = 0) -> dict[str, set[str]]:
    """subject_split of a sharded dataset from its manifest's subject index, without reading signals:
    the same subjects land in the same splits as subject_split of the same rows read into memory."""
    _check_fractions(val_fraction, test_fraction)
    index = manifest.subject_labels()
    subjects = np.array(sorted(index))
    _check_enough(len(subjects), test_fraction, manifest.root, manifest.schema["subject_column"])
    majority = np.array([majority_label(index[s]) for s in subjects])
    assignment = _assign(majority, val_fraction, test_fraction, seed)
    return {name: set(subjects[assignment == name].tolist()) for name in SPLITS if (assignment == name).any()}


def nested_subjects(majority: dict[str, int], k: int, seed: int) -> set[str]:
    """k of the subjects (by their majority label), drawn so that for one seed the subset of k is inside
    the subset of every larger k (label-efficiency curves: 2 within 4 within 8) and classes alternate, so
    the smallest subsets hold every class. k >= the number of subjects: all of them."""
    rng = np.random.default_rng(seed)
    by_class = {label: list(rng.permutation(sorted(s for s, m in majority.items() if m == label)))
                for label in sorted(set(majority.values()))}
    order: list[str] = []
    while any(by_class.values()):
        order += [queue.pop(0) for queue in by_class.values() if queue]
    return set(order[:k])


def subject_majorities(ws: WindowSet) -> dict[str, int]:
    subjects, inverse = np.unique(ws.subject, return_inverse=True)
    return {str(s): int(np.bincount(ws.labels[inverse == i].clip(0)).argmax()) for i, s in enumerate(subjects)}


def majority_label(labels: dict[int, int]) -> int:
    """The most frequent label, unlabelled (-1) counted as 0 and ties to the lower label, as in subject_split."""
    counts: dict[int, int] = {}
    for label, n in labels.items():
        counts[max(label, 0)] = counts.get(max(label, 0), 0) + n
    return min(counts, key=lambda label: (-counts[label], label))


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    if not 0 < val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ConfigError(f"val_fraction {val_fraction} and test_fraction {test_fraction} must be in [0, 1) "
                          "with val > 0 and a sum below 1")


def _check_enough(n_subjects: int, test_fraction: float, where: str, subject_name: str) -> None:
    if n_subjects < (3 if test_fraction else 2):
        raise DataError(f"{where} has {n_subjects} {subject_name}(s): a subject-level "
                        f"train/val{'/test' if test_fraction else ''} split needs at least "
                        f"{3 if test_fraction else 2}")


def _assign(majority: np.ndarray, val_fraction: float, test_fraction: float, seed: int) -> np.ndarray:
    """Each subject's split, stratified by its majority label."""
    rng = np.random.default_rng(seed)
    assignment = np.empty(len(majority), dtype=object)
    for label in np.unique(majority):
        members = rng.permutation(np.flatnonzero(majority == label))
        n_test = _share(len(members), test_fraction)
        n_val = _share(len(members) - n_test, val_fraction / (1 - test_fraction))
        assignment[members[:n_test]] = "test"
        assignment[members[n_test:n_test + n_val]] = "val"
        assignment[members[n_test + n_val:]] = "train"
    _ensure_nonempty(assignment, test_fraction > 0, rng)
    return assignment


def _share(n: int, fraction: float) -> int:
    """round(n * fraction), at least 1 when the fraction is positive and n allows a train member."""
    if fraction <= 0 or n < 2:
        return 0
    return min(n - 1, max(1, round(n * fraction)))


def _ensure_nonempty(assignment: np.ndarray, want_test: bool, rng: np.random.Generator) -> None:
    """Small strata can leave val or test empty: move one subject from the largest split."""
    for name in ("val", "test") if want_test else ("val",):
        if (assignment == name).any():
            continue
        donors = [s for s in SPLITS if (assignment == s).sum() > 1]
        donor = max(donors, key=lambda s: (assignment == s).sum())
        assignment[rng.choice(np.flatnonzero(assignment == donor))] = name


def read_split_table(path: str | Path) -> dict[str, str]:
    """subject -> split of a split manifest CSV (columns subject,split; split: train, val or test)."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise DataError(f"split manifest not found: {path}")
    try:
        table = pd.read_csv(path, dtype=str)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"split manifest {path} cannot be read as CSV subject,split: "
                        f"{str(exc).splitlines()[0] or type(exc).__name__}") from None
    if list(table.columns[:2]) != ["subject", "split"]:
        raise DataError(f"split manifest {path} must have the columns subject,split; it has {list(table.columns)}")
    bad = sorted(str(v) for v in set(table.split) - set(SPLITS))
    if bad:
        raise DataError(f"split manifest {path} has unknown split value(s) {bad}; use {', '.join(SPLITS)}")
    if table.empty:
        raise DataError(f"split manifest {path} lists no subjects")
    return dict(zip(table.subject, table.split))


def manifest_split(ws: WindowSet, path: str | Path) -> dict[str, WindowSet]:
    """Splits from a manifest CSV with columns `subject,split` (split: train, val or test), so that
    several runs (e.g. a `compare`) provably share one split. Every subject of the data must be listed."""
    mapping = read_split_table(path)
    missing = sorted(str(s) for s in set(ws.subject) - set(mapping))  # plain str: no np.str_('S000') in messages
    if missing:
        raise DataError(f"split manifest {path} does not assign {len(missing)} subject(s) of {ws.where}, "
                        f"e.g. {', '.join(missing[:5])}")
    window_split = np.array([mapping[s] for s in ws.subject])
    return {name: ws.take(np.flatnonzero(window_split == name)) for name in SPLITS if (window_split == name).any()}


def write_manifest(splits: dict[str, WindowSet] | dict[str, set[str]], path: str | Path) -> Path:
    """The subject -> split table of `splits` (split windows, or split subjects), as read by manifest_split."""
    Path(path).write_text(_manifest_text(splits))
    return Path(path)


def write_manifest_once(splits: dict[str, WindowSet], folder: str | Path, stem: str) -> Path:
    """`{folder}/{stem}_{digest12}.csv`, content-addressed: written atomically unless it already exists
    (then it holds these rows), so another seed or fraction never replaces a manifest a run recorded."""
    text = _manifest_text(splits)
    path = Path(folder) / f"{stem}_{_rows_digest(text)[:12]}.csv"
    if not path.exists():
        with atomic_path(path) as tmp:
            tmp.write_text(text)
    return path


def _manifest_text(splits: dict[str, WindowSet] | dict[str, set[str]]) -> str:
    rows = sorted({(str(s), name) for name, part in splits.items()
                   for s in (np.unique(part.subject) if isinstance(part, WindowSet) else part)})
    return "subject,split\n" + "".join(f"{s},{name}\n" for s, name in rows)


def recommended_split(ws: WindowSet, recommended: dict[str, str]) -> dict[str, WindowSet]:
    """Splits from a dataset's own recommendation (subject -> train/val/test), e.g. a
    `recommended_split` column shipped with the data. Every subject must have one."""
    bad = sorted({v for v in recommended.values()} - set(SPLITS))
    if bad:
        raise DataError(f"recommended_split of {ws.where} has unknown value(s) {bad}; use {', '.join(SPLITS)}")
    missing = sorted(set(ws.subject) - set(recommended))
    if missing:
        raise DataError(f"recommended_split of {ws.where} does not cover {len(missing)} subject(s), "
                        f"e.g. {', '.join(map(str, missing[:5]))}")
    window_split = np.array([recommended[s] for s in ws.subject])
    return {name: ws.take(np.flatnonzero(window_split == name)) for name in SPLITS if (window_split == name).any()}


def subject_folds(ws: WindowSet, k: int, test_fraction: float, seed: int = 0,
                  fixed_test: set[str] | None = None) -> list[dict[str, WindowSet]]:
    """k subject-level folds for cross-validation: a test split held out once (`fixed_test`, else
    `test_fraction` of the subjects, stratified), the other subjects cut into k groups stratified by
    their majority label; fold i validates on group i and trains on the rest."""
    from sklearn.model_selection import StratifiedKFold

    if k < 2:
        raise ConfigError(f"config key 'cv' must be 0 (one split) or at least 2 folds, got {k}")
    if fixed_test is None:  # the same stratified test subjects a single split with this seed would hold out
        fixed_test = set(subject_split(ws, (1 - test_fraction) / 2, test_fraction, seed)["test"].subject) \
            if test_fraction else set()
    subjects, inverse = np.unique(ws.subject, return_inverse=True)
    pool = np.array([i for i, s in enumerate(subjects) if s not in fixed_test])
    if len(pool) < k:
        raise DataError(f"{ws.where} has {len(pool)} {ws.subject_name}(s) outside the test split: too few for "
                        f"{k} folds")
    majority = np.array([np.bincount(ws.labels[inverse == i].clip(0)).argmax() for i in pool])
    smallest = np.bincount(majority)[np.bincount(majority) > 0].min()
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed) if smallest >= k else None
    groups = splitter.split(pool, majority) if splitter else _plain_folds(len(pool), k, seed)
    folds = []
    for _, val_index in groups:
        assignment = np.full(len(subjects), "train", dtype=object)
        assignment[[i for i, s in enumerate(subjects) if s in fixed_test]] = "test"
        assignment[pool[val_index]] = "val"
        window_split = assignment[inverse]
        folds.append({name: ws.take(np.flatnonzero(window_split == name)) for name in SPLITS
                      if (window_split == name).any()})
    return folds


def cv_folds(ws: WindowSet, cv: str, val_fraction: float, seed: int = 0) -> list[dict[str, WindowSet]]:
    """Cross-validation folds whose *test* splits partition the subjects: `cv` = k (subjects cut into k
    groups stratified by majority label) or `loso` (one fold per subject). Within each fold a stratified
    `val_fraction` of the remaining subjects validates and the rest trains, so every subject is tested
    exactly once and never trains the model that tests it."""
    from sklearn.model_selection import StratifiedKFold

    subjects, inverse = np.unique(ws.subject, return_inverse=True)
    k = len(subjects) if cv == "loso" else int(cv)
    if len(subjects) < max(k, 3) or (cv == "loso" and len(subjects) < 3):
        raise DataError(f"{ws.where} has {len(subjects)} {ws.subject_name}(s): cv={cv} needs at least "
                        f"{max(k, 3)} (a test, a val and a train subject per fold)")
    majority = np.array([np.bincount(ws.labels[inverse == i].clip(0)).argmax() for i in range(len(subjects))])
    counts = np.bincount(majority)
    if cv != "loso" and counts[counts > 0].min() >= k:
        groups = [test for _, test in StratifiedKFold(k, shuffle=True, random_state=seed).split(subjects, majority)]
    else:
        groups = [part for _, part in _plain_folds(len(subjects), k, seed)]
    folds = []
    for test in groups:
        is_test = np.isin(np.arange(len(subjects)), test)[inverse]
        rest = subject_split(ws.take(np.flatnonzero(~is_test)), val_fraction, 0.0, seed)
        folds.append({**rest, "test": ws.take(np.flatnonzero(is_test))})
    return folds


def _plain_folds(n: int, k: int, seed: int):
    """Unstratified folds when a class has fewer subjects than folds."""
    order = np.random.default_rng(seed).permutation(n)
    for part in np.array_split(order, k):
        yield None, part


def manifest_digest(path: str | Path) -> str:
    """sha256 of a manifest's rows (sorted, so reordering lines does not change it)."""
    return _rows_digest(Path(path).read_text())


def _rows_digest(text: str) -> str:
    lines = sorted(line.strip() for line in text.splitlines()[1:] if line.strip())
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()
