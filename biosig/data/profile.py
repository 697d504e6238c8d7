"""A small, human-readable profile of a WindowSet and example plots per class."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from biosig.data.windowset import WindowSet

if TYPE_CHECKING:
    from biosig.data.shards import Manifest


def class_name(ws: WindowSet, label: int) -> str:
    if label < 0:
        return "unlabelled"
    return ws.class_names[label] if label < len(ws.class_names) else str(label)


def profile(ws: WindowSet) -> dict[str, Any]:
    labels, counts = np.unique(ws.labels, return_counts=True)
    _, per_subject = np.unique(ws.subject, return_counts=True)
    channels = {}
    for ci, name in enumerate(ws.channels):
        x = ws.signals[:, ci, :]
        window_std = x.std(axis=1)
        channels[name] = {
            "unit": ws.units[name],
            "mean": float(x.mean()), "std": float(x.std()),
            "min": float(x.min()), "max": float(x.max()),
            "p01": float(np.percentile(x, 1)), "p99": float(np.percentile(x, 99)),
            "flat_window_fraction": float((window_std < 1e-6).mean()),
        }
    return {
        "n_windows": ws.n_windows,
        "n_channels": ws.n_channels,
        "n_samples": ws.n_samples,
        "fs": ws.fs,
        "window_s": ws.window_s,
        "n_subjects": int(per_subject.size),
        "windows_per_subject": {"min": int(per_subject.min()), "median": float(np.median(per_subject)),
                                "max": int(per_subject.max())},
        "class_balance": {class_name(ws, int(lab)): {"count": int(c), "fraction": float(c / ws.n_windows)}
                          for lab, c in zip(labels, counts)},
        "channels": channels,
    }


def sharded_profile(manifest: "Manifest", sample: WindowSet) -> dict[str, Any]:
    """profile() of a sharded dataset: counts, subjects and class balance exact (from the manifest),
    channel statistics from `sample`."""
    prof = profile(sample)
    per_subject = np.array([sum(labels.values()) for labels in manifest.subject_labels().values()])
    total = manifest.n_windows
    prof.update({
        "n_windows": total, "n_subjects": int(per_subject.size), "n_shards": len(manifest.shards),
        "windows_per_subject": {"min": int(per_subject.min()), "median": float(np.median(per_subject)),
                                "max": int(per_subject.max())},
        "class_balance": {class_name(sample, label): {"count": count, "fraction": count / total}
                          for label, count in manifest.label_counts().items()},
        "channel_statistics_from": f"{sample.n_windows} sampled windows",
    })
    return prof


def plot_examples(ws: WindowSet, out_dir: Path, per_class: int = 3, seed: int = 0) -> list[Path]:
    """One PNG per class with `per_class` example windows, one subplot row per channel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(seed)
    t = np.arange(ws.n_samples) / ws.fs
    paths = []
    for label in np.unique(ws.labels):
        idx = np.flatnonzero(ws.labels == label)
        chosen = np.sort(rng.choice(idx, size=min(per_class, idx.size), replace=False))
        fig, axes = plt.subplots(ws.n_channels, len(chosen), figsize=(4 * len(chosen), 1.4 * ws.n_channels),
                                 squeeze=False, sharex=True)
        for col, w in enumerate(chosen):
            axes[0, col].set_title(f"{ws.subject[w]} #{'/'.join(map(str, ws.order[w]))}", fontsize=8)
            for ci, name in enumerate(ws.channels):
                ax = axes[ci, col]
                ax.plot(t, ws.signals[w, ci], lw=0.6)
                if col == 0:
                    ax.set_ylabel(f"{name}\n[{ws.units[name]}]", fontsize=8)
                ax.tick_params(labelsize=6)
        for ax in axes[-1]:
            ax.set_xlabel("time [s]", fontsize=8)
        name = class_name(ws, int(label))
        fig.suptitle(f"{ws.label_name} = {name} ({idx.size} windows)", fontsize=10)
        fig.tight_layout()
        path = out_dir / f"examples_{ws.label_name}_{name}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths
