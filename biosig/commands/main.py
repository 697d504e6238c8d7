"""`main`: the end-to-end job on the embedded default, one parent run with a child run per step:
log_dataset (the fine-tuning data) -> pretrain (small TTM on PPG+ECG) -> finetune (checkpoint=auto)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from biosig.commands.compare import run_compare
from biosig.commands.configs import CompareConfig, MainConfig
from biosig.commands.finetune import FinetuneConfig, run_finetune
from biosig.commands.log_dataset import DatasetConfig, run_log_dataset
from biosig.commands.pretrain import PretrainConfig, run_pretrain
from biosig.config import load_config
from biosig.logs import get_logger
from biosig.tracking.liveness import scratch_dir
from biosig.tracking.run import resolve_tracking_uri, tracked_run, ui_base
from biosig.tracking.tags import REGISTERED_MODEL_TAG, REGISTERED_VERSION_TAG

log = get_logger(__name__)

#: Small enough for a 2-core laptop in a few minutes; any key can be overridden by the YAML files.
MAIN_PRETRAIN: dict[str, Any] = {"epochs": 30}
MAIN_FINETUNE: dict[str, Any] = {"stage1_epochs": 5, "stage2_epochs": 15, "patience": 5, "lr": 3e-3,
                                  "context_fit": "resample"}


def run_main(config: MainConfig) -> dict[str, Any]:
    shared = {"experiment": config.experiment, "tracking_uri": config.tracking_uri, "seed": config.seed,
              "data_dir": config.data_dir}
    with tracked_run("main", config) as ctx:
        dataset = run_log_dataset(load_config(DatasetConfig, None, {
            **{k: v for k, v in shared.items() if k != "data_dir"}, "output_dir": config.data_dir,
            "source": config.data, "run_name": "log_dataset"}), nested=True)
        pretrain_config = load_config(PretrainConfig, config.pretrain_config or None, {
            **({} if config.pretrain_config else MAIN_PRETRAIN), **shared, "data": config.pretrain_data,
            "run_name": "pretrain"})
        pretrained = run_pretrain(pretrain_config, nested=True)
        finetune_config = load_config(FinetuneConfig, config.finetune_config or None, {
            **({} if config.finetune_config else MAIN_FINETUNE), **shared, "data": str(dataset.path),
            "checkpoint": "auto", "run_name": "finetune", "reference": config.reference})
        finetuned = run_finetune(finetune_config, nested=True, auto_name=pretrain_config.model_name())
        summary = {"dataset": dataset.name, "pretrained": f"{pretrained.name}/{pretrained.version}",
                   "finetuned": f"{finetuned.name}/{finetuned.version}",
                   **{f"test_{k}": v for k, v in finetuned.test.items()},
                   **{f"reference.{name}.test_{k}": metrics[k] for name, metrics in finetuned.references.items()
                      for k in ("auroc", "f1", "balanced_accuracy")}}
        if config.train_subjects:
            summary["label_efficiency_run"] = _label_efficiency(config, shared, str(dataset.path),
                                                                f"{pretrained.name}/{pretrained.version}")
        ctx.log_dict(summary, "summary.json")
        _headline(ctx, dataset.name, pretrained, finetuned)
        ctx.set_tags({REGISTERED_MODEL_TAG: finetuned.name, REGISTERED_VERSION_TAG: finetuned.version})
        ctx.registered = f"{finetuned.name}/{finetuned.version}"
        experiment_id = ctx.run.info.experiment_id
    _print_where_to_look(config, experiment_id, ctx.run_id, pretrained.name, finetuned.name, finetuned.version,
                         finetuned.test, finetuned.references)
    return summary


def _headline(ctx, dataset: str, pretrained, finetuned) -> None:
    """What the pipeline found, on the parent run itself: its name, the test metrics of the fine-tuned model
    and the references (the run list's columns), and a description the run page opens with."""
    ctx.name_run(f"main → {finetuned.name}/{finetuned.version}")
    ctx.log_metrics({f"test_{k}": finetuned.test[k] for k in ("auroc", "f1", "balanced_accuracy")
                     if k in finetuned.test})
    ctx.log_metrics({f"reference.{name}.test_auroc": metrics["auroc"] for name, metrics in finetuned.references.items()})
    refs = "; ".join(f"reference {name}: AUROC {m['auroc']:.3f}" for name, m in finetuned.references.items())
    ctx.describe(f"Pipeline on `{dataset}`: pretrained `{pretrained.name}` version {pretrained.version}, fine-tuned "
                 f"`{finetuned.name}` version {finetuned.version}: test AUROC {finetuned.test['auroc']:.3f}, "
                 f"F1 {finetuned.test['f1']:.3f}" + (f" ({refs}, same test split)" if refs else "") +
                 ". The steps are the child runs.")


def _label_efficiency(config: MainConfig, shared: dict[str, Any], data: str, checkpoint: str) -> str:
    """A nested compare: the checkpoint fine-tuned and the references trained on growing subject subsets."""
    with scratch_dir("main") as tmp:
        finetune_yaml = config.finetune_config
        if not finetune_yaml:
            finetune_yaml = str(Path(tmp) / "finetune.yaml")
            Path(finetune_yaml).write_text(yaml.safe_dump(MAIN_FINETUNE))
        board = run_compare(load_config(CompareConfig, None, {
            **{k: v for k, v in shared.items() if k != "data_dir"}, "checkpoints": [checkpoint], "data": data,
            "modes": ["finetune"], "reference": config.reference or [], "train_subjects": config.train_subjects,
            "seeds": config.seeds, "finetune_config": finetune_yaml, "metric": "auroc",
            "run_name": "label efficiency"}), nested=True)
    return str(board.attrs.get("run_id", ""))


def _print_where_to_look(config: MainConfig, experiment_id: str, run_id: str, pretrained: str, finetuned: str,
                         version: str | None, test: dict[str, float], references: dict[str, dict[str, float]]) -> None:
    uri = resolve_tracking_uri(config.tracking_uri)  # from config, environment or the SQLite default
    ui = ui_base(uri)
    log.info("")
    interval = (f" [95 % CI {test['auroc_ci_low']:.3f}-{test['auroc_ci_high']:.3f}]"
                if "auroc_ci_low" in test else "")
    log.info(f"done: test AUROC {test['auroc']:.3f}{interval}, F1 {test['f1']:.3f} for {finetuned}/{version}")
    for name, metrics in references.items():
        verdict = "beats it" if test["auroc"] >= metrics["auroc"] else "LOSES to it"
        log.info(f"  reference '{name}' on the same test split: AUROC {metrics['auroc']:.3f}, F1 {metrics['f1']:.3f} "
                 f"(the fine-tuned model {verdict})")
    log.info("where to look:")
    if not uri.startswith("http"):
        log.info(f"  start the UI:      mlflow ui --backend-store-uri {uri}")
    log.info(f"  this pipeline:     {ui}/#/experiments/{experiment_id}/runs/{run_id}  (child runs: log_dataset, "
             "pretrain, finetune)")
    log.info(f"  pretrained model:  {ui}/#/models/{pretrained}")
    log.info(f"  fine-tuned model:  {ui}/#/models/{finetuned}")
    log.info(f"  use it:            mlflow.pyfunc.load_model('models:/{finetuned}/{version}').predict(df)")
    log.info(f"  promote it:        biosig promote --model {finetuned} --version {version} --to staging")
