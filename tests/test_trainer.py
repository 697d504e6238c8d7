"""The staged trainer as a library: `biosig.training.trainer.fit` on in-memory splits with a list-backed log,
no tracking store, no command. A tiny TTM learns a signal whose class is its amplitude."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from biosig.backbones import build_backbone
from biosig.data.adapt import ChannelStats
from biosig.errors import ConfigError
from biosig.models.heads import Classifier
from biosig.models.lora import LORA_MARK
from biosig.training.labelled import LabelledSplits
from biosig.training.settings import FitSettings, Stage, staged
from biosig.training.trainer import ListLog, class_weights, fit, score

CHANNELS = ["PPG", "ECG"]
TINY = {"context_length": 64, "patch_length": 16, "d_model": 8, "num_layers": 2, "dropout": 0.0}


def splits(seed: int = 0, *, one_class_val: bool = False) -> LabelledSplits:
    """Class 1 windows are louder sines than class 0: learnable in a few epochs."""
    rng = np.random.default_rng(seed)
    x, y, subject = {}, {}, {}
    for split, n in (("train", 96), ("val", 32), ("test", 32)):
        labels = np.zeros(n, dtype=np.int64) if (split == "val" and one_class_val) else np.arange(n) % 2
        t = np.linspace(0, 8 * np.pi, 64, dtype=np.float32)
        amplitude = np.where(labels == 1, 2.0, 0.5).astype(np.float32)[:, None, None]
        x[split] = (amplitude * np.sin(t)[None, None, :] + 0.1 * rng.standard_normal((n, 2, 64))).astype(np.float32)
        y[split] = labels
        subject[split] = np.array([f"{split}{i % 8}" for i in range(n)])
    stats = ChannelStats(CHANNELS, np.zeros(2), np.ones(2))
    return LabelledSplits(x=x, y=y, subject=subject, class_names=["bad", "good"], channels=CHANNELS, stats=stats,
                          test_digest="t")


def classifier(seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    return Classifier(build_backbone("ttm", CHANNELS, TINY), 2, head="linear", dropout=0.0, pooling="meanmax")


SETTINGS = FitSettings(batch_size=16, unfreeze_last_n=1, patience=10, data_workers=0, amp="off")


def test_a_staged_fit_learns_logs_each_epoch_and_keeps_the_best_state():
    log, data, model = ListLog(), splits(), classifier()
    outcome = fit(log, SETTINGS, model, data, staged(2, 3, 0, 3e-2))
    assert outcome.epochs_run == 5 and [row["epoch"] for row in outcome.history] == [1, 2, 3, 4, 5]
    assert [row["stage"] for row in outcome.history] == [1, 1, 2, 2, 2]
    assert log.series("val_auroc") == [row["val_auroc"] for row in outcome.history]  # step = epoch
    assert [step for step, m in log.rows if "train_loss" in m] == [1, 2, 3, 4, 5]
    best = max(outcome.history, key=lambda row: row["val_auroc"])
    assert outcome.best_epoch == best["epoch"] and outcome.best_val["auroc"] == best["val_auroc"]
    # stage 1 trains the head only, stage 2 the head and one block more
    assert outcome.stage_counts[1]["trainable"] < outcome.stage_counts[2]["trainable"] == outcome.trainable
    # the returned model holds the best state, and scoring it on val gives the best epoch's metrics
    assert all(torch.equal(v, outcome.best_state[k]) for k, v in model.state_dict().items())
    val, _ = score(model, data, "val", SETTINGS, torch.device("cpu"))
    assert val["auroc"] == pytest.approx(outcome.best_val["auroc"]) and val["auroc"] > 0.9
    assert outcome.class_weights is not None and not outcome.selection_fallback


def test_early_stopping_ends_a_stage_after_patience_epochs_without_a_better_score():
    settings = FitSettings(**{**SETTINGS.__dict__, "patience": 1, "selection_metric": "loss"})
    outcome = fit(ListLog(), settings, classifier(), splits(), [Stage(3, 30, 1e-9)])  # lr ~0: no progress
    assert outcome.epochs_run < 30 and outcome.best_epoch <= 2


def test_one_class_validation_selects_on_loss_and_says_so():
    outcome = fit(ListLog(), SETTINGS, classifier(), splits(one_class_val=True), staged(2, 0, 0, 1e-3))
    assert outcome.selection_fallback and outcome.best_value("loss") == min(r["val_loss"] for r in outcome.history)
    with pytest.raises(ValueError, match="undefined for every epoch"):
        outcome.best_value("auroc")


def test_a_head_that_predicts_one_class_is_reported_as_collapsed():
    model = classifier()
    with torch.no_grad():  # a head biased to "bad" and an lr too small to undo it
        model.head[-1].bias.copy_(torch.tensor([50.0, -50.0]))
    settings = FitSettings(**{**SETTINGS.__dict__, "class_weights": "none"})
    outcome = fit(ListLog(), settings, model, splits(), staged(1, 0, 0, 1e-9))
    assert outcome.collapsed == ["good"] and outcome.class_weights is None


def test_lora_adapters_are_merged_into_plain_weights():
    settings = FitSettings(**{**SETTINGS.__dict__, "adaptation": "lora", "lora_rank": 2})
    model = classifier()
    outcome = fit(ListLog(), settings, model, splits(), staged(1, 2, 0, 3e-3))
    assert outcome.lora_layers and not any(LORA_MARK in key for key in outcome.best_state)
    assert set(outcome.best_state) == set(classifier().state_dict())


def test_an_epoch_callback_can_stop_the_fit():
    seen = []

    def prune_after_two(epoch, val):
        seen.append(epoch)
        return epoch >= 2

    outcome = fit(ListLog(), SETTINGS, classifier(), splits(), staged(2, 3, 0, 1e-3), on_epoch=prune_after_two)
    assert outcome.stopped and outcome.epochs_run == 2 and seen == [1, 2]


def test_the_same_seed_gives_the_same_fit():
    first = fit(ListLog(), SETTINGS, classifier(), splits(), staged(1, 1, 0, 1e-3))
    second = fit(ListLog(), SETTINGS, classifier(), splits(), staged(1, 1, 0, 1e-3))
    assert [r["train_loss"] for r in first.history] == [r["train_loss"] for r in second.history]


@pytest.mark.parametrize("spec, message", [
    ("1,2,3", "lists 3 weights for 2 classes"), ("1,-1", "must be positive"), ("1,nan", "must be positive"),
    ("a,b", "comma-separated numbers"),
])
def test_class_weight_specs_are_checked(spec, message):
    with pytest.raises(ConfigError, match=message):
        class_weights(spec, np.array([0, 1]), 2)


def test_unfreeze_depth_beyond_the_backbone_is_refused():
    settings = FitSettings(**{**SETTINGS.__dict__, "unfreeze_last_n": 9})
    with pytest.raises(ConfigError, match="'unfreeze_last_n' is 9 but the backbone has 2 blocks"):
        fit(ListLog(), settings, classifier(), splits(), staged(1, 1, 0, 1e-3))
