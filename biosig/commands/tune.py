"""`tune`: an Optuna search over unfreeze depth and learning rate (plus any search-space file
dimensions), one parent MLflow run with one nested run per trial.

Every trial fine-tunes the same resolved checkpoint on the same subject split with the same seed, so
trials differ only by their hyper-parameters. Each trial run carries `optuna.study`, `optuna.trial` and
`optuna.state` (COMPLETE, PRUNED or FAIL); a pruner (median or successive halving) stops trials on the
per-epoch validation metric. The study lives in an Optuna storage shared by every worker: by default a
JournalFileBackend file next to the tracking DB (several processes on one SQLite file lose trials),
`storage=postgresql://…` across machines. `n_jobs` > 1 starts worker processes on the same study.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import optuna
import yaml

from biosig.backbones import build_backbone
from biosig.commands.configs import STORAGE_ENV, FinetuneConfig, TuneConfig
from biosig.commands.finetune import run_finetune
from biosig.commands.finetune_data import prepare_data, prepare_streamed
from biosig.config import load_config
from biosig.data import SourceOptions, load_source
from biosig.data.shards import is_sharded, read_manifest
from biosig.errors import ConfigError
from biosig.logs import get_logger
from biosig.registry.discovery import resolve_pretrained
from biosig.secrets import redact_value
from biosig.tracking.datasets import use_dataset
from biosig.tracking.run import RunContext, configure_tracking, record_classifier, record_fit, tracked_run
from biosig.tracking.study import log_study_summary
from biosig.tracking.tags import TEST_DIGEST_TAG
from biosig.training import loop
from biosig.training.classifier import build_classifier
from biosig.training.search_space import Dimension, load_search_space
from biosig.training.trainer import FitOutcome, fit

log = get_logger(__name__)

STATE_TAG = "optuna.state"
#: adaptation=lora: the ranks a study chooses from (instead of the unfreeze depth)
LORA_RANKS = (2, 4, 8, 16)


@dataclasses.dataclass
class TuneResult:
    run_id: str
    study: str
    best_value: float | None
    best_params: dict[str, Any]
    n_trials: int
    registered: str | None = None


def run_tune(config: TuneConfig, *, nested: bool = False) -> TuneResult:
    """The `tune` command. Everything that can be wrong with the input is checked before any trial."""
    tracking_uri = configure_tracking(config.tracking_uri)
    dimensions = load_search_space(config.search_space, FinetuneConfig)
    where = StudyStorage.of(config.storage, tracking_uri)
    storage = open_storage(where.url, tracking_uri)
    if config.parent_run_id:
        return _work(config, storage, dimensions)
    study_name = config.study or f"tune-{dt.datetime.now():%Y%m%d-%H%M%S}"
    auto = config.auto_name() if config.checkpoint == "auto" else None
    parent = resolve_pretrained(config.checkpoint, auto_name=auto, expected_arch=config.expected_arch())
    with tracked_run("tune", config, nested=nested, tags={"optuna.study": study_name}) as ctx:
        ctx.name_run(f"tune {parent.name or parent.uri}")
        logged = use_dataset(ctx, config.data, _source_options(config), output_dir=config.data_dir,
                             context="training", stream=True)
        # Workers and the refit read the parquet this run logged: the same windows, the same split.
        pinned = f"models:/{parent.name}/{parent.version}" if parent.name else parent.uri  # no drift mid-search
        base = dataclasses.replace(config, data=logged.uri, checkpoint=pinned,
                                   study=study_name)
        study = _study(base, storage, study_name)
        ctx.set_tags({**parent.lineage(), "optuna.storage": where.describe(), "optuna.storage_from": where.origin})
        if where.note:
            log.info(f"tune: {where.note}")
        log.info(f"tune: study '{study_name}', {config.n_trials} trial(s) on {max(1, config.n_jobs)} worker(s), "
                 f"{config.direction} val_{config.selection_metric}")
        workers = _start_workers(base, ctx.run_id, study_name)
        try:
            _optimise(base, study, dimensions, ctx.run_id, share=_share(config.n_trials, config.n_jobs, 0))
        except BaseException:
            for worker in workers:
                worker.terminate()
            raise
        finally:
            _wait(workers)
        best = log_study_summary(ctx, study, config.selection_metric)
        registered = _refit(base, best) if config.register_best and best else None
        return TuneResult(ctx.run_id, study_name, best.value if best else None, best.params if best else {},
                          len(study.trials), registered)


def _work(config: TuneConfig, storage, dimensions: list[Dimension]) -> TuneResult:
    """A worker process: join the parent's study and run its share of the trials."""
    study = optuna.load_study(study_name=config.study, storage=storage,
                              sampler=optuna.samplers.TPESampler(seed=config.seed + config.worker),
                              pruner=_pruner(config.pruner))
    _optimise(config, study, dimensions, config.parent_run_id, share=config.n_trials)
    return TuneResult(config.parent_run_id, config.study, None, {}, len(study.trials))


