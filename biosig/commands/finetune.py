"""`finetune`: a pretrained checkpoint (found through the registry) -> a staged fine-tune -> a pyfunc
classifier registered as `{pretrained name}_finetuned`.

Stages: 1 head only (+ new slices of channel-inflated tensors), 2 head + last `unfreeze_last_n` blocks,
3 (optional) everything at lr/10. Each stage has its own AdamW + cosine warm-up; early stopping ends a
stage after `patience` epochs without a better selection metric; the best model over all stages is the
one tested and registered.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import numpy as np

from biosig.commands.configs import FinetuneConfig
from biosig.commands.finetune_data import prepare_data, prepare_streamed
from biosig.commands.finetune_evidence import cross_validate, log_reference_deltas, run_references
from biosig.commands.finetune_job import Evidence, Job, interval, log_model, test_model, train_model
from biosig.commands.promote import PromoteConfig, run_promote
from biosig.config import load_config
from biosig.data import SourceOptions
from biosig.data.splits import manifest_digest
from biosig.errors import ConfigError
from biosig.logs import get_logger
from biosig.registry.candidate import claim_candidate
from biosig.registry.card import model_card
from biosig.registry.discovery import ResolvedCheckpoint, resolve_pretrained
from biosig.registry.naming import FINETUNED_SUFFIX
from biosig.registry.publish import register_from_run
from biosig.tracking.datasets import follow_dataset, use_dataset
from biosig.tracking.liveness import scratch_dir
from biosig.tracking.run import FollowerContext, RunContext, configure_tracking, tracked_run
from biosig.tracking.tags import (
    ARCH_TAG,
    CANDIDATE_REASON_TAG,
    CANDIDATE_TAG,
    DATASET_DIGEST_TAG,
    DATASET_NAME_TAG,
    KIND_TAG,
    PARENT_NAME_TAG,
    PARENT_URI_TAG,
    PARENT_VERSION_TAG,
    PROMOTE_TARGET_TAG_PREFIX,
    RUN_ID_TAG,
    SPLIT_DIGEST_TAG,
    TASK_TAG,
    TEST_DIGEST_TAG,
    TEST_METRIC_TAG_PREFIX,
    WORLD_SIZE_TAG,
)
from biosig.training import loop
from biosig.training.labelled import LabelledSplits
from biosig.training.metrics import summary_table

log = get_logger(__name__)


@dataclasses.dataclass
class FinetuneResult:
    run_id: str
    name: str
    version: str | None
    best_epoch: int
    val: dict[str, float]
    test: dict[str, float]  # test metrics (pooled over folds under cv), with *_ci_low/high and *_mean/std
    mode_collapse: list[str]
    model_uri: str
    test_digest: str = ""
    trainable_params: int = 0  # the most any stage trained
    parent_name: str = ""
    references: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)  # name -> test metrics
    train_subjects: int = 0  # subjects the model was trained on (the training split, or train_subjects of it)


def run_finetune(config: FinetuneConfig, *, nested: bool = False, auto_name: str | None = None) -> FinetuneResult:
    """The `finetune` command: resolve the checkpoint first (fail fast), then train, test (one split or
    cross-validated), train the reference models on the same split(s), register with a model card.
    `auto_name` overrides the name that checkpoint=auto derives from `pretrain_config`."""
    if config.checkpoint == "auto" and auto_name is None:
        auto_name = config.auto_name()
    with loop.distributed(config.device) if not nested else contextlib.nullcontext(loop.Distributed()) as dist:
        if dist.active and config.cv:
            raise ConfigError("config key 'cv' trains its folds one after another in one process: start it "
                              "without torchrun")
        parent = resolve_parent(config, auto_name)
        if not dist.leader:
            return _follow(config, parent, dist)
        return _finetune(config, parent, nested, dist)


def _follow(config: FinetuneConfig, parent: ResolvedCheckpoint, dist: loop.Distributed) -> FinetuneResult:
    """A torchrun process other than rank 0: the same rows and split, its share of every training batch;
    rank 0 owns the run, validation, the test, the references and the registration."""
    logged = follow_dataset(config.data, _source_options(config), stream=not config.cv)
    job = Job(FollowerContext(), config, parent, logged, Path(), dist)
    outcome = train_model(job, _prepare(job))
    return FinetuneResult("", "", None, outcome.best_epoch, outcome.best_val, {}, outcome.collapsed, "")


def _source_options(config: FinetuneConfig) -> SourceOptions:
    return SourceOptions(n_subjects=config.n_subjects, windows_per_subject=config.windows_per_subject, seed=config.seed)


def _finetune(config: FinetuneConfig, parent: ResolvedCheckpoint, nested: bool,
              dist: loop.Distributed) -> FinetuneResult:
    tags = {WORLD_SIZE_TAG: dist.world_size} if dist.active else {}
    with tracked_run("finetune", config, nested=nested, tags=tags) as ctx, scratch_dir("finetune") as tmp:
        ctx.set_tags(parent.lineage())
        ctx.name_run(f"finetune → {parent.model_name or 'checkpoint'}{FINETUNED_SUFFIX}")
        log.info(f"finetune from {parent.describe()} (run {ctx.run_id})")
        logged = use_dataset(ctx, config.data, _source_options(config), output_dir=config.data_dir,
                             context="training", stream=not config.cv)
        job = Job(ctx, config, parent, logged, Path(tmp), dist)
        if config.split_manifest:
            ctx.set_tags({SPLIT_DIGEST_TAG: manifest_digest(config.split_manifest)})
        ctx.begin_model(job.name, model_type="finetuned", dataset=logged.mlflow_ref)
        evidence = cross_validate(job) if config.cv else _single_split(job)
        version = None
        card = model_card(name=job.name, meta=evidence.meta, parent=parent, dataset=logged, evidence=evidence,
                          config=config)
        ctx.log_table(summary_table({"fine-tuned": evidence.test, **{f"reference: {k}": v.metrics
                                                                     for k, v in evidence.references.items()}}),
                      "evaluation/test_summary.json")
        ctx.log_text(card.text, "model_card.md")
        if config.register:
            version = _register(job, evidence, card)
            if config.promote:
                _promote(ctx, config, job.name, version)
        ctx.describe(f"Fine-tuned `{parent.describe()}` on `{logged.name}` (digest `{logged.digest[:12]}`). "
                     f"{card.headline}. " + (f"Registered as {job.name} version {version}; the model card is "
                                             "model_card.md." if version else "Not registered."))
        outcome = evidence.outcome
        return FinetuneResult(ctx.run_id, job.name, version, outcome.best_epoch, outcome.best_val, evidence.test,
                              outcome.collapsed, evidence.model_info.model_uri, evidence.test_digest,
                              outcome.trainable, job.parent_name,
                              {k: v.metrics for k, v in evidence.references.items()},
                              len(np.unique(evidence.data.subject.get("train", []))))


def resolve_parent(config: FinetuneConfig, auto_name: str | None = None) -> ResolvedCheckpoint:
    """The pretrained checkpoint, resolved and checked before any run exists: a wrong name, path or
    architecture is one line and no FAILED run."""
    configure_tracking(config.tracking_uri)
    return resolve_pretrained(config.checkpoint, auto_name=auto_name, expected_arch=config.expected_arch())


def _single_split(job: Job) -> Evidence:
    data = _prepare(job)
    job.ctx.set_tags({TEST_DIGEST_TAG: data.test_digest})
    outcome = train_model(job, data)
    tested = test_model(job, outcome, data, "fine-tuned")
    test = {**tested.metrics, **interval(job, tested, data.class_names)}
    references = run_references(job, data)
    log_reference_deltas(job.ctx, test, references)
    meta, model_info = log_model(job, outcome, data)
    return Evidence(outcome, data, test, data.test_digest, references, meta, model_info,
                    subjects={s: len(np.unique(v)) for s, v in data.subject.items()},
                    windows={s: len(v) for s, v in data.y.items()})


def _prepare(job: Job) -> LabelledSplits:
    """The splits of the run's dataset: prepared in memory, or (a sharded dataset) streamed."""
    if job.logged.windows is None:
        return prepare_streamed(job.logged.manifest, job.logged.name, job.config, job.parent)
    return prepare_data(job.logged.windows, job.logged.name, job.config, job.parent)


