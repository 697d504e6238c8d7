"""What the parent `tune` run shows: best params and value, trial counts and epochs spent, trials CSV,
optimisation-history and parameter-importance plots (a table when importances cannot be computed)."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import optuna
from mlflow.entities import Param

from biosig.logs import get_logger
from biosig.tracking.run import RunContext

log = get_logger(__name__)

MIN_TRIALS_FOR_IMPORTANCE = 4


def log_study_summary(ctx: RunContext, study: optuna.Study, metric: str) -> optuna.trial.FrozenTrial | None:
    trials = study.trials
    states = {s: [t for t in trials if t.state == s] for s in optuna.trial.TrialState}
    complete = states[optuna.trial.TrialState.COMPLETE]
    ctx.log_metrics({
        "n_trials": len(trials), "n_complete": len(complete), "n_pruned": len(states[optuna.trial.TrialState.PRUNED]),
        "n_failed": len(states[optuna.trial.TrialState.FAIL]),
        "epochs_total": sum(int(t.user_attrs.get("epochs", 0)) for t in trials),
    })
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        study.trials_dataframe().to_csv(tmp_path / "trials.csv", index=False)
        ctx.log_artifact(tmp_path / "trials.csv", "tune")
        if complete:
            _plot(optuna.visualization.matplotlib.plot_optimization_history, study, tmp_path / "history.png", ctx)
            _importance(study, complete, tmp_path, ctx)
    if not complete:
        log.info("tune: no trial completed; see the trial runs for their errors")
        return None
    best = study.best_trial
    ctx.log_metrics({f"best_val_{metric}": best.value, "best_trial": best.number})
    ctx.client.log_batch(ctx.run_id, params=[Param(f"best.{k}", str(v)) for k, v in best.params.items()],
                         synchronous=True)
    ctx.set_tags({"optuna.best_trial": best.number, "optuna.best_run_id": best.user_attrs.get("mlflow_run_id", "")})
    log.info(f"tune: best trial {best.number}: val_{metric} {best.value:.4f} with {best.params}")
    return best


def _plot(plot, study: optuna.Study, path: Path, ctx: RunContext) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna marks its matplotlib plots experimental
        ax = plot(study)
    ax.figure.set_size_inches(7, 4.5)
    ax.figure.tight_layout()
    ax.figure.savefig(path, dpi=100)
    plt.close(ax.figure)
    ctx.log_artifact(path, "tune")


def _importance(study: optuna.Study, complete: list, tmp: Path, ctx: RunContext) -> None:
    """A plot with enough completed trials, else a table saying why there is none."""
    if len(complete) >= MIN_TRIALS_FOR_IMPORTANCE:
        try:
            _plot(optuna.visualization.matplotlib.plot_param_importances, study, tmp / "param_importances.png", ctx)
            return
        except (ValueError, RuntimeError) as exc:  # e.g. a parameter that never varied
            reason = str(exc)
    else:
        reason = f"only {len(complete)} completed trial(s); importances need {MIN_TRIALS_FOR_IMPORTANCE}"
    rows = [{"trial": t.number, "value": t.value, **t.params} for t in complete]
    ctx.log_dict({"note": reason, "completed_trials": rows}, "tune/param_importances.json")
