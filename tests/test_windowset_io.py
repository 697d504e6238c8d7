"""Parquet <-> WindowSet round trip, order verification, digest, npz, and every bad input."""

import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from biosig.data import WindowSet, read_npz, read_parquet, write_parquet
from biosig.data.parquet_io import to_arrow
from biosig.errors import DataError


def assert_same(a: WindowSet, b: WindowSet) -> None:
    assert a.signals.tobytes() == b.signals.tobytes()  # bit-for-bit
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.subject, b.subject)
    np.testing.assert_array_equal(a.order, b.order)
    assert a.meta.keys() == b.meta.keys()
    for k in a.meta:
        np.testing.assert_array_equal(a.meta[k], b.meta[k])
    assert (a.channels, a.fs, a.order_names, a.class_names, a.label_name, a.subject_name, a.modality) == (
        b.channels, b.fs, b.order_names, b.class_names, b.label_name, b.subject_name, b.modality)
    assert a.digest == b.digest


@pytest.mark.parametrize("which", ["cardio", "eeg"])
def test_parquet_round_trip_is_bit_exact(tmp_path, request, which):
    ws = request.getfixturevalue(which)
    path = write_parquet(ws, tmp_path / "d.parquet")
    back = read_parquet(path)
    assert_same(ws, back)
    schema = pq.read_schema(path)
    field = schema.field(ws.channels[0])
    assert field.type == pa.list_(pa.field("item", pa.float32(), nullable=False), ws.n_samples)
    assert not field.nullable
    assert back.source == str(path)


def test_eeg_columns_follow_the_muse_layout(tmp_path, eeg):
    path = write_parquet(eeg, tmp_path / "eeg.parquet")
    names = pq.read_schema(path).names
    assert names[:4] == ["Participant", "Remission", "parent_window_id", "sub_window_id"]
    assert {"window_start", "window_end", "AF7", "AF8", "TP9", "TP10"} <= set(names)


def test_write_sorts_rows_and_read_is_zero_copy_per_chunk(tmp_path, cardio):
    shuffled = cardio.take(np.random.default_rng(0).permutation(cardio.n_windows))
    path = tmp_path / "s.parquet"
    pq.write_table(to_arrow(cardio), path, row_group_size=7)  # several row groups -> several chunks
    assert_same(cardio, read_parquet(path))
    write_parquet(shuffled, tmp_path / "sorted.parquet")
    assert_same(cardio, read_parquet(tmp_path / "sorted.parquet"))


def test_unsorted_order_keys_are_refused_with_the_rows(tmp_path, eeg):
    swapped = np.arange(eeg.n_windows)
    swapped[[2, 3]] = swapped[[3, 2]]
    path = tmp_path / "unsorted.parquet"
    pq.write_table(to_arrow(eeg.take(swapped)), path)
    with pytest.raises(DataError, match=r"unsorted.parquet are not sorted by \(Participant, parent_window_id, "
                                        r"sub_window_id\): rows 2 and 3 are out of order"):
        read_parquet(path)
    dup = np.arange(eeg.n_windows)
    dup[3] = 2
    pq.write_table(to_arrow(eeg.take(dup)), path)
    with pytest.raises(DataError, match="rows 2 and 3 are duplicated"):
        read_parquet(path)


def test_digest_changes_when_one_sample_changes(cardio):
    signals = cardio.signals.copy()
    signals[3, 1, 17] = np.nextafter(signals[3, 1, 17], np.float32(np.inf))
    changed = dataclasses.replace(cardio, signals=signals)
    assert changed.digest != cardio.digest
    assert dataclasses.replace(cardio, signals=cardio.signals.copy()).digest == cardio.digest
    relabelled = dataclasses.replace(cardio, labels=np.roll(cardio.labels, 1))
    assert relabelled.digest != cardio.digest or np.array_equal(np.roll(cardio.labels, 1), cardio.labels)


