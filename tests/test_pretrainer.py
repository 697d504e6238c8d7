"""Pretraining's loop as a library: `biosig.training.pretrainer.Pretrainer` on windows in memory with a
list-backed log and hooks that record what the command would publish; no tracking store, no command."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from biosig.backbones import build_backbone
from biosig.data.synthetic import synthetic_cardio
from biosig.models.checkpoint import read_meta
from biosig.models.pretraining import PretrainModel
from biosig.training import loop
from biosig.training.pretrainer import Pretrainer, in_memory_feed
from biosig.training.settings import PretrainSettings
from biosig.training.trainer import ListLog

CHANNELS = ["PPG", "ECG"]
TINY = {"context_length": 64, "patch_length": 16, "d_model": 8, "num_layers": 1, "dropout": 0.0}
SETTINGS = PretrainSettings(channels=CHANNELS, window_length=64, patch_length=16, epochs=3, batch_size=16,
                            data_workers=0, amp="off", lr=3e-3)


class Interrupted(Exception):
    pass


@dataclasses.dataclass
class Recorded:
    """PretrainHooks that remember each publish and probe call (and stop the run once last/ holds `stop_after`)."""

    published: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    probed: list[int] = dataclasses.field(default_factory=list)
    stop_after: int = 0

    def publish(self, directory: Path, artifact_path: str) -> None:
        self.published.append((directory.name, artifact_path))
        if artifact_path == "last" and read_meta(directory)["provenance"]["epoch"] == self.stop_after:
            raise Interrupted

    def after_epoch(self, backbone, epoch: int) -> str | None:
        self.probed.append(epoch)
        return None


def pretrainer(tmp_path: Path, settings: PretrainSettings = SETTINGS, seed: int = 0) -> tuple[Pretrainer, ListLog, Recorded]:
    ws = synthetic_cardio(n_subjects=6, windows_per_subject=8, with_acc=False, window_s=64 / 125, seed=1)
    feed = in_memory_feed(settings, ws, "synthetic")
    generator = loop.seed_everything(seed)
    model = PretrainModel(build_backbone("ttm", CHANNELS, TINY), "mae", 0.4, 0)
    meta = {"kind": "pretrained", "name": "tiny", "backbone": model.backbone.describe(), "channels": CHANNELS,
            "fs": ws.fs, "context_length": 64, "patch_length": 16, "normalisation": feed.stats.to_dict(),
            "provenance": {"run_id": "local"}}
    log, hooks = ListLog(), Recorded()
    trainer = Pretrainer(log, settings, model, feed, meta, tmp_path, hooks, device=torch.device("cpu"),
                         generator=generator, dist=loop.Distributed())
    return trainer, log, hooks


def test_pretraining_logs_each_epoch_keeps_the_best_backbone_and_publishes_last(tmp_path):
    trainer, log, hooks = pretrainer(tmp_path)
    progress = trainer.run()
    assert [row["epoch"] for row in progress.history] == [1, 2, 3] and hooks.probed == [1, 2, 3]
    assert [step for step, m in log.rows if "val_loss" in m] == [1, 2, 3]
    losses = log.series("val_loss")
    assert progress.best_epoch == 1 + losses.index(min(losses)) and -progress.best_score == min(losses)
    assert ("last", "last") in hooks.published and ("checkpoint", "checkpoint") in hooks.published
    assert read_meta(tmp_path / "checkpoint")["provenance"]["epoch"] == progress.best_epoch
    assert read_meta(tmp_path / "last")["provenance"]["epoch"] == 3


def test_a_restored_pretrainer_continues_where_last_stopped(tmp_path):
    first, _, hooks = pretrainer(tmp_path / "a")
    hooks.stop_after = 2  # killed once last/ of epoch 2 was published
    with pytest.raises(Interrupted):
        first.run()
    straight, _, _ = pretrainer(tmp_path / "b")
    straight.run()

    resumed, log, _ = pretrainer(tmp_path / "c", seed=99)  # another seed: everything comes from last/
    saved = resumed.restore(tmp_path / "a" / "last")
    assert saved["epoch"] == 2 and resumed.progress.epoch == 2
    progress = resumed.run()
    assert [step for step, m in log.rows if "val_loss" in m] == [3]  # only the epoch left
    assert progress.history[-1]["val_loss"] == pytest.approx(straight.progress.history[-1]["val_loss"], rel=1e-5)