@dataclasses.dataclass(frozen=True)
class StudyStorage:
    """Where the study lives and how that was decided, recorded on the parent run (password-free)."""

    url: str  # a journal file path or a database URL
    origin: str  # config key 'storage' | $BIOSIG_OPTUNA_STORAGE | default
    note: str = ""  # said on the console and in the tag when the place limits who can join the study

    @classmethod
    def of(cls, configured: str, tracking_uri: str) -> "StudyStorage":
        if configured:
            return cls(configured, "config key 'storage'")
        if os.environ.get(STORAGE_ENV):
            return cls(os.environ[STORAGE_ENV], f"${STORAGE_ENV}")
        journal = _default_journal(tracking_uri)
        note = ""
        if not tracking_uri.startswith("sqlite:///"):
            note = (f"the study is in {journal} on {socket.gethostname()}, local to this machine: workers on other "
                    "machines cannot join it (set storage=postgresql://… or $BIOSIG_OPTUNA_STORAGE to share it)")
        return cls(str(journal), "default", note)

    def describe(self) -> str:
        kind = "journal:" if "://" not in self.url else ""
        return redact_value(f"{kind}{self.url}") + (f" ({self.note})" if self.note else "")


def open_storage(url: str, tracking_uri: str):
    """The study storage; an unreachable database, or MLflow's own, fails here, before any trial."""
    if not url:
        url = str(_default_journal(tracking_uri))
    if "://" not in url:  # a journal file
        Path(url).parent.mkdir(parents=True, exist_ok=True)
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(url))
    _refuse_tracking_database(url, tracking_uri)
    _create_schema(url)
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
    except Exception as exc:  # sqlalchemy raises many kinds here; all mean the same to the user
        raise ConfigError(f"config key 'storage': cannot open {redact_value(url)}: {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:300]}") from None


def _refuse_tracking_database(url: str, tracking_uri: str) -> None:
    """MLflow and Optuna both version their tables with alembic (`alembic_version`): in one database and schema
    they break each other's migrations, so the study needs its own database or its own PostgreSQL schema."""
    if "://" not in tracking_uri or tracking_uri.startswith(("http", "databricks")):
        return
    from sqlalchemy.engine import make_url

    study, store = make_url(url), make_url(tracking_uri)
    same = (study.get_backend_name(), study.host, study.port or 0, study.database) == \
        (store.get_backend_name(), store.host, store.port or 0, store.database)
    if same and not _schema_of(url):
        raise ConfigError(f"config key 'storage' {redact_value(url)} is the MLflow tracking database: Optuna's tables "
                          "(and its alembic_version) would clash with MLflow's; give the study its own database, or "
                          "on PostgreSQL its own schema (append ?options=-csearch_path%3Doptuna)")


def _schema_of(url: str) -> str:
    """The schema a PostgreSQL URL selects with `options=-csearch_path=NAME` (empty: none)."""
    from sqlalchemy.engine import make_url

    options = str(make_url(url).query.get("options", ""))
    match = re.search(r"search_path\s*=\s*([A-Za-z_][A-Za-z0-9_]*)", options)
    return match.group(1) if match else ""


