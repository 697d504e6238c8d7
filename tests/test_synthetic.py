import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, cross_val_score

from biosig.data.synthetic import synthetic_cardio, synthetic_eeg


def simple_features(signals: np.ndarray) -> np.ndarray:
    return np.concatenate([signals.std(-1), np.abs(np.diff(signals, axis=-1)).mean(-1),
                           signals.max(-1) - signals.min(-1)], axis=1)


def test_deterministic_by_seed():
    a = synthetic_cardio(n_subjects=3, windows_per_subject=4, seed=5)
    assert a.digest == synthetic_cardio(n_subjects=3, windows_per_subject=4, seed=5).digest
    assert a.digest != synthetic_cardio(n_subjects=3, windows_per_subject=4, seed=6).digest
    e = synthetic_eeg(n_subjects=2, parents_per_subject=1, seed=1)
    assert e.digest == synthetic_eeg(n_subjects=2, parents_per_subject=1, seed=1).digest


def test_quality_label_is_learnable_but_not_trivial():
    ws = synthetic_cardio(n_subjects=30, windows_per_subject=20, with_acc=True, window_s=10.0,
                          good_fraction=0.3, seed=3)
    assert ws.channels == ["ACC_X", "ACC_Y", "ACC_Z", "PPG", "ECG"] and ws.n_samples == 1250
    assert 0.2 < ws.labels.mean() < 0.4
    auc = cross_val_score(LogisticRegression(max_iter=3000), simple_features(ws.signals), ws.labels,
                          groups=ws.subject, cv=GroupKFold(5), scoring="roc_auc").mean()
    assert 0.65 < auc < 0.97, auc


def test_eeg_remission_is_participant_level_and_learnable_but_not_trivial():
    from scipy.signal import welch

    ws = synthetic_eeg(n_subjects=30, parents_per_subject=2, seed=4)
    assert ws.channels == ["AF7", "AF8", "TP9", "TP10"] and ws.fs == 256 and ws.n_samples == 2048
    for s in np.unique(ws.subject):  # one label per participant, windows in temporal order
        rows = ws.subject == s
        assert np.unique(ws.labels[rows]).size == 1
        assert np.all(np.diff(ws.meta["window_start"][rows]) > 0)
    f, p = welch(ws.signals, fs=ws.fs, nperseg=256)
    feats = np.log(np.concatenate([p[..., (f >= 8) & (f <= 12)].mean(-1), p[..., (f >= 4) & (f < 8)].mean(-1)], 1))
    auc = cross_val_score(LogisticRegression(max_iter=3000), feats, ws.labels, groups=ws.subject,
                          cv=GroupKFold(5), scoring="roc_auc").mean()
    assert 0.6 < auc < 0.97, auc
