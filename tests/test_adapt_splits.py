"""Subject-level splits, context fitting and train-only normalisation."""

import numpy as np
import pytest

from biosig.data.adapt import ChannelStats, fit_context, prepare_windows, select_channels
from biosig.data.splits import subject_split
from biosig.data.synthetic import synthetic_cardio
from biosig.errors import ConfigError, DataError


def test_subject_split_is_disjoint_complete_stratified_and_deterministic():
    ws = synthetic_cardio(n_subjects=12, windows_per_subject=4, with_acc=True, window_s=2.0, good_fraction=0.5, seed=3)
    splits = subject_split(ws, 0.25, 0.25, seed=1)
    subjects = {name: set(part.subject) for name, part in splits.items()}
    assert not subjects["train"] & subjects["val"] and not subjects["train"] & subjects["test"]
    assert not subjects["val"] & subjects["test"]
    assert sum(part.n_windows for part in splits.values()) == ws.n_windows
    for part in splits.values():
        assert set(part.labels) == {0, 1}  # both classes everywhere with enough subjects
    again = subject_split(ws, 0.25, 0.25, seed=1)
    assert all(np.array_equal(again[k].subject, splits[k].subject) for k in splits)
    assert set(subject_split(ws, 0.25, 0.0)) == {"train", "val"}


def test_subject_split_refuses_too_few_subjects_and_bad_fractions(cardio):
    tiny = cardio.take(np.flatnonzero(np.isin(cardio.subject, np.unique(cardio.subject)[:2])))
    with pytest.raises(DataError, match="has 2 subject"):
        subject_split(tiny, 0.2, 0.2)
    with pytest.raises(ConfigError, match="val_fraction 0.6 and test_fraction 0.5"):
        subject_split(cardio, 0.6, 0.5)


def test_fit_context_policies_and_errors():
    x = np.arange(2 * 3 * 10, dtype=np.float32).reshape(2, 3, 10)
    cropped = fit_context(x, 125, target_length=6, target_fs=125, policy="crop", where="d")
    np.testing.assert_array_equal(cropped, x[..., 2:8])  # the centre
    padded = fit_context(x, 125, target_length=12, target_fs=125, policy="crop_or_pad", where="d")
    assert padded.shape == (2, 3, 12) and (padded[..., 10:] == 0).all()
    assert fit_context(x, 125, target_length=8, target_fs=100, policy="resample", where="d").shape == (2, 3, 8)
    with pytest.raises(DataError, match=r"d has windows of 10 samples at 125 Hz, the checkpoint expects 6 samples "
                                        r"at 125 Hz; context_fit=error"):
        fit_context(x, 125, target_length=6, target_fs=125, policy="error", where="d")
    with pytest.raises(DataError, match="context_fit=pad cannot fit them: use crop"):
        fit_context(x, 125, target_length=6, target_fs=125, policy="pad", where="d")
    with pytest.raises(DataError, match="sampling rates differ"):
        fit_context(x, 250, target_length=10, target_fs=125, policy="crop", where="d")


def test_resample_keeps_a_sine_a_sine():
    t = np.arange(1250) / 125
    x = np.sin(2 * np.pi * 1.0 * t)[None, None, :].astype(np.float32)
    y = fit_context(x, 125, target_length=1024, target_fs=102.4, policy="resample", where="d")
    expected = np.sin(2 * np.pi * 1.0 * np.arange(1024) / 102.4)
    assert np.abs(y[0, 0, 50:-50] - expected[50:-50]).max() < 0.02


def test_channel_stats_use_only_what_they_are_fitted_on_and_survive_flat_channels():
    rng = np.random.default_rng(0)
    train = rng.normal(5, 2, (20, 2, 50)).astype(np.float32)
    train[:, 1] = 3.0  # a flat channel
    stats = ChannelStats.fit(train, ["PPG", "ECG"])
    normed = stats.apply(train)
    assert abs(normed[:, 0].mean()) < 1e-5 and abs(normed[:, 0].std() - 1) < 1e-4
    assert np.isfinite(normed).all() and (normed[:, 1] == 0).all()
    back = ChannelStats.from_dict(stats.to_dict())
    np.testing.assert_array_equal(back.apply(train), normed)


def test_select_channels_by_name():
    x = np.stack([np.full((1, 4), i, np.float32) for i in range(3)], axis=1)
    picked = select_channels(x, ["ACC_X", "PPG", "ECG"], ["ECG", "PPG"], "d")
    assert picked[0, :, 0].tolist() == [2, 1]
    with pytest.raises(DataError, match=r"channels \['AF7'\] are required but missing from d"):
        select_channels(x, ["ACC_X", "PPG", "ECG"], ["AF7"], "d")


def test_prepare_windows_follows_the_checkpoint_spec():
    x = np.ones((2, 2, 20), np.float32)
    spec = {"channels": ["ECG", "PPG"], "context_length": 16, "fs": 125.0, "context_fit": "crop",
            "normalisation": {"channels": ["ECG", "PPG"], "mean": [1.0, 0.0], "std": [1.0, 2.0]}}
    out = prepare_windows(x, ["PPG", "ECG"], 125.0, spec, "input")
    assert out.shape == (2, 2, 16) and (out[:, 0] == 0).all() and (out[:, 1] == 0.5).all()


def test_split_manifest_round_trip_and_errors(tmp_path):
    from biosig.data.splits import manifest_split, write_manifest

    ws = synthetic_cardio(n_subjects=6, windows_per_subject=3, with_acc=True, window_s=2.0, seed=4)
    splits = subject_split(ws, 0.2, 0.2, seed=0)
    path = write_manifest(splits, tmp_path / "m.csv")
    again = manifest_split(ws, path)
    assert {k: sorted(set(v.subject)) for k, v in again.items()} == {k: sorted(set(v.subject)) for k, v in splits.items()}
    path.write_text("subject,split\nS000,train\n")
    with pytest.raises(DataError, match="does not assign 5 subject"):
        manifest_split(ws, path)
    path.write_text("subject,split\n" + "".join(f"{s},holdout\n" for s in set(ws.subject)))
    with pytest.raises(DataError, match=r"unknown split value\(s\) \['holdout'\]"):
        manifest_split(ws, path)