def _create_schema(url: str) -> None:
    """The study's own PostgreSQL schema, created if missing (Optuna creates tables, not schemas)."""
    schema = _schema_of(url)
    if not schema or not url.startswith("postgresql"):
        return
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
    except Exception as exc:  # an unreachable server is reported by RDBStorage with the same words below
        raise ConfigError(f"config key 'storage': cannot open {redact_value(url)}: {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:300]}") from None


def _default_journal(tracking_uri: str) -> Path:
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri[len("sqlite:///"):]).parent / "optuna.journal"
    return Path.cwd() / "optuna.journal"


def _study(config: TuneConfig, storage, name: str) -> optuna.Study:
    return optuna.create_study(study_name=name, storage=storage, direction=config.direction, load_if_exists=True,
                               sampler=optuna.samplers.TPESampler(seed=config.seed),
                               pruner=_pruner(config.pruner))


def _pruner(kind: str) -> optuna.pruners.BasePruner:
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    if kind == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    return optuna.pruners.NopPruner()


def _source_options(config: FinetuneConfig) -> SourceOptions:
    return SourceOptions(n_subjects=config.n_subjects, windows_per_subject=config.windows_per_subject,
                         seed=config.seed)


def _share(n_trials: int, n_jobs: int, worker: int) -> int:
    return n_trials // n_jobs + (1 if worker < n_trials % n_jobs else 0)


def _optimise(config: TuneConfig, study: optuna.Study, dimensions: list[Dimension], parent_run_id: str,
              share: int) -> None:
    if share <= 0:
        return
    parent = resolve_pretrained(config.checkpoint, expected_arch=config.expected_arch())
    if is_sharded(config.data):  # streamed: every trial reads the corpus from disk
        data = prepare_streamed(read_manifest(config.data), Path(config.data).name, config, parent)
    else:
        data = prepare_data(load_source(config.data, _source_options(config)), Path(config.data).name, config, parent)
    spec = parent.meta["backbone"]
    n_blocks = len(build_backbone(spec["arch"], data.channels, spec["config"]).blocks())
    objective = _Objective(config, parent, data, dimensions, n_blocks, parent_run_id, study.study_name)
    # A trial that raises is recorded FAIL in Optuna and MLflow; the study goes on.
    study.optimize(objective, n_trials=share, catch=(Exception,), gc_after_trial=True)