def test_missing_file_and_wrong_extension(tmp_path, cardio):
    with pytest.raises(DataError, match="dataset file not found: .*missing.parquet"):
        read_parquet(tmp_path / "missing.parquet")
    (tmp_path / "d.csv").write_text("a,b\n")
    with pytest.raises(DataError, match=r"expected a .parquet dataset file, got .*d.csv"):
        read_parquet(tmp_path / "d.csv")
    with pytest.raises(DataError, match="must end in .parquet"):
        write_parquet(cardio, tmp_path / "out.csv")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="cannot read .*junk.parquet as parquet"):
        read_parquet(tmp_path / "junk.parquet")


def _rewrite(table: pa.Table, path, **replace):
    for name, array in replace.items():
        i = table.column_names.index(name)
        table = table.set_column(i, name, array)
    pq.write_table(table, path)
    return path


def test_parquet_without_expected_columns(tmp_path, cardio):
    table = to_arrow(cardio)
    path = tmp_path / "nocol.parquet"
    pq.write_table(table.drop_columns(["ECG"]), path)
    with pytest.raises(DataError, match="nocol.parquet is missing the expected column 'ECG'"):
        read_parquet(path)
    pq.write_table(table.replace_schema_metadata({}), path)
    with pytest.raises(DataError, match="has no biosig schema metadata"):
        read_parquet(path)


def test_wrong_dtype_column(tmp_path, cardio):
    table = to_arrow(cardio)
    as_double = pa.FixedSizeListArray.from_arrays(
        pa.array(np.ascontiguousarray(cardio.signals[:, 3]).reshape(-1).astype(np.float64)), cardio.n_samples)
    path = _rewrite(table, tmp_path / "f64.parquet", PPG=as_double)
    with pytest.raises(DataError, match=r"column 'PPG' in .*f64.parquet must be fixed_size_list<float32>\[T\]"):
        read_parquet(path)
    path = _rewrite(table, tmp_path / "lab.parquet", quality=pa.array(cardio.labels.astype(str)))
    with pytest.raises(DataError, match="column 'quality' in .*lab.parquet must be non-null integers"):
        read_parquet(path)


