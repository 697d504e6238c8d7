"""`compare`: a fair side-by-side of several pretrained checkpoints on one task.

Each checkpoint is fine-tuned with the same config, data, split and seed, as a linear probe (frozen
backbone, linear head, head-only epochs) and optionally a full staged fine-tune, each a nested run under
one parent. The parent logs `leaderboard.csv`, `leaderboard.md` and a bar chart, sorted by the chosen
metric; every row must have the same test-split digest (asserted).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from biosig.commands.configs import COMPARE_MODES, CompareConfig
from biosig.commands.finetune import FinetuneConfig, run_finetune
from biosig.config import load_config
from biosig.data import SourceOptions
from biosig.data.splits import manifest_split, manifest_subject_split, subject_split, write_manifest
from biosig.errors import ConfigError, DataError
from biosig.logs import get_logger
from biosig.registry.discovery import expand_checkpoints, resolve_checkpoint
from biosig.tracking.datasets import LoggedDataset, use_dataset
from biosig.tracking.liveness import scratch_dir
from biosig.tracking.run import tracked_run
from biosig.tracking.tags import COMPARE_METRIC_TAG, COMPARE_SPLIT_DIGEST_TAG

log = get_logger(__name__)

MODES = COMPARE_MODES
COLUMNS = ["checkpoint", "mode", "auroc", "auroc_ci_low", "auroc_ci_high", "f1", "balanced_accuracy", "ece",
           "train_subjects", "seed", "trainable_params", "wall_s", "run_id"]


def run_compare(config: CompareConfig, *, nested: bool = False) -> pd.DataFrame:
    with tracked_run("compare", config, nested=nested) as ctx, scratch_dir("compare") as tmp:
        ctx.name_run(f"compare {' '.join(config.checkpoints)}")
        references = expand_checkpoints(ctx.client, config.checkpoints)
        logged = use_dataset(ctx, config.data, SourceOptions(n_subjects=config.n_subjects,
                             windows_per_subject=config.windows_per_subject, seed=config.seed),
                             output_dir=config.data_dir, context="evaluation", stream=not config.cv)
        _check_fit(references, logged.channels, logged.name)
        manifest = "" if config.cv else _manifest(config, logged, Path(tmp))
        if manifest:
            ctx.log_artifact(manifest)
        rows = []
        for subjects, seed in _plan(config):
            first = True
            for reference in references:
                for mode in config.modes:
                    wanted, first = (config.reference if first else []), False
                    rows.extend(_rows(config, reference, mode, logged.uri, str(manifest), wanted,
                                      subjects=subjects, seed=seed))
        digests = {row.pop("test_digest") for row in rows}
        if len(digests) != 1:
            raise DataError(f"rows were tested on different splits (digests {sorted(d[:12] for d in digests)})")
        board = pd.DataFrame(rows, columns=COLUMNS).sort_values(config.metric, ascending=False, ignore_index=True)
        board.attrs["run_id"] = ctx.run_id
        ctx.set_tags({COMPARE_SPLIT_DIGEST_TAG: digests.pop(), COMPARE_METRIC_TAG: config.metric})
        _log_board(ctx, board, config.metric)
        log.info(board.drop(columns=["run_id"]).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        if config.train_subjects:
            curve = label_efficiency(board)
            _log_efficiency(ctx, curve)
            log.info("label efficiency (test AUROC, mean over seeds):\n"
                     + curve.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        return board


def _plan(config: CompareConfig) -> list[tuple[int, int]]:
    """(training subjects, seed) of each pass: one pass with all subjects, or the label-efficiency grid."""
    if not config.train_subjects:
        return [(0, config.seed)]
    return [(k, config.seed + i) for k in config.subject_counts() for i in range(config.seeds)]


def label_efficiency(board: pd.DataFrame) -> pd.DataFrame:
    """Test AUROC against labelled training subjects per model, pooled over seeds: mean, the mean interval
    bounds, the spread between seeds."""
    grouped = board.assign(model=board.checkpoint + " (" + board["mode"] + ")").groupby(
        ["model", "train_subjects"], as_index=False)
    curve = grouped.agg(auroc=("auroc", "mean"), auroc_ci_low=("auroc_ci_low", "mean"),
                        auroc_ci_high=("auroc_ci_high", "mean"), auroc_sd=("auroc", "std"), seeds=("seed", "nunique"))
    return curve.sort_values(["model", "train_subjects"], ignore_index=True)


def _log_efficiency(ctx, curve: pd.DataFrame) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        curve.to_csv(tmp_path / "label_efficiency.csv", index=False)
        (tmp_path / "label_efficiency.md").write_text(_markdown(curve))
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for model, part in curve.groupby("model"):
            line, = ax.plot(part.train_subjects, part.auroc, marker="o", label=model)
            ax.fill_between(part.train_subjects, part.auroc_ci_low, part.auroc_ci_high, alpha=0.15,
                            color=line.get_color())
        ax.set_xscale("log", base=2)
        ax.set_xlabel("labelled training subjects")
        ax.set_ylabel("test AUROC (95 % subject-bootstrap band)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(tmp_path / "label_efficiency.png", dpi=100)
        plt.close(fig)
        for name in ("label_efficiency.csv", "label_efficiency.md", "label_efficiency.png"):
            ctx.log_artifact(tmp_path / name)


def _check_fit(references: list[str], channels: list[str], where: str) -> None:
    """Every checkpoint's channels must be in the data: refuse a mismatched modality before training."""
    for reference in references:
        meta = resolve_checkpoint(reference).meta
        missing = [c for c in meta["channels"] if c not in channels]
        if missing:
            raise DataError(f"checkpoint {reference} was pretrained on {meta['channels']} "
                            f"({meta.get('name', '?')}); {where} lacks {missing}: a different modality "
                            "cannot be compared on this task")


