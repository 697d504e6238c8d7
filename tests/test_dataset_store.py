"""Datasets found by digest wherever they lie: another working directory with the same store finds a run's
dataset in its own data folder (the recorded path is another machine's), by name or digest; doctor agrees."""

import shutil

import pytest

from biosig.cli import main
from biosig.errors import DataError
from biosig.tracking.dataset_store import find_dataset
from tests.helpers import TINY_FINETUNE, TINY_NAME, finished_runs


def test_a_moved_dataset_is_found_by_its_digest_by_name_and_by_doctor(pretrained, workdir, tmp_path, monkeypatch,
                                                                      capsys):
    assert main(["finetune", "--pretrain-config", str(pretrained), *TINY_FINETUNE, "--bootstrap", "0"]) == 0
    (run,) = [r for r in finished_runs("FINISHED") if r.data.tags.get("biosig.command") == "finetune"]
    recorded, digest = run.data.tags["biosig.dataset.uri"], run.data.tags["biosig.dataset.digest"]
    name = run.data.tags["biosig.dataset.name"]
    other = tmp_path / "machine-b"
    (other / "data").mkdir(parents=True)
    shutil.move(recorded, other / "data")  # the same bytes, somewhere else; the recorded path is gone
    monkeypatch.chdir(other)

    found, _ = find_dataset(recorded)
    assert found == str(other / "data" / recorded.rsplit("/", 1)[1])
    assert find_dataset(name)[0] == found and find_dataset(f"digest:{digest[:8]}")[0] == found
    capsys.readouterr()
    assert main(["evaluate", "--model", f"{TINY_NAME}_finetuned@candidate"]) == 0
    assert main(["doctor"]) == 0, capsys.readouterr().out
    with pytest.raises(DataError, match="no run of this tracking store recorded it"):
        find_dataset("digest:0123456789abcdef")


def test_a_dataset_only_on_another_machine_says_how_to_share_it(pretrained, workdir, capsys):
    assert main(["finetune", "--pretrain-config", str(pretrained), *TINY_FINETUNE, "--bootstrap", "0"]) == 0
    (run,) = [r for r in finished_runs("FINISHED") if r.data.tags.get("biosig.command") == "finetune"]
    shutil.rmtree(workdir / "data")
    capsys.readouterr()
    assert main(["evaluate", "--model", f"{TINY_NAME}_finetuned@candidate"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"(digest {run.data.tags['biosig.dataset.digest'][:12]}) is not on this machine" in err
    assert "log it through the team server (or set $BIOSIG_DATA_ROOT)" in err


def test_a_data_root_on_s3_holds_each_dataset_once_and_runs_record_it(s3, workdir, monkeypatch, capsys):
    monkeypatch.setenv("BIOSIG_DATA_ROOT", "s3://models/datasets")
    args = ["log-dataset", "--source", "synthetic:ppg-ecg", "--n_subjects", "3", "--windows_per_subject", "2"]
    assert main(args) == 0 and main(args) == 0
    runs = finished_runs("FINISHED")
    uris = {r.data.tags["biosig.dataset.uri"] for r in runs}
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="models", Prefix="datasets/")["Contents"]]
    assert len(runs) == 2 and len(uris) == 1 and len(keys) == 1  # one object, recorded by both runs
    assert uris == {f"s3://models/{keys[0]}"} and keys[0].endswith(f"_{runs[0].data.tags['biosig.dataset.digest'][:12]}.parquet")

    monkeypatch.setenv("BIOSIG_DATA_ROOT", "/shared/datasets")  # not an S3 prefix
    before = sorted((workdir / "data").iterdir())
    capsys.readouterr()
    assert main(["log-dataset", "--source", "synthetic:ppg-ecg", "--n_subjects", "4"]) == 2
    (line,) = [x for x in capsys.readouterr().err.splitlines() if " INFO " not in x]
    assert line == "biosig: error: $BIOSIG_DATA_ROOT must be an s3://bucket/prefix, got '/shared/datasets'"
    assert not finished_runs("RUNNING") and sorted((workdir / "data").iterdir()) == before  # its file removed
