"""Muse CSV exports -> the EEG primary dataset: both exporters' layouts, NaN rows and gaps reported,
windows never spanning a gap, unreadable files skipped into data_errors.csv."""

from __future__ import annotations

import csv

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from biosig.cli import main
from biosig.data import read_parquet
from biosig.data.sources import FileProblem, SourceOptions, load_source
from biosig.errors import DataError

FS = 256


def muse_lsl(path, seconds: float, start: float = 1.7e9, seed: int = 0):
    """muse-lsl layout: timestamps (Unix s), TP9, AF7, AF8, TP10, Right AUX."""
    rng = np.random.default_rng(seed)
    n = int(seconds * FS)
    table = pd.DataFrame({"timestamps": start + np.arange(n) / FS,
                          **{c: rng.normal(0, 15, n) for c in ("TP9", "AF7", "AF8", "TP10")},
                          "Right AUX": 0.0})
    table.to_csv(path, index=False)
    return table


def mind_monitor(path, seconds: float, seed: int = 1):
    """Mind Monitor layout: TimeStamp as text, RAW_* columns, interleaved rows without EEG values."""
    rng = np.random.default_rng(seed)
    n = int(seconds * FS)
    times = pd.Timestamp("2026-03-04 10:11:12") + pd.to_timedelta(np.arange(n) / FS, unit="s")
    table = pd.DataFrame({"TimeStamp": times.strftime("%Y-%m-%d %H:%M:%S.%f"),
                          **{f"RAW_{c}": rng.normal(0, 15, n) for c in ("TP9", "AF7", "AF8", "TP10")},
                          "Elements": ""})
    marker = table.iloc[:3].copy()
    marker[[f"RAW_{c}" for c in ("TP9", "AF7", "AF8", "TP10")]] = np.nan
    marker["Elements"] = "/muse/elements/blink"
    pd.concat([table, marker]).sort_values("TimeStamp", kind="stable").to_csv(path, index=False)


@pytest.fixture
def recordings(tmp_path):
    folder = tmp_path / "muse"
    folder.mkdir()
    table = muse_lsl(folder / "rec_a.csv", 70)
    # P002: 3 NaN rows, and a 5 s gap after 20 s.
    b = muse_lsl(folder / "rec_b.csv", 45, seed=2)
    b.loc[[10, 11, 12], "AF7"] = np.nan
    b.loc[20 * FS:, "timestamps"] += 5.0
    b.to_csv(folder / "rec_b.csv", index=False)
    mind_monitor(folder / "P003.csv", 40)
    (folder / "broken.csv").write_text("timestamps,TP9,AF7\n1,2,3\n")
    (folder / "participants.csv").write_text("Participant,Remission,file\nP001,1,rec_a.csv\nP002,0,rec_b.csv\n"
                                             "P003,1,\n")
    return folder, table


def test_recordings_become_ordered_windows_with_gaps_and_nans_reported(recordings):
    folder, table = recordings
    problems: list[FileProblem] = []
    ws = load_source(f"muse:{folder}", SourceOptions(window_s=8.0), problems)
    assert ws.channels == ["AF7", "AF8", "TP9", "TP10"] and ws.fs == FS and ws.n_samples == 8 * FS
    counts = dict(zip(*np.unique(ws.subject, return_counts=True)))
    # P001: 70 s -> 8 windows; P002: 20 s + 25 s segments -> 2 + 3 (none spans the gap); P003: 40 s -> 5.
    assert counts == {"P001": 8, "P002": 5, "P003": 5}
    assert dict(zip(ws.subject, ws.labels)) == {"P001": 1, "P002": 0, "P003": 1}
    p1 = ws.subject == "P001"
    assert ws.order[p1].tolist()[:5] == [[0, 0], [0, 1], [0, 2], [0, 3], [1, 0]]
    np.testing.assert_allclose(ws.signals[p1][0, 0], table.AF7.to_numpy()[:8 * FS], rtol=1e-6)  # channels by name: AF7 first
    # The 3 NaN rows are missing samples: a gap too, so P002's first window starts after them.
    p2_starts = ws.meta["window_start"][ws.subject == "P002"]
    np.testing.assert_allclose(p2_starts, [13 / FS, 13 / FS + 8, 25.0, 33.0, 41.0])
    by_kind = {(p.file.split("/")[-1], p.kind) for p in problems}
    assert ("broken.csv", "error") in by_kind and ("rec_b.csv", "warning") in by_kind
    assert ("P003.csv", "warning") in by_kind  # Mind Monitor's marker rows without EEG values
    assert any("gap" in p.error for p in problems) and any("dropped 3" in p.error for p in problems)


def test_log_dataset_names_the_primary_dataset_and_lists_problems(workdir, recordings):
    folder, _ = recordings
    assert main(["log-dataset", "--source", f"muse:{folder}"]) == 0
    (path,) = (workdir / "data").glob("EEG_8s_af7-af8-tp9-tp10_18windows_primary_*.parquet")
    ws = read_parquet(path)  # the order Participant -> parent_window_id -> sub_window_id is verified here
    assert ws.subject_name == "Participant" and ws.label_name == "Remission"
    assert ws.order_names == ["parent_window_id", "sub_window_id"]
    run = MlflowClient().search_runs(["0", "1"])[0]
    assert run.data.tags["biosig.dataset.errors"] == "1" and int(run.data.tags["biosig.dataset.warnings"]) >= 2
    rows = list(csv.DictReader(open(MlflowClient().download_artifacts(run.info.run_id, "dataset/data_errors.csv"))))
    assert {r["kind"] for r in rows} == {"error", "warning"}


def test_unusable_sources_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="is not a directory"):
        load_source(f"muse:{tmp_path / 'nowhere'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .csv recordings"):
        load_source(f"muse:{tmp_path / 'empty'}")
    bad_time = tmp_path / "bad_time"
    bad_time.mkdir()
    (bad_time / "p.csv").write_text("timestamps,TP9,AF7,AF8,TP10\nnoon,1,2,3,4\nlater,1,2,3,4\n")
    with pytest.raises(DataError, match=r"p.csv: timestamps are neither numbers nor date-times \(first: 'noon'\)"):
        load_source(f"muse:{bad_time}")
    short = tmp_path / "short"
    short.mkdir()
    muse_lsl(short / "p.csv", 5)
    with pytest.raises(DataError, match="no recording holds a gap-free stretch of 8 s"):
        load_source(f"muse:{short}", SourceOptions(window_s=8.0))


def test_participants_file_problems(recordings):
    folder, _ = recordings
    (folder / "participants.csv").write_text("Participant,Remission,file\nP001,1,rec_a.csv\nP002,0,rec_b.csv\n")
    problems: list[FileProblem] = []
    ws = load_source(f"muse:{folder}", SourceOptions(), problems)
    assert set(ws.subject[ws.labels == -1]) == {"P003"}
    assert any("no Remission label for participant(s) ['P003']" in p.error for p in problems)
    (folder / "participants.csv").write_text("Participant,Remission\nP001,yes\n")
    with pytest.raises(DataError, match="Remission of participant 'P001' must be 0 or 1, got 'yes'"):
        load_source(f"muse:{folder}", SourceOptions(), [])
    (folder / "participants.csv").write_text("Subject,Label\nP001,1\n")
    with pytest.raises(DataError, match="participants.csv: missing column 'Participant'"):
        load_source(f"muse:{folder}", SourceOptions(), [])
