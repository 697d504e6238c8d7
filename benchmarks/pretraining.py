"""Does pretraining help? An ablation of pretraining recipes measured by the probe every pretraining run
logs (frozen pooled embeddings -> logistic regression with subject folds on the bundled quality task), and
a label-efficiency check of the chosen recipe.

For each recipe (pretrain keys over the main job's defaults) this prints the probe AUROC at random
initialisation and of the registered weights, each with its 95 % subject-bootstrap interval, the delta,
whether the intervals separate, the final validation loss and the wall time. Then, for `--label-efficiency`,
the recipe's checkpoint and the two references fine-tuned on 4 labelled training subjects over several
seeds (`compare --train-subjects 4 --seeds N`), pooled.

    python benchmarks/pretraining.py [--recipes default,more_data,...] [--label-efficiency RECIPE] [--seeds 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import use_store
from mlflow.tracking import MlflowClient

from biosig.commands.compare import label_efficiency, run_compare
from biosig.commands.configs import CompareConfig
from biosig.commands.main import MAIN_FINETUNE, MAIN_PRETRAIN
from biosig.commands.pretrain import PretrainConfig, run_pretrain
from biosig.config import load_config

#: name -> pretrain keys over MAIN_PRETRAIN (the main job's recipe is `default`)
RECIPES: dict[str, dict] = {
    "default": {},
    "epochs_100": {"epochs": 100},
    "more_data": {"n_subjects": 96},
    "more_data_100": {"n_subjects": 96, "epochs": 100},
    "mask_20": {"mask_ratio": 0.2},
    "mask_60": {"mask_ratio": 0.6},
    "patch_32": {"patch_length": 32},
    "patch_128": {"patch_length": 128},
    "fcst": {"objective": "fcst", "prediction_length": 128, "context_length": 896},
    "wide": {"d_model": 128},
    "lr_3e-3": {"lr": 3e-3},
    "mask_60_e100": {"mask_ratio": 0.6, "epochs": 100},
    "p32_m20_e100": {"patch_length": 32, "mask_ratio": 0.2, "epochs": 100},
    "tspulse": {"arch": "tspulse"},
    "tspulse_e100": {"arch": "tspulse", "epochs": 100},
    "tspulse_fft": {"arch": "tspulse", "backbone_options": "fuse_fft=true"},
    "tspulse_fft_e100": {"arch": "tspulse", "backbone_options": "fuse_fft=true", "epochs": 100},
    "tspulse_m20_e100": {"arch": "tspulse", "mask_ratio": 0.2, "epochs": 100},
}


def probe_recipe(name: str, keys: dict) -> dict:
    started = time.perf_counter()
    config = load_config(PretrainConfig, None, {**MAIN_PRETRAIN, **keys, "experiment": "benchmarks",
                                                "system_metrics": False, "run_name": name})
    result = run_pretrain(config)
    metrics = MlflowClient().get_run(result.run_id).data.metrics
    row = {"recipe": name, "init": metrics["probe/auroc_init"], "init_low": metrics["probe/auroc_init_ci_low"],
           "init_high": metrics["probe/auroc_init_ci_high"], "final": metrics["probe/auroc_final"],
           "final_low": metrics["probe/auroc_final_ci_low"], "final_high": metrics["probe/auroc_final_ci_high"],
           "features": metrics["probe/auroc_features"], "val_loss": result.best_val_loss,
           "wall_s": time.perf_counter() - started, "checkpoint": f"{result.name}/{result.version}"}
    row["delta"] = row["final"] - row["init"]
    row["separated"] = row["final_low"] > row["init_high"]
    return row


def print_rows(rows: list[dict]) -> None:
    print(f"{'recipe':<14} {'probe init [95 % CI]':<24} {'probe final [95 % CI]':<24} {'delta':>6} {'sep':>4} "
          f"{'val_loss':>8} {'wall s':>7}")
    for r in rows:
        print(f"{r['recipe']:<14} {r['init']:.3f} [{r['init_low']:.3f}, {r['init_high']:.3f}]    "
              f"{r['final']:.3f} [{r['final_low']:.3f}, {r['final_high']:.3f}]    {r['delta']:+.3f} "
              f"{'yes' if r['separated'] else 'no':>4} {r['val_loss']:8.3f} {r['wall_s']:7.0f}")
    if rows:
        print(f"(window-features probe on the same set: {rows[0]['features']:.3f}; target: final >= init + 0.05 "
              "with separated intervals)")


def label_efficiency_check(checkpoint: str, seeds: int, subjects: str) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        import yaml

        yaml.safe_dump(MAIN_FINETUNE, f)
    board = run_compare(load_config(CompareConfig, None, {
        "checkpoints": [checkpoint], "modes": ["finetune"], "reference": ["features", "scratch"],
        "train_subjects": subjects.split(","), "seeds": seeds, "finetune_config": f.name, "metric": "auroc",
        "experiment": "benchmarks", "system_metrics": False}))
    curve = label_efficiency(board)
    print(f"\nlabel efficiency of {checkpoint} (test AUROC, mean over {seeds} seeds):")
    print(curve.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default="default", help=f"comma-separated, of: {', '.join(RECIPES)}")
    parser.add_argument("--label-efficiency", default="", help="a recipe whose checkpoint is fine-tuned on few subjects")
    parser.add_argument("--subjects", default="4", help="training-subject counts for --label-efficiency")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        use_store(Path(tmp))
        rows = []
        for name in filter(None, args.recipes.split(",")):
            rows.append(probe_recipe(name, RECIPES[name]))
            print_rows(rows[-1:])
        print("\nall recipes:")
        print_rows(rows)
        if args.label_efficiency:
            row = next((r for r in rows if r["recipe"] == args.label_efficiency), None) or \
                probe_recipe(args.label_efficiency, RECIPES[args.label_efficiency])
            label_efficiency_check(row["checkpoint"], args.seeds, args.subjects)


if __name__ == "__main__":
    main()