def _manifest(config: CompareConfig, logged: LoggedDataset, tmp: Path) -> Path:
    """The split manifest every row uses (logged with the leaderboard): given, or written once here (a
    sharded dataset's from its manifest's subject index; each row checks it covers every subject)."""
    settings = load_config(FinetuneConfig, config.finetune_config or None, {"seed": config.seed})
    if logged.windows is None:
        if config.split_manifest:
            return Path(config.split_manifest)
        splits = manifest_subject_split(logged.manifest, settings.val_fraction, settings.test_fraction,
                                        seed=settings.seed)
        return write_manifest(splits, tmp / "split_manifest.csv")
    ws = logged.windows
    splits = (manifest_split(ws, config.split_manifest) if config.split_manifest
              else subject_split(ws, settings.val_fraction, settings.test_fraction, seed=settings.seed))
    return write_manifest(splits, tmp / "split_manifest.csv")


def _rows(config: CompareConfig, reference: str, mode: str, data: str, manifest: str, references: list[str],
          *, subjects: int = 0, seed: int = 0) -> list[dict]:
    """The row of one checkpoint x mode (on `subjects` training subjects, 0: all), plus the reference
    models' rows when asked for."""
    sized = f" on {subjects} subjects, seed {seed}" if subjects else ""
    overrides = {"checkpoint": reference, "data": data, "split_manifest": manifest, "register": False,
                 "reference": references, "cv": config.cv, "train_subjects": subjects,
                 "experiment": config.experiment,
                 "tracking_uri": config.tracking_uri, "seed": seed, "run_name": f"{mode} {reference}{sized}"}
    if mode == "probe":  # frozen backbone: head-only epochs with a linear head
        overrides.update(head="linear", stage2_epochs=0, stage3_epochs=0)
    elif mode == "lora":  # stage 2 trains LoRA adapters instead of unfreezing blocks
        overrides.update(adaptation="lora")
    finetune_config = load_config(FinetuneConfig, config.finetune_config or None, overrides)
    if mode == "probe" and finetune_config.stage1_epochs == 0:
        raise ConfigError("a linear probe needs stage1_epochs > 0 in the finetune config")
    started = time.perf_counter()
    result = run_finetune(finetune_config, nested=True)
    test = result.test
    n_train = subjects or result.train_subjects
    rows = [{"checkpoint": reference, "mode": mode, **_scores(test), "train_subjects": n_train, "seed": seed,
             "trainable_params": result.trainable_params, "wall_s": round(time.perf_counter() - started, 2),
             "run_id": result.run_id, "test_digest": result.test_digest}]
    for name, metrics in result.references.items():
        rows.append({"checkpoint": f"reference: {name}", "mode": "features+sklearn" if name == "features" else "scratch",
                     **_scores(metrics), "train_subjects": n_train, "seed": seed, "trainable_params": 0,
                     "wall_s": float("nan"), "run_id": result.run_id, "test_digest": result.test_digest})
    return rows


def _scores(metrics: dict[str, float]) -> dict[str, float]:
    nan = float("nan")
    return {"auroc": metrics["auroc"], "auroc_ci_low": metrics.get("auroc_ci_low", nan),
            "auroc_ci_high": metrics.get("auroc_ci_high", nan), "f1": metrics["f1"],
            "balanced_accuracy": metrics["balanced_accuracy"], "ece": metrics.get("ece", nan)}


def _markdown(board: pd.DataFrame) -> str:
    cells = [[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row] for row in board.itertuples(index=False)]
    lines = ["| " + " | ".join(board.columns) + " |", "|" + "---|" * len(board.columns)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells]) + "\n"


def _log_board(ctx, board: pd.DataFrame, metric: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        board.to_csv(tmp_path / "leaderboard.csv", index=False)
        (tmp_path / "leaderboard.md").write_text(_markdown(board))
        fig, ax = plt.subplots(figsize=(7, 0.5 * len(board) + 1.5))
        labels = [f"{c} ({m})" for c, m in zip(board.checkpoint, board["mode"])]
        ax.barh(labels[::-1], board[metric][::-1])
        ax.set_xlabel(f"test {metric}")
        fig.tight_layout()
        fig.savefig(tmp_path / "leaderboard.png", dpi=100)
        plt.close(fig)
        for name in ("leaderboard.csv", "leaderboard.md", "leaderboard.png"):
            ctx.log_artifact(tmp_path / name)
