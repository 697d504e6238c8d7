"""prepare_splits: subject-level manifests and k folds, recommended splits, digests shared with finetune."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from biosig.cli import main
from biosig.commands.prepare_splits import PrepareSplitsConfig, run_prepare_splits
from biosig.config import load_config
from biosig.data import read_parquet
from biosig.data.splits import manifest_digest
from biosig.tracking.tags import SPLIT_DIGEST_TAG
from tests.helpers import TINY_FINETUNE, finished_runs


def run(**keys):
    return run_prepare_splits(load_config(PrepareSplitsConfig, None, {"n_subjects": 12, "windows_per_subject": 4,
                                                                  **keys}))


def test_k_folds_keep_subjects_apart_and_share_one_test_split(workdir):
    result = run(cv=3, test_fraction=0.25, seed=3)
    assert result.source == "stratified" and len(result.manifests) == 3
    folds = [pd.read_csv(path, dtype=str) for path in result.manifests]
    tests = [set(f.subject[f.split == "test"]) for f in folds]
    vals = [set(f.subject[f.split == "val"]) for f in folds]
    assert tests[0] == tests[1] == tests[2] and len(tests[0]) == 3
    assert not (vals[0] & vals[1]) and not (vals[0] & vals[2]) and not (vals[1] & vals[2])
    assert set().union(*vals) | tests[0] == set(folds[0].subject) and len(folds[0]) == 12
    for fold in folds:  # every subject in exactly one split of each fold
        assert fold.subject.is_unique
    tags = MlflowClient().get_run(result.run_id).data.tags
    assert [tags[f"biosig.split.fold{i}.digest"] for i in range(3)] == result.digests
    assert len(set(result.digests)) == 3
    again = run(cv=3, test_fraction=0.25, seed=3)
    assert again.digests == result.digests  # reproducible by seed


def test_one_split_digest_is_tagged_on_finetunes_that_use_it(pretrained, workdir):
    result = run(data="synthetic:quality", n_subjects=8, windows_per_subject=6, test_fraction=0.25)
    manifest = result.manifests[0]
    assert MlflowClient().get_run(result.run_id).data.tags[SPLIT_DIGEST_TAG] == result.digests[0]
    assert main(["finetune", "--pretrain-config", str(pretrained), *TINY_FINETUNE, "--split-manifest", str(manifest),
                 "--register", "false"]) == 0
    finetune_run = [r for r in finished_runs("FINISHED") if r.data.tags.get("biosig.command") == "finetune"][0]
    assert finetune_run.data.tags[SPLIT_DIGEST_TAG] == manifest_digest(manifest) == result.digests[0]


def test_a_recommended_split_column_is_honoured(workdir):
    first = run()
    path = next((workdir / "data").glob("*.parquet"))
    table = pq.read_table(path)
    subjects = table.column("subject").to_pylist()
    ids = sorted(set(subjects))
    wanted = {s: "test" if i < 2 else "val" if i < 5 else "train" for i, s in enumerate(ids)}
    with_column = table.append_column("recommended_split", pa.array([wanted[s] for s in subjects]))
    pq.write_table(with_column.replace_schema_metadata(table.schema.metadata), workdir / "recommended.parquet")
    read_parquet(workdir / "recommended.parquet")  # still a valid biosig dataset
    result = run(data=str(workdir / "recommended.parquet"))
    assert result.source == "recommended" and result.digests != first.digests
    manifest = pd.read_csv(result.manifests[0], dtype=str)
    assert dict(zip(manifest.subject, manifest.split)) == wanted
    folds = run(data=str(workdir / "recommended.parquet"), cv=2)
    assert all(set(pd.read_csv(p, dtype=str).query("split == 'test'").subject) == {ids[0], ids[1]}
               for p in folds.manifests)
    mixed = [wanted[s] for s in subjects]
    mixed[0] = "train" if mixed[0] != "train" else "val"
    pq.write_table(table.append_column("recommended_split", pa.array(mixed))
                   .replace_schema_metadata(table.schema.metadata), workdir / "mixed.parquet")
    with pytest.raises(Exception, match="recommended_split differs between windows of subject"):
        run(data=str(workdir / "mixed.parquet"))


def test_bad_fold_counts_are_refused(workdir, capsys):
    assert main(["prepare-splits", "--cv", "1"]) == 2
    assert "'cv' must be 0 (one split) or at least 2 folds" in capsys.readouterr().err
    assert main(["prepare-splits", "--cv", "40", "--n-subjects", "6"]) == 2
    assert "too few for 40 folds" in capsys.readouterr().err
    assert np.all([r.info.status != "RUNNING" for r in finished_runs()])
