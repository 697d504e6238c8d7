"""Promotion by rules: evaluate a registered version against a policy, move the alias (and the legacy
stage) only when every rule passes, and record every decision, passed or failed.

Aliases `staging`/`production` are the truth. Each evaluation leaves version tags
`promotion.<target>.{decision,reason,metrics,policy,at,run_id}` and one `promote` run in MLflow: that run
table is the audit log (`biosig registry history NAME`). Evaluation and alias move happen under a lock
on the registry (a file lock next to a SQLite store, an advisory lock on PostgreSQL), so two
simultaneous promotions to one target are serialised and the second is judged against the first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import math
import time
import warnings
from typing import TYPE_CHECKING, Any, Iterator

from mlflow.tracking import MlflowClient

from biosig.errors import ConfigError, DataError
from biosig.logs import get_logger
from biosig.registry.discovery import resolve_version as find_version
from biosig.registry.policies import BeatsReference, Policy, TargetRules, load_policies, select_policy
from biosig.registry.publish import CANDIDATE_ALIAS
from biosig.tracking.metric_names import canonical_metrics
from biosig.tracking.run import configure_tracking, tracked_run
from biosig.tracking.tags import (
    ERROR_TAG,
    PROMOTE_DECIDED_AT_TAG,
    PROMOTE_DECISION_TAG,
    PROMOTE_MODEL_TAG,
    PROMOTE_POLICY_TAG,
    PROMOTE_REASON_TAG,
    PROMOTE_REPLACED_BY_TAG,
    PROMOTE_TARGET_TAG,
    PROMOTE_VERSION_TAG,
    TEST_DIGEST_TAG,
)

log = get_logger(__name__)

if TYPE_CHECKING:
    from biosig.commands.promote import PromoteConfig

STAGES = {"staging": "Staging", "production": "Production"}


@dataclasses.dataclass
class RuleResult:
    rule: str
    required: str
    actual: str
    passed: bool


@dataclasses.dataclass
class Decision:
    model: str
    version: str
    target: str
    policy: Policy
    results: list[RuleResult]
    metrics: dict[str, float]
    applied: bool = False
    run_id: str = ""
    previous: str = ""  # the version that held the alias before this promotion moved it

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def reason(self) -> str:
        failed = [f"{r.rule}: {r.actual} (required {r.required})" for r in self.results if not r.passed]
        return "; ".join(failed) if failed else "all rules passed"

    def table(self) -> str:
        rows = [("rule", "required", "actual", "result")] + [
            (r.rule, r.required, r.actual, "pass" if r.passed else "FAIL") for r in self.results]
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        head = (f"{self.model} version {self.version} -> {self.target} under policy '{self.policy.name}' "
                f"({self.policy.path}): {'PASS' if self.passed else 'FAIL'}")
        return "\n".join([head, *lines])


def judge(client: MlflowClient, policy: Policy, name: str, version: str, target: str) -> Decision:
    """Check every rule of `policy.targets[target]` against the version's source-run metrics."""
    if target not in policy.targets:
        raise ConfigError(f"policy '{policy.name}' ({policy.path}) has no rules for target '{target}'; "
                          f"it defines {', '.join(policy.targets)}")
    rules: TargetRules = policy.targets[target]
    mv = client.get_model_version(name, version)
    metrics = _run_metrics(client, mv)
    results = [_metric_result(rule, metrics) for rule in rules.metrics]
    if rules.min_class_recall is not None:
        results.append(_recall_result(rules.min_class_recall, metrics))
    if rules.requires_alias:
        results.append(_prerequisite_result(client, name, mv, rules.requires_alias))
    if rules.champion:
        results.append(_champion_result(client, name, mv, target, rules.champion, metrics))
    if rules.beats_reference:
        results.append(_reference_result(rules.beats_reference, metrics))
    return Decision(name, str(mv.version), target, policy, results, metrics)


def _run_metrics(client: MlflowClient, mv) -> dict[str, float]:
    if not mv.run_id:
        raise DataError(f"{mv.name} version {mv.version} has no source run to read test metrics from")
    metrics = canonical_metrics(client.get_run(mv.run_id).data.metrics)
    if not any(k.startswith("test_") for k in metrics):
        raise DataError(f"{mv.name} version {mv.version}: its run {mv.run_id} logged no test_* metrics "
                        "(was it produced by `biosig finetune`?)")
    return metrics


def _metric_result(rule, metrics: dict[str, float]) -> RuleResult:
    value = metrics.get(rule.metric)
    if value is None:
        return RuleResult(str(rule), f"{rule.op} {rule.threshold:g}", "missing from the run", False)
    ok = not math.isnan(value) and rule.passes(value)
    return RuleResult(str(rule), f"{rule.op} {rule.threshold:g}", f"{value:.4f}", ok)


