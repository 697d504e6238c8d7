"""Reference models that every fine-tune can be measured against on the same split.

* `features`: the window features of `biosig.training.features` and a scikit-learn classifier chosen on
  the validation split (logistic regression at a few strengths, or gradient boosting). It sees the raw
  windows at their full length, so it is the specialist baseline a foundation model must beat.
* `scratch`: the fine-tuned model's own architecture and head, randomly initialised and trained with
  every parameter free for the same number of epochs (built by the finetune command).

The fitted features model is stored with skops (no pickle): loading accepts only scikit-learn and
NumPy types, so a tampered file cannot run code.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from biosig.errors import DataError
from biosig.training.features import feature_names, window_features
from biosig.training.metrics import auroc

FEATURES_MODEL_FILE = "features_model.skops"
_TRUSTED_PREFIXES = ("sklearn.", "numpy.", "scipy.")


def _candidates(seed: int) -> dict[str, Callable[[], Any]]:
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def logistic(c: float) -> Callable[[], Any]:
        return lambda: make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000,
                                                                          class_weight="balanced"))

    return {
        "logistic_c0.1": logistic(0.1),
        "logistic_c1": logistic(1.0),
        "boosting": lambda: HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05,
                                                           class_weight="balanced", random_state=seed),
    }


@dataclasses.dataclass
class FeatureModel:
    """A fitted window-feature classifier: raw windows [N, C, T] (channels by name) -> probabilities."""

    estimator: Any
    choice: str
    channels: list[str]
    fs: float
    n_classes: int

    def predict_proba(self, signals: np.ndarray | Iterable[np.ndarray]) -> np.ndarray:
        """Probabilities of windows [N, C, T] (or of parts of them, concatenated in order)."""
        if isinstance(signals, np.ndarray) and not len(signals):
            return np.zeros((0, self.n_classes))
        features = features_of(signals, self.fs)
        prob = np.zeros((len(features), self.n_classes))
        if len(features):
            fitted = self.estimator.predict_proba(features)
            prob[:, self.estimator.classes_] = fitted  # a class absent from training keeps probability 0
        return prob

    def describe(self) -> dict[str, Any]:
        return {"choice": self.choice, "features": feature_names(self.channels)}

    def save(self, directory: Path) -> Path:
        import skops.io as sio

        directory.mkdir(parents=True, exist_ok=True)
        sio.dump(self.estimator, directory / FEATURES_MODEL_FILE)
        return directory

    @classmethod
    def load(cls, directory: Path, meta: dict[str, Any]) -> "FeatureModel":
        import skops.io as sio

        path = Path(directory) / FEATURES_MODEL_FILE
        if not path.is_file():
            raise DataError(f"{directory} has no {FEATURES_MODEL_FILE}: not a features reference model")
        untrusted = [t for t in sio.get_untrusted_types(file=path) if not t.startswith(_TRUSTED_PREFIXES)]
        if untrusted:
            raise DataError(f"{path} holds types outside scikit-learn/NumPy ({untrusted[:3]}): refusing to load it")
        estimator = sio.load(path, trusted=sio.get_untrusted_types(file=path))
        return cls(estimator, meta["reference"]["choice"], list(meta["channels"]), float(meta["fs"]),
                   len(meta["class_names"]))


def features_of(signals: np.ndarray | Iterable[np.ndarray], fs: float) -> np.ndarray:
    """Window features of an array of windows, or of parts of one (features are small; windows need not fit)."""
    if isinstance(signals, np.ndarray):
        return window_features(signals, fs)
    return np.concatenate([window_features(part, fs) for part in signals])


def fit_feature_model(x: dict[str, Iterable[np.ndarray]], y: dict[str, np.ndarray], fs: float, channels: list[str],
                      n_classes: int, seed: int = 0) -> tuple[FeatureModel, dict[str, float]]:
    """Fit every candidate on train, keep the best validation AUROC (ties: the simpler, listed first).
    `x[split]`: the raw windows, as one array or as parts (a streamed split) in the order of `y[split]`.
    Returns the model and each candidate's validation AUROC."""
    features = {split: features_of(signals, fs) for split, signals in x.items()}
    scores: dict[str, float] = {}
    best: tuple[float, str, Any] | None = None
    for name, make in _candidates(seed).items():
        estimator = make().fit(features["train"], y["train"])
        prob = np.zeros((len(y["val"]), n_classes))
        prob[:, estimator.classes_] = estimator.predict_proba(features["val"])
        score = auroc(y["val"], prob)
        scores[name] = score
        rank = score if np.isfinite(score) else -np.inf
        if best is None or rank > best[0]:
            best = (rank, name, estimator)
    assert best is not None
    return FeatureModel(best[2], best[1], list(channels), fs, n_classes), scores