def _promote(ctx: RunContext, config: FinetuneConfig, name: str, version: str) -> None:
    """Evaluate the policy in a child run; a rejection is recorded and reported, not a failure."""
    decision = run_promote(load_config(PromoteConfig, None, {
        "model": name, "version": version, "to": config.promote, "policies": config.policies,
        "experiment": config.experiment, "tracking_uri": config.tracking_uri,
        "run_name": f"promote to {config.promote}"}), nested=True)
    ctx.set_tags({PROMOTE_TARGET_TAG_PREFIX + config.promote: "promoted" if decision.applied else "rejected"})


def _register(job: Job, evidence: Evidence, card) -> str:
    ctx, parent, logged = job.ctx, job.parent, job.logged
    tags = {
        KIND_TAG: "finetuned", ARCH_TAG: parent.arch, RUN_ID_TAG: ctx.run_id, TASK_TAG: evidence.meta["task"],
        PARENT_NAME_TAG: job.parent_name, PARENT_VERSION_TAG: parent.version or "",
        PARENT_URI_TAG: parent.uri, DATASET_NAME_TAG: logged.name, DATASET_DIGEST_TAG: logged.digest,
        **{TEST_METRIC_TAG_PREFIX + k: f"{v:.6g}" for k, v in evidence.test.items() if "." not in k},
        TEST_DIGEST_TAG: evidence.test_digest,
    }
    version = register_from_run(ctx, job.name, source=evidence.model_info.model_uri,
                                model_id=evidence.model_info.model_id, tags=tags, alias=None,
                                description=f"{card.headline}. Model card: run {ctx.run_id}, model_card.md",
                                model_tags={KIND_TAG: "finetuned"})
    decision = claim_candidate(job.name, version, metric=job.config.selection_metric,
                               force=job.config.force_candidate, run_id=ctx.run_id)
    ctx.set_tags({CANDIDATE_TAG: "taken" if decision.taken else "declined", CANDIDATE_REASON_TAG: decision.reason})
    log.info(f"registered {job.name} version {version}; {decision.describe()}")
    log.info(f"load it with mlflow.pyfunc.load_model('models:/{job.name}/{version}')")
    return version