def test_inconsistent_channel_lengths(tmp_path, cardio):
    table = to_arrow(cardio)
    shorter = pa.FixedSizeListArray.from_arrays(
        pa.array(np.ascontiguousarray(cardio.signals[:, 4, :-10]).reshape(-1)), cardio.n_samples - 10)
    path = _rewrite(table, tmp_path / "len.parquet", ECG=shorter)
    with pytest.raises(DataError, match=r"inconsistent channel lengths in .*len.parquet: .*'PPG': 250, 'ECG': 240"):
        read_parquet(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_signals_are_located(tmp_path, cardio, bad):
    signals = cardio.signals.copy()
    signals[4, 2, 9] = bad
    with pytest.raises(DataError, match=rf"{bad} in signals of .*: window 4, channel ACC_Z, sample 9"):
        dataclasses.replace(cardio, signals=signals)
    table = to_arrow(dataclasses.replace(cardio, signals=cardio.signals.copy()))
    flat = np.ascontiguousarray(cardio.signals[:, 2]).reshape(-1).copy()
    flat[4 * cardio.n_samples + 9] = bad
    path = _rewrite(table, tmp_path / "nan.parquet",
                    ACC_Z=pa.FixedSizeListArray.from_arrays(pa.array(flat), cardio.n_samples))
    with pytest.raises(DataError, match=r"nan.parquet: window 4, channel ACC_Z, sample 9"):
        read_parquet(path)


def test_empty_dataset(tmp_path, cardio):
    path = tmp_path / "empty.parquet"
    pq.write_table(to_arrow(cardio).slice(0, 0), path)
    with pytest.raises(DataError, match="empty dataset: .*empty.parquet has no rows"):
        read_parquet(path)
    with pytest.raises(DataError, match="empty dataset"):
        cardio.take(np.array([], dtype=np.int64))


def test_unknown_and_duplicate_channel_names(cardio):
    with pytest.raises(DataError, match=r"unknown channel name\(s\) \['PPG2'\]"):
        dataclasses.replace(cardio, channels=["ACC_X", "ACC_Y", "ACC_Z", "PPG2", "ECG"])
    with pytest.raises(DataError, match=r"duplicated channel name\(s\) \['PPG'\]"):
        dataclasses.replace(cardio, channels=["ACC_X", "ACC_Y", "PPG", "PPG", "ECG"])
    with pytest.raises(DataError, match="4 channel names for 5 signal channels"):
        dataclasses.replace(cardio, channels=["ACC_X", "ACC_Y", "PPG", "ECG"])
    with pytest.raises(DataError, match="must be float32, got float64"):
        dataclasses.replace(cardio, signals=cardio.signals.astype(np.float64))


def test_failed_write_leaves_no_file(tmp_path, cardio, monkeypatch):
    def explode(*args, **kwargs):
        (tmp_path / "sentinel").write_text("started")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", explode)
    with pytest.raises(OSError, match="disk full"):
        write_parquet(cardio, tmp_path / "out.parquet")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sentinel"]


def test_npz_read_and_bad_npz(tmp_path, cardio):
    path = tmp_path / "d.npz"
    np.savez(path, signals=cardio.signals.astype(np.float64), labels=cardio.labels, subjects=cardio.subject)
    ws = read_npz(path, channels=cardio.channels, fs=125)
    assert ws.signals.dtype == np.float32 and ws.n_windows == cardio.n_windows
    np.testing.assert_allclose(ws.signals, cardio.signals)
    np.testing.assert_array_equal(ws.order[ws.subject == "S000", 0], np.arange(5))
    with pytest.raises(DataError, match="stores no 'channels' array: pass channels"):
        read_npz(path, fs=125)
    np.savez(path, signals=cardio.signals.astype(np.int16), labels=cardio.labels)
    with pytest.raises(DataError, match="'signals' in .*d.npz must be floating point, got int16"):
        read_npz(path, channels=cardio.channels, fs=125)
    np.savez(path, signals=cardio.signals)
    with pytest.raises(DataError, match=r"d.npz lacks the array 'labels'"):
        read_npz(path, channels=cardio.channels, fs=125)
    np.savez(path, signals=cardio.signals, labels=cardio.labels[:-1], channels=np.array(cardio.channels), fs=125.0)
    with pytest.raises(DataError, match="one entry per window"):
        read_npz(path)
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(DataError, match="expected a .npz file, got .*x.txt"):
        read_npz(tmp_path / "x.txt")


def test_reads_after_the_first_come_from_the_arrow_cache_of_that_content(tmp_path, cardio, monkeypatch):
    import os

    monkeypatch.setenv("BIOSIG_CACHE_DIR", str(tmp_path / "cache"))
    path = write_parquet(cardio, tmp_path / "d.parquet")
    first = read_parquet(path)
    (entry,) = (tmp_path / "cache" / "arrow").glob("*.arrow")
    assert entry.name == f"{first.digest}.arrow"
    with monkeypatch.context() as patched:  # no parquet decoding at all on a cache hit
        patched.setattr(pq, "read_table", lambda *a, **k: pytest.fail("parquet was decoded"))
        second = read_parquet(path)
    assert second.digest == first.digest and np.array_equal(second.signals, first.signals)
    assert second.channels == first.channels and second.fs == first.fs

    other = dataclasses.replace(cardio, signals=cardio.signals * 2)  # the same path, other content
    os.replace(write_parquet(other, tmp_path / "e.parquet"), path)
    assert read_parquet(path).digest == other.digest != first.digest  # never the stale entry
    assert read_parquet(path, cache=False).digest == other.digest

    monkeypatch.setenv("BIOSIG_CACHE_DIR", "off")
    read_parquet(write_parquet(cardio.take(np.arange(5)), tmp_path / "f.parquet"))
    assert len(list((tmp_path / "cache" / "arrow").glob("*.arrow"))) == 2
