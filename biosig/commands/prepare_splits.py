"""`prepare_splits`: subject-level split manifests as run artifacts, with digests as tags.

One split (`cv: 0`) or k cross-validation folds (`cv: k`, a fixed test split plus k train/val
partitions of the other subjects), stratified by each subject's majority label and reproducible by seed.
A `recommended_split` column in a parquet dataset (subject-level train/val/test shipped with the data)
is honoured when present. Each manifest is a `subject,split` CSV that `finetune -P split_manifest=…`
and `compare` read; its digest is the tag `biosig.split.digest` (per fold `biosig.split.fold<i>.digest`)
here and on every fine-tune that uses it, so runs on the same split are recognisably comparable.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from biosig.commands.configs import PrepareSplitsConfig
from biosig.data import SourceOptions
from biosig.data.splits import manifest_digest, recommended_split, subject_folds, subject_split, write_manifest_once
from biosig.errors import DataError
from biosig.logs import get_logger
from biosig.tracking.datasets import use_dataset
from biosig.tracking.run import tracked_run
from biosig.tracking.tags import SPLIT_DIGEST_TAG, SPLIT_FOLDS_TAG, SPLIT_SOURCE_TAG, fold_digest_tag

log = get_logger(__name__)

RECOMMENDED_COLUMN = "recommended_split"


@dataclasses.dataclass
class PreparedSplits:
    run_id: str
    manifests: list[Path]
    digests: list[str]
    source: str  # "recommended" or "stratified"


def run_prepare_splits(config: PrepareSplitsConfig, *, nested: bool = False) -> PreparedSplits:
    with tracked_run("prepare_splits", config, nested=nested) as ctx:
        logged = use_dataset(ctx, config.data, SourceOptions(n_subjects=config.n_subjects,
                             windows_per_subject=config.windows_per_subject, seed=config.seed),
                             output_dir=config.data_dir)
        ctx.name_run(f"prepare_splits {logged.name}")
        ws = logged.windows
        recommended = _recommended(logged.path, ws.subject_name) if config.use_recommended else None
        origin = "recommended" if recommended else "stratified"
        if config.cv:
            fixed_test = {s for s, v in recommended.items() if v == "test"} if recommended else None
            partitions = subject_folds(ws, config.cv, config.test_fraction, seed=config.seed, fixed_test=fixed_test)
        elif recommended:
            partitions = [recommended_split(ws, recommended)]
        else:
            partitions = [subject_split(ws, config.val_fraction, config.test_fraction, seed=config.seed)]
        out = Path(config.output_dir) / logged.path.stem  # the dataset's content-addressed name
        manifests, digests, tags = [], [], {SPLIT_SOURCE_TAG: origin, SPLIT_FOLDS_TAG: len(partitions)}
        for i, splits in enumerate(partitions):
            path = write_manifest_once(splits, out, f"fold{i}" if config.cv else "split")
            digest = manifest_digest(path)
            manifests.append(path)
            digests.append(digest)
            tags[fold_digest_tag(i) if config.cv else SPLIT_DIGEST_TAG] = digest
            ctx.log_artifact(path, "splits")
            counts = {split: int(len(np.unique(part.subject))) for split, part in splits.items()}
            ctx.log_metrics({f"{'fold%d.' % i if config.cv else ''}{split}_subjects": n for split, n in counts.items()})
            log.info(f"{path}: {', '.join(f'{s} {n} subjects' for s, n in counts.items())} (sha256 {digest[:12]})")
        ctx.set_tags(tags)
        return PreparedSplits(ctx.run_id, manifests, digests, origin)


def _recommended(path: Path, subject_column: str) -> dict[str, str] | None:
    """subject -> split from the parquet's `recommended_split` column, if it has one (one value per
    subject, else an error naming the subject)."""
    import pyarrow.parquet as pq

    if path.suffix != ".parquet" or RECOMMENDED_COLUMN not in pq.read_schema(path).names:
        return None
    table = pq.read_table(path, columns=[subject_column, RECOMMENDED_COLUMN]).to_pandas()
    per_subject = table.groupby(subject_column, observed=True)[RECOMMENDED_COLUMN].unique()
    mixed = [s for s, values in per_subject.items() if len(values) > 1]
    if mixed:
        raise DataError(f"{path}: {RECOMMENDED_COLUMN} differs between windows of subject(s) {mixed[:5]}: "
                        "splits must be subject-level")
    return {str(s): str(values[0]) for s, values in per_subject.items()}
