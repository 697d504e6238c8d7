"""The probe monitor of a pretraining run (biosig.training.probe does the measuring): the probe set logged as
the run's `probe` dataset input, the random-initialisation floor and the window-features yardstick once,
`probe/auroc` with its interval at a few epochs (a curve beside the loss), and the verdict the registered
version carries: did pretraining beat random initialisation with separated intervals?"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from torch import nn

from biosig.commands.configs import PretrainConfig
from biosig.data import SourceOptions
from biosig.data.adapt import ChannelStats, fit_context, select_channels
from biosig.errors import DataError
from biosig.logs import get_logger
from biosig.tracking.datasets import use_dataset
from biosig.tracking.run import RunContext
from biosig.training.probe import ProbeResult, ProbeSet, probe_backbone, probe_epochs, probe_features

log = get_logger(__name__)

#: Version tags of the probe evidence (the registry's view of "did pretraining help").
PROBE_TAGS = {"auroc": "biosig.probe.auroc", "init": "biosig.probe.auroc_init", "features": "biosig.probe.auroc_features",
              "delta": "biosig.probe.delta_init", "verdict": "biosig.probe.verdict", "set": "biosig.probe.dataset"}


@dataclasses.dataclass
class ProbeMonitor:
    probe: ProbeSet
    epochs: set[int]
    init: ProbeResult
    features: ProbeResult
    device: torch.device
    seed: int
    curve: dict[int, ProbeResult] = dataclasses.field(default_factory=dict)

    def after_epoch(self, ctx: RunContext, backbone: nn.Module, epoch: int) -> ProbeResult | None:
        """Probe at the monitored epochs; logs `probe/auroc` (+ interval) with step=epoch."""
        if epoch not in self.epochs:
            return None
        result = probe_backbone(backbone, self.probe, self.device, self.seed)
        self.curve[epoch] = result
        ctx.log_metrics(result.metrics("probe/auroc"), step=epoch)
        return result

    def final(self, best_epoch: int, best_backbone: nn.Module) -> ProbeResult:
        """The probe of the registered (best) weights: from the curve when that epoch was probed."""
        if best_epoch not in self.curve:
            self.curve[best_epoch] = probe_backbone(best_backbone, self.probe, self.device, self.seed)
        return self.curve[best_epoch]

    def verdict(self, final: ProbeResult) -> str:
        if final.separated_above(self.init):
            return "beats_init"
        return "below_init" if self.init.separated_above(final) else "not_separated"

    def evidence(self, ctx: RunContext, final: ProbeResult, best_epoch: int) -> dict[str, str]:
        """Final metrics on the run, and the tags the registered version carries."""
        delta = final.auroc - self.init.auroc
        ctx.log_metrics({**final.metrics("probe/auroc_final"), "probe/delta_init": delta,
                         "probe/delta_features": final.auroc - self.features.auroc}, step=best_epoch, result=True)
        return {PROBE_TAGS["auroc"]: str(final), PROBE_TAGS["init"]: str(self.init),
                PROBE_TAGS["features"]: str(self.features), PROBE_TAGS["delta"]: f"{delta:+.4f}",
                PROBE_TAGS["verdict"]: self.verdict(final), PROBE_TAGS["set"]: self.probe.name}

    def sentence(self, final: ProbeResult) -> str:
        """One line for descriptions: the probe against random init and the features yardstick."""
        verdict = {"beats_init": "beats random initialisation (intervals separated)",
                   "not_separated": "does not beat random initialisation (intervals overlap)",
                   "below_init": "is worse than random initialisation (intervals separated)"}[self.verdict(final)]
        return (f"Linear probe on `{self.probe.name}` ({self.probe.n_subjects} subjects, subject folds): AUROC {final} "
                f"vs random init {self.init} and window features {self.features}: pretraining {verdict}.")

    def curve_rows(self) -> list[dict[str, Any]]:
        rows = [{"epoch": 0, "auroc": self.init.auroc, "ci_low": self.init.ci_low, "ci_high": self.init.ci_high}]
        return rows + [{"epoch": e, "auroc": r.auroc, "ci_low": r.ci_low, "ci_high": r.ci_high}
                       for e, r in sorted(self.curve.items())]


def start_probe_monitor(ctx: RunContext, config: PretrainConfig, fs: float, stats: ChannelStats,
                        backbone: nn.Module, device: torch.device) -> ProbeMonitor | None:
    """Load the probe set (logged as the run's `probe` dataset input) and measure the two baselines on the
    still randomly initialised `backbone`; None when the config has no probe."""
    source = config.probe_source()
    if not source:
        if config.probe == "auto":
            log.info(f"  probe: no bundled labelled task holds channels {config.channels}; set probe=FILE "
                     "(a labelled dataset with these channels) to measure what pretraining learns")
        return None
    logged = use_dataset(ctx, source, SourceOptions(seed=config.seed), output_dir=config.data_dir, context="probe")
    if logged.windows is None:
        raise DataError(f"config key 'probe': {source} is a sharded dataset; probe on a labelled parquet file")
    probe = _probe_set(logged.windows, logged.name, config, fs, stats)
    init = probe_backbone(backbone, probe, device, config.seed)
    features = probe_features(probe, config.seed)
    ctx.log_metrics({**init.metrics("probe/auroc"), **init.metrics("probe/auroc_init")}, step=0)
    ctx.log_metrics(features.metrics("probe/auroc_features"), step=0)
    log.info(f"  probe on {probe.name} ({len(probe.labels)} windows, {probe.n_subjects} subjects): random init "
             f"AUROC {init}, window features {features}")
    return ProbeMonitor(probe, probe_epochs(config.epochs, config.probe_every), init, features, device, config.seed)


def _probe_set(ws, name: str, config: PretrainConfig, fs: float, stats: ChannelStats) -> ProbeSet:
    """The labelled windows as the backbone sees pretraining data: its channels, its rate and context, its
    normalisation (the pretraining statistics)."""
    labelled = ws.labels >= 0
    if labelled.sum() == 0 or len(np.unique(ws.labels[labelled])) < 2:
        raise DataError(f"config key 'probe': {name} needs windows of at least two labelled classes")
    raw = select_channels(ws.signals[labelled], ws.channels, config.channels, f"probe dataset {name}")
    policy = "crop_or_pad" if abs(ws.fs - fs) < 1e-6 else "resample"
    inputs = fit_context(raw, ws.fs, target_length=config.context_length, target_fs=fs, policy=policy,
                         where=f"probe dataset {name}", patch_length=config.patch_length)
    n_classes = max(len(ws.class_names), int(ws.labels.max()) + 1)
    return ProbeSet(name, stats.apply(inputs), raw.astype(np.float32), ws.labels[labelled].astype(np.int64),
                    ws.subject[labelled], ws.fs, ws.class_names or [str(k) for k in range(n_classes)])
