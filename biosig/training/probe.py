"""Representation probes: does a backbone's frozen embedding know the labels of a task it never trained on?

The field's standard yardstick for self-supervised pretraining (a linear probe): pool the frozen backbone's
patch embeddings per channel (mean and max over patches, channels kept side by side, as the classifier head
pools), standardise, fit a logistic regression with subject-grouped folds (no subject on both sides), and
score the pooled out-of-fold probabilities by AUROC with a subject-bootstrap interval. Pretraining runs it
at a few epochs and at the end, on the randomly initialised backbone as the floor, and on the window
features of the same probe set as the yardstick, so every pretraining run says whether it helped.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import torch
from torch import nn

from biosig.training.metrics import auroc, subject_bootstrap

PROBE_FOLDS = 5
PROBE_RESAMPLES = 500
EMBED_BATCH = 128


@dataclasses.dataclass
class ProbeSet:
    """Labelled windows for probing: model input (fitted to the context, normalised as pretraining
    normalises) and the raw windows (for the window-features yardstick)."""

    name: str
    inputs: np.ndarray  # [N, C, context] float32
    raw: np.ndarray  # [N, C, T] float32, before normalisation
    labels: np.ndarray  # [N] int64
    subjects: np.ndarray  # [N] str
    fs: float
    class_names: list[str]

    @property
    def n_subjects(self) -> int:
        return len(np.unique(self.subjects))


@dataclasses.dataclass
class ProbeResult:
    auroc: float
    ci_low: float
    ci_high: float

    def metrics(self, prefix: str) -> dict[str, float]:
        return {prefix: self.auroc, f"{prefix}_ci_low": self.ci_low, f"{prefix}_ci_high": self.ci_high}

    def separated_above(self, other: "ProbeResult") -> bool:
        """This interval lies wholly above the other's."""
        return math.isfinite(self.ci_low) and math.isfinite(other.ci_high) and self.ci_low > other.ci_high

    def __str__(self) -> str:
        return f"{self.auroc:.3f} [{self.ci_low:.3f}, {self.ci_high:.3f}]"


@torch.no_grad()
def pooled_embeddings(backbone: nn.Module, inputs: np.ndarray, device: torch.device | str = "cpu") -> np.ndarray:
    """[N, C, T] -> [N, rows * 2 * d]: per embedding row (channel), mean and max over patches."""
    was_training = backbone.training
    backbone.eval()
    out = []
    for start in range(0, len(inputs), EMBED_BATCH):
        x = torch.from_numpy(np.ascontiguousarray(inputs[start:start + EMBED_BATCH])).to(device)
        emb = backbone(x).float()
        out.append(torch.cat([emb.mean(dim=2), emb.amax(dim=2)], dim=-1).flatten(1).cpu().numpy())
    backbone.train(was_training)
    return np.concatenate(out).astype(np.float64)


def logistic_probe(features: np.ndarray, labels: np.ndarray, subjects: np.ndarray, n_classes: int,
                   seed: int = 0) -> ProbeResult:
    """Out-of-fold AUROC of a standardised logistic regression over subject-grouped, label-stratified folds,
    with a subject-bootstrap interval."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = StratifiedGroupKFold(n_splits=min(PROBE_FOLDS, len(np.unique(subjects))), shuffle=True,
                                 random_state=seed)
    prob = np.zeros((len(labels), n_classes))
    for train, test in folds.split(features, labels, groups=subjects):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence notes on near-separable folds
            model.fit(features[train], labels[train])
        fold_prob = np.zeros((len(test), n_classes))
        fold_prob[:, model.classes_] = model.predict_proba(features[test])
        prob[test] = fold_prob
    interval = subject_bootstrap(labels, prob, subjects, [str(k) for k in range(n_classes)],
                                 n_resamples=PROBE_RESAMPLES, seed=seed)
    return ProbeResult(auroc(labels, prob), interval["auroc_ci_low"], interval["auroc_ci_high"])


def probe_backbone(backbone: nn.Module, probe: ProbeSet, device: torch.device | str = "cpu",
                   seed: int = 0) -> ProbeResult:
    features = pooled_embeddings(backbone, probe.inputs, device)
    return logistic_probe(features, probe.labels, probe.subjects, len(probe.class_names), seed)


def probe_features(probe: ProbeSet, seed: int = 0) -> ProbeResult:
    """The same probe on hand-made window features of the raw windows (the yardstick)."""
    from biosig.training.features import window_features

    return logistic_probe(window_features(probe.raw, probe.fs), probe.labels, probe.subjects,
                          len(probe.class_names), seed)


def probe_epochs(epochs: int, every: int) -> set[int]:
    """The epochs a run probes at: every `every` (0: about five points) and always the last."""
    step = every if every > 0 else max(1, round(epochs / 5))
    return {e for e in range(step, epochs + 1, step)} | {epochs}