def _recall_result(threshold: float, metrics: dict[str, float]) -> RuleResult:
    recalls = {k[len("test_recall."):]: v for k, v in metrics.items() if k.startswith("test_recall.")}
    if not recalls:
        return RuleResult("min_class_recall", f">= {threshold:g}", "no test_recall.<class> metrics", False)
    worst = min(recalls, key=recalls.get)
    return RuleResult("min_class_recall", f">= {threshold:g}", f"{recalls[worst]:.4f} ({worst})",
                      recalls[worst] >= threshold)


def _prerequisite_result(client: MlflowClient, name: str, mv, alias: str) -> RuleResult:
    holder = client.get_registered_model(name).aliases.get(alias)
    held_before = mv.tags.get(f"promotion.{alias}.decision") == "promoted"
    if holder is not None and str(holder) == str(mv.version):
        actual = f"holds @{alias}"
    elif held_before:
        actual = f"was promoted to {alias} at {mv.tags.get(f'promotion.{alias}.at', '?')}"
    else:
        actual = f"never held @{alias}"
    return RuleResult(f"requires_alias {alias}", f"@{alias} now or before", actual,
                      actual.startswith(("holds", "was promoted")))


def _champion_result(client: MlflowClient, name: str, mv, target: str, champion, metrics) -> RuleResult:
    rule = f"champion {champion.metric} +{champion.min_delta:g}"
    holder = client.get_registered_model(name).aliases.get(target)
    if holder is None or str(holder) == str(mv.version):
        return RuleResult(rule, "beat the current holder", f"no other @{target} holder", True)
    current = client.get_model_version(name, str(holder))
    ours, theirs = mv.tags.get(TEST_DIGEST_TAG), current.tags.get(TEST_DIGEST_TAG)
    if not ours or ours != theirs:
        return RuleResult(rule, f"same test digest as v{holder}",
                          f"not comparable: test digest {(ours or 'missing')[:12]} vs {(theirs or 'missing')[:12]}",
                          False)
    value = metrics.get(champion.metric)
    best = canonical_metrics(client.get_run(current.run_id).data.metrics).get(champion.metric) if current.run_id else None
    if value is None or best is None:
        return RuleResult(rule, f">= v{holder} + {champion.min_delta:g}", f"{champion.metric} missing", False)
    required = best + champion.min_delta
    return RuleResult(rule, f">= {required:.4f} (v{holder} {best:.4f} + {champion.min_delta:g})", f"{value:.4f}",
                      value >= required)


def _reference_result(rule: BeatsReference, metrics: dict[str, float]) -> RuleResult:
    name = f"beats_reference {rule.reference} {rule.metric} {rule.min_delta:+g}"
    ours, theirs = metrics.get(rule.metric), metrics.get(f"reference.{rule.reference}.{rule.metric}")
    if theirs is None or ours is None:
        return RuleResult(name, f"reference.{rule.reference}.{rule.metric} + {rule.min_delta:g}",
                          f"the run has no {rule.reference} reference: fine-tune with reference=[{rule.reference}] "
                          "to measure it on the same split", False)
    required = theirs + rule.min_delta
    ok = math.isfinite(ours) and math.isfinite(theirs) and ours >= required
    return RuleResult(name, f">= {required:.4f} ({rule.reference} {theirs:.4f} {rule.min_delta:+g})", f"{ours:.4f}", ok)


