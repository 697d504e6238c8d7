"""What pruning saves: the same 20-trial search on the synthetic quality task with and without a pruner.

Prints, per pruner, the fine-tuning epochs spent (summed over trials), the best val AUROC, and against
the unpruned search the ratio of epochs (target <= 0.5) and the AUROC difference (target within 0.01).

    python benchmarks/pruning.py [--trials 20 --subjects 24 --pruners median successive_halving]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import optuna
from common import pretrained_checkpoint, use_store

from biosig.commands.tune import TuneConfig, open_storage, run_tune
from biosig.config import load_config


def search(checkpoint: str, pruner: str, args) -> tuple[int, float]:
    config = load_config(TuneConfig, None, {
        "checkpoint": checkpoint, "n_subjects": args.subjects, "n_trials": args.trials, "pruner": pruner,
        "study": f"bench-{pruner}", "stage1_epochs": 3, "stage2_epochs": 6, "patience": 100,
        "experiment": "benchmarks"})
    result = run_tune(config)
    study = optuna.load_study(study_name=result.study, storage=open_storage("", f"sqlite:///{Path.cwd()}/mlflow.db"))
    epochs = sum(int(t.user_attrs.get("epochs", 0)) for t in study.trials)
    return epochs, result.best_value


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--subjects", type=int, default=24)
    parser.add_argument("--pruners", nargs="+", default=["median", "successive_halving"])
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        use_store(Path(tmp))
        checkpoint = pretrained_checkpoint()
        results = {pruner: search(checkpoint, pruner, args) for pruner in ["none", *args.pruners]}
    base_epochs, base_auroc = results["none"]
    print(f"{'pruner':<20}{'epochs':>8}{'best val AUROC':>16}{'epochs ratio':>14}{'AUROC diff':>12}")
    for pruner, (epochs, auroc) in results.items():
        print(f"{pruner:<20}{epochs:>8}{auroc:>16.4f}{epochs / base_epochs:>14.2f}{auroc - base_auroc:>+12.4f}")
    print("targets: epochs ratio <= 0.5 with |AUROC diff| <= 0.01")


if __name__ == "__main__":
    main()
