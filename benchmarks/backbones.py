"""Backbones side by side on the bundled task: every installed architecture (TTM, TSPulse, plug-ins such
as examples/backbone_plugin's resnet1d) pretrained with the same budget on synthetic PPG+ECG, then one
`biosig compare` on synthetic:quality: linear probe, staged fine-tune and LoRA fine-tune of each on the
same subject split, beside the features and scratch references. Prints the leaderboard (test AUROC, F1,
balanced accuracy, trainable parameters, seconds).

    pip install -e examples/backbone_plugin   # optional: adds the resnet1d rows
    python benchmarks/backbones.py [--pretrain-epochs 30] [--archs ttm,tspulse,resnet1d] [--modes probe,finetune,lora]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import pandas as pd
import yaml
from common import use_store

from biosig import backbones
from biosig.commands.compare import run_compare
from biosig.commands.configs import CompareConfig, PretrainConfig
from biosig.commands.main import MAIN_FINETUNE
from biosig.commands.pretrain import run_pretrain
from biosig.config import load_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrain-epochs", type=int, default=30)
    parser.add_argument("--archs", default="ttm,tspulse,resnet1d", help="those installed are used")
    parser.add_argument("--modes", default="probe,finetune,lora")
    args = parser.parse_args()
    archs = [a for a in args.archs.split(",") if a in backbones.installed()]
    with tempfile.TemporaryDirectory() as tmp:
        use_store(Path(tmp))
        names, seconds = [], {}
        for arch in archs:
            started = time.perf_counter()
            config = load_config(PretrainConfig, None, {"arch": arch, "epochs": args.pretrain_epochs,
                                                        "experiment": "benchmarks", "system_metrics": False})
            names.append(run_pretrain(config).name)
            seconds[arch] = time.perf_counter() - started
        finetune = Path(tmp) / "finetune.yaml"
        finetune.write_text(yaml.safe_dump(MAIN_FINETUNE))
        board = run_compare(load_config(CompareConfig, None, {
            "checkpoints": names, "modes": args.modes.split(","), "metric": "auroc", "finetune_config": str(finetune),
            "experiment": "benchmarks", "system_metrics": False}))
    print(f"pretraining ({args.pretrain_epochs} epochs, synthetic PPG+ECG): "
          + ", ".join(f"{a} {s:.0f} s" for a, s in seconds.items()))
    columns = [c for c in ("checkpoint", "mode", "auroc", "f1", "balanced_accuracy", "trainable_params", "wall_s")
               if c in board.columns]
    with pd.option_context("display.width", 160):
        print(board[columns].to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
