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
COLUMNS = ["checkpoint", "mode", "auroc", "f1", "balanced_accuracy", "ece", "trainable_params", "wall_s", "run_id"]


def run_compare(config: CompareConfig) -> pd.DataFrame:
    with tracked_run("compare", config) as ctx, scratch_dir("compare") as tmp:
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
        for reference in references:
            for mode in config.modes:
                wanted = config.reference if not rows else []
                rows.extend(_rows(config, reference, mode, logged.uri, str(manifest), wanted))
        digests = {row.pop("test_digest") for row in rows}
        if len(digests) != 1:
            raise DataError(f"rows were tested on different splits (digests {sorted(d[:12] for d in digests)})")
        board = pd.DataFrame(rows, columns=COLUMNS).sort_values(config.metric, ascending=False, ignore_index=True)
        ctx.set_tags({COMPARE_SPLIT_DIGEST_TAG: digests.pop(), COMPARE_METRIC_TAG: config.metric})
        _log_board(ctx, board, config.metric)
        log.info(board.drop(columns=["run_id"]).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        return board


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


def _rows(config: CompareConfig, reference: str, mode: str, data: str, manifest: str, references: list[str]) -> list[dict]:
    """The row of one checkpoint x mode, plus the reference models' rows when asked for."""
    overrides = {"checkpoint": reference, "data": data, "split_manifest": manifest, "register": False,
                 "reference": references, "cv": config.cv,
                 "experiment": config.experiment,
                 "tracking_uri": config.tracking_uri, "seed": config.seed, "run_name": f"{mode} {reference}"}
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
    rows = [{"checkpoint": reference, "mode": mode, "auroc": test["auroc"], "f1": test["f1"],
             "balanced_accuracy": test["balanced_accuracy"], "ece": test["ece"],
             "trainable_params": result.trainable_params, "wall_s": round(time.perf_counter() - started, 2),
             "run_id": result.run_id, "test_digest": result.test_digest}]
    for name, metrics in result.references.items():
        rows.append({"checkpoint": f"reference: {name}", "mode": "features+sklearn" if name == "features" else "scratch",
                     "auroc": metrics["auroc"], "f1": metrics["f1"], "balanced_accuracy": metrics["balanced_accuracy"],
                     "ece": metrics.get("ece", float("nan")), "trainable_params": 0, "wall_s": float("nan"),
                     "run_id": result.run_id, "test_digest": result.test_digest})
    return rows


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