def promote(config: PromoteConfig, *, nested: bool = False) -> Decision:
    """Evaluate `config.model` (version `config.version`, default @candidate) against its policy for
    `config.to`; move the alias if every rule passes. A dry run evaluates and prints only; otherwise one
    audit run per call records the decision."""
    uri = configure_tracking(config.tracking_uri)
    client = MlflowClient()
    policy = select_policy(load_policies(config.policies or None), config.model, config.policy)
    version = resolve_version(client, config.model, config.version)
    if config.dry_run:
        decision = judge(client, policy, config.model, version, config.to)
        log.info(decision.table())
        log.info("dry run: nothing changed")
        return decision
    tags = {PROMOTE_MODEL_TAG: config.model, PROMOTE_VERSION_TAG: version,
            PROMOTE_TARGET_TAG: config.to, PROMOTE_POLICY_TAG: policy.name}
    with tracked_run("promote", config, tags=tags, nested=nested) as ctx:
        ctx.name_run(f"promote {config.model}/{version} → {config.to}")
        with promotion_lock(uri, config.model):
            decision = judge(client, policy, config.model, version, config.to)
            decision.run_id = ctx.run_id
            if decision.passed:
                _apply(client, decision)
            _record(client, decision)
            # under the lock: concurrent promotions are ordered by when they decided, not when they started
            ctx.set_tags({PROMOTE_DECIDED_AT_TAG: str(time.time_ns() // 1_000_000)})
        ctx.set_tags({PROMOTE_DECISION_TAG: "promoted" if decision.applied else "rejected",
                      PROMOTE_REASON_TAG: decision.reason[:5000]})
        ctx.log_dict(_decision_record(decision), "promotion/decision.json")
        log.info(decision.table())
        holder = str(client.get_registered_model(config.model).aliases.get(config.to, ""))
        if decision.applied and holder != version:  # another promotion moved the alias after ours
            ctx.set_tags({PROMOTE_REPLACED_BY_TAG: holder})
            log.info(f"promoted, then replaced: {config.model} version {version} took @{config.to}, but version "
                     f"{holder or '(none)'} holds it now (a later promotion; see `biosig registry history`)")
        else:
            log.info(f"{'promoted' if decision.applied else 'rejected'}: {config.model} version {version} "
                     f"{'now holds' if decision.applied else 'does not get'} @{config.to}"
                     + (f" (replacing version {decision.previous})" if decision.previous else ""))
        return decision


def resolve_version(client: MlflowClient, name: str, version: str) -> str:
    """`version` is a number, an alias (with or without @) or empty (the version holding @candidate)."""
    ref = version.lstrip("@")
    return str(find_version(client, f"{name}/{ref}" if ref.isdigit() else f"{name}@{ref}" if ref else name,
                       bare=CANDIDATE_ALIAS).version)


def _apply(client: MlflowClient, decision: Decision) -> None:
    """Move the alias (under the promotion lock); the replaced holder's tags say it no longer holds it."""
    previous = str(client.get_registered_model(decision.model).aliases.get(decision.target, ""))
    client.set_registered_model_alias(decision.model, decision.target, decision.version)
    if previous and previous != decision.version:
        decision.previous = previous
        prefix = f"promotion.{decision.target}"
        at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        for key, value in {"holds": "false", "replaced_by": decision.version, "replaced_at": at,
                           "replaced_by_run": decision.run_id}.items():
            client.set_model_version_tag(decision.model, previous, f"{prefix}.{key}", value)
    if decision.policy.sync_stages:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # stages are deprecated; users still look for them
            client.transition_model_version_stage(decision.model, decision.version, STAGES[decision.target],
                                                  archive_existing_versions=True)
    decision.applied = True


def _record(client: MlflowClient, decision: Decision) -> None:
    prefix = f"promotion.{decision.target}"
    record = _decision_record(decision)
    for key, value in {"decision": record["decision"], "reason": decision.reason[:5000],
                       "metrics": json.dumps(record["rules"])[:5000], "policy": f"{decision.policy.name}",
                       "at": record["at"], "run_id": decision.run_id,
                       **({"holds": "true"} if decision.applied else {}),
                       **({"replaced": decision.previous} if decision.previous else {})}.items():
        client.set_model_version_tag(decision.model, decision.version, f"{prefix}.{key}", value)


def _decision_record(decision: Decision) -> dict[str, Any]:
    return {
        "model": decision.model, "version": decision.version, "target": decision.target,
        "decision": "promoted" if decision.applied else "rejected", "reason": decision.reason,
        "policy": decision.policy.name, "policy_file": str(decision.policy.path),
        "rules": [dataclasses.asdict(r) for r in decision.results], "previous_holder": decision.previous or None,
        "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


@contextlib.contextmanager
def promotion_lock(tracking_uri: str, name: str, timeout_s: float = 120.0) -> Iterator[None]:
    """Serialise promotions of one model across processes sharing the store."""
    if tracking_uri.startswith("sqlite:///"):
        from filelock import FileLock

        with FileLock(f"{tracking_uri[len('sqlite:///'):]}.promote.lock", timeout=timeout_s):
            yield
    elif tracking_uri.startswith("postgresql"):
        import sqlalchemy

        key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
        engine = sqlalchemy.create_engine(tracking_uri, poolclass=sqlalchemy.pool.NullPool)
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": key})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
    else:  # a tracking server: no shared lock through MLflow's API; alias writes are last-writer-wins
        yield


def promotion_history(client: MlflowClient, name: str) -> list[dict[str, Any]]:
    """Every recorded promotion attempt for `name`, oldest first (the audit log)."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, filter_string=f"tags.`biosig.promote.model` = '{name}'",
                              order_by=["attributes.start_time ASC"], max_results=5000)
    runs = sorted(runs, key=_decided_at)  # a failed attempt (no decision) counts from its start
    return [{"at": dt.datetime.fromtimestamp(_decided_at(r) / 1000, dt.timezone.utc).isoformat(timespec="seconds"),
             "version": r.data.tags.get(PROMOTE_VERSION_TAG, ""),
             "target": r.data.tags.get(PROMOTE_TARGET_TAG, ""),
             "decision": r.data.tags.get(PROMOTE_DECISION_TAG, r.info.status.lower()),
             "policy": r.data.tags.get(PROMOTE_POLICY_TAG, ""),
             "reason": r.data.tags.get(PROMOTE_REASON_TAG, r.data.tags.get(ERROR_TAG, "")),
             "run_id": r.info.run_id} for r in runs]


def _decided_at(run) -> int:
    return int(run.data.tags.get(PROMOTE_DECIDED_AT_TAG) or run.info.start_time)
