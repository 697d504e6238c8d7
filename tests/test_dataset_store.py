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