class _Objective:
    def __init__(self, config: TuneConfig, parent, data, dimensions: list[Dimension], n_blocks: int,
                 parent_run_id: str, study_name: str) -> None:
        self.config, self.parent, self.data, self.dimensions = config, parent, data, dimensions
        self.n_blocks, self.parent_run_id, self.study_name = n_blocks, parent_run_id, study_name

    def __call__(self, trial: optuna.Trial) -> float:
        params: dict[str, Any] = {"lr": trial.suggest_float("lr", self.config.lr_min, self.config.lr_max, log=True)}
        if self.config.adaptation == "lora":  # the adapters' capacity plays the part of the unfreeze depth
            params["lora_rank"] = trial.suggest_categorical("lora_rank", LORA_RANKS)
        else:
            params["unfreeze_last_n"] = trial.suggest_int("unfreeze_last_n", 0, self.n_blocks)
        params.update({d.name: d.suggest(trial) for d in self.dimensions})
        overrides = {f.name: getattr(self.config, f.name) for f in dataclasses.fields(FinetuneConfig)}
        overrides.update(params, register=False, promote="", run_name=f"trial {trial.number}")
        trial_config = load_config(FinetuneConfig, None, overrides)
        tags = {"optuna.study": self.study_name, "optuna.trial": str(trial.number), STATE_TAG: "RUNNING",
                TEST_DIGEST_TAG: self.data.test_digest}
        with tracked_run("tune_trial", trial_config, tags=tags, parent_run_id=self.parent_run_id) as ctx:
            ctx.on_failure(lambda: ctx.client.set_tag(ctx.run_id, STATE_TAG, "FAIL"))
            trial.set_user_attr("mlflow_run_id", ctx.run_id)
            outcome = self._fit(ctx, trial_config, trial)
            value = outcome.best_value(self.config.selection_metric)
            trial.set_user_attr("epochs", outcome.epochs_run)
            ctx.log_metrics({"epochs_run": outcome.epochs_run, f"best_val_{self.config.selection_metric}": value})
            ctx.set_tags({STATE_TAG: "PRUNED" if outcome.stopped else "COMPLETE"})
        if outcome.stopped:
            raise optuna.TrialPruned(f"pruned after epoch {outcome.epochs_run}")
        return value

    def _fit(self, ctx: RunContext, config: FinetuneConfig, trial: optuna.Trial) -> FitOutcome:
        """The trial's fine-tune: the same set-up as `finetune` (device, seed, classifier, unfreeze check
        inside `fit`), stopped when the pruner says so."""
        device = loop.resolve_device(config.device)
        generator = loop.seed_everything(config.seed)  # the same initialisation and batches for every trial
        built = build_classifier(self.parent.meta, self.parent.path, self.parent.uri, self.data.channels,
                                 len(self.data.class_names), config.head_settings())
        record_classifier(ctx, built, self.data)
        built.model.to(device)
        metric = self.config.selection_metric

        def pruned(epoch: int, val: dict[str, float]) -> bool:
            if not math.isnan(val[metric]):
                trial.report(val[metric], epoch)
            return trial.should_prune()

        outcome = fit(ctx, config.fit_settings(), built.model, self.data, config.schedule(), masks=built.masks,
                      device=device, generator=generator, on_epoch=pruned)
        record_fit(ctx, outcome)
        return outcome


def _start_workers(config: TuneConfig, parent_run_id: str, study_name: str) -> list[subprocess.Popen]:
    """n_jobs - 1 extra processes on the same study, each logging trials under `parent_run_id`."""
    workers = []
    if config.n_jobs <= 1:
        return workers
    keys = {f.name: getattr(config, f.name) for f in dataclasses.fields(TuneConfig)}
    for worker in range(1, config.n_jobs):
        share = _share(config.n_trials, config.n_jobs, worker)
        if share == 0:
            continue
        # URIs may carry credentials: they travel in the environment, never in the worker's file.
        spec = {**keys, "n_trials": share, "n_jobs": 1, "worker": worker, "parent_run_id": parent_run_id,
                "study": study_name, "register_best": False, "tracking_uri": "", "storage": ""}
        folder = Path(tempfile.mkdtemp(prefix=f"biosig-tune-{os.getpid()}-"))
        (folder / "worker.yaml").write_text(yaml.safe_dump(spec))
        env = {**os.environ, "MLFLOW_TRACKING_URI": configure_tracking(config.tracking_uri)}
        if config.storage or os.environ.get(STORAGE_ENV):
            env[STORAGE_ENV] = config.storage or os.environ[STORAGE_ENV]
        env.pop("MLFLOW_RUN_ID", None)
        process = subprocess.Popen([sys.executable, "-m", "biosig.cli", "tune", "--config", str(folder / "worker.yaml")],
                                   env=env)
        process.biosig_folder = folder  # removed once the worker has exited
        workers.append(process)
    return workers


def _wait(workers: list[subprocess.Popen]) -> None:
    failed = [w.args for w in workers if w.wait() != 0]
    for worker in workers:
        shutil.rmtree(worker.biosig_folder, ignore_errors=True)
    if failed:
        log.info(f"tune: {len(failed)} worker process(es) exited with an error; their trials are in the study")


def _refit(config: TuneConfig, best: optuna.trial.FrozenTrial) -> str | None:
    overrides = {f.name: getattr(config, f.name) for f in dataclasses.fields(FinetuneConfig)}
    overrides.update(best.params, register=True, run_name="refit best")
    result = run_finetune(load_config(FinetuneConfig, None, overrides), nested=True)
    return f"{result.name}/{result.version}" if result.version else None
