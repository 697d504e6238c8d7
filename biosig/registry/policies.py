"""Promotion policies: `registry_policies/*.yaml`, validated on load with errors naming file and line.

    name: ppg-quality                      # defaults to the file name
    applies_to: ["ttm_*_finetuned"]        # glob(s) on registered model names
    sync_stages: true                      # move the deprecated Staging/Production stages in step
    targets:
      staging:
        metrics: ["test_auroc >= 0.75", "test_f1 >= 0.60"]
        min_class_recall: 0.30             # every test_recall.<class> at least this (mode-collapse guard)
      production:
        requires_alias: staging            # the version holds staging now or was promoted to it before
        metrics: ["test_auroc >= 0.85"]
        champion: {metric: test_auroc, min_delta: 0.01}   # beat the current holder on the same test digest
        beats_reference: {reference: features, metric: test_auroc, min_delta: 0.0}  # beat a reference model
                                           # trained on the same split (finetune reference=[features])
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import operator
import re
from pathlib import Path
from typing import Any, Callable

import yaml

from biosig.errors import ConfigError
from biosig.files import load_yaml, read_text
from biosig.tracking.metric_names import canonical_name

TARGETS = ("staging", "production")
OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt, "==": operator.eq}
_RULE = re.compile(r"^\s*(?P<metric>[A-Za-z_][\w.\-/]*)\s*(?P<op>[<>=!]+)\s*(?P<value>\S+)\s*$")
_TOP_KEYS = {"name", "description", "applies_to", "sync_stages", "targets"}
_TARGET_KEYS = {"metrics", "min_class_recall", "requires_alias", "champion", "beats_reference"}
_CHAMPION_KEYS = {"metric", "min_delta"}
_REFERENCE_KEYS = {"reference", "metric", "min_delta"}
REFERENCES = ("features", "scratch")


@dataclasses.dataclass(frozen=True)
class MetricRule:
    metric: str
    op: str
    threshold: float

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.threshold:g}"

    def passes(self, value: float) -> bool:
        return OPERATORS[self.op](value, self.threshold)


@dataclasses.dataclass(frozen=True)
class Champion:
    metric: str
    min_delta: float = 0.0


@dataclasses.dataclass(frozen=True)
class BeatsReference:
    """The version's run must reach `reference.<reference>.<metric>` + min_delta on `metric`."""

    reference: str
    metric: str = "test_auroc"
    min_delta: float = 0.0


@dataclasses.dataclass(frozen=True)
class TargetRules:
    metrics: tuple[MetricRule, ...] = ()
    min_class_recall: float | None = None
    requires_alias: str | None = None
    champion: Champion | None = None
    beats_reference: BeatsReference | None = None


@dataclasses.dataclass(frozen=True)
class Policy:
    name: str
    path: Path
    applies_to: tuple[str, ...]
    targets: dict[str, TargetRules]
    sync_stages: bool = False
    description: str = ""

    def applies(self, model_name: str) -> bool:
        return any(fnmatch.fnmatchcase(model_name, pattern) for pattern in self.applies_to)

    @property
    def is_default(self) -> bool:
        return self.applies_to == ("*",)


class _Lines:
    """Line numbers of the YAML nodes, by key path, for error messages."""

    def __init__(self, text: str) -> None:
        self.lines: dict[tuple, int] = {}
        node = yaml.compose(text)
        if node is not None:
            self._walk(node, ())

    def _walk(self, node: yaml.Node, path: tuple) -> None:
        self.lines.setdefault(path, node.start_mark.line + 1)  # a key's own line wins over its value's
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                self.lines[(*path, key.value)] = key.start_mark.line + 1
                self._walk(value, (*path, key.value))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._walk(item, (*path, i))

    def __call__(self, *path: Any) -> int:
        while path and path not in self.lines:
            path = path[:-1]
        return self.lines.get(path, 1)


def load_policy(path: str | Path) -> Policy:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"policy file not found: {path}")
    text = read_text(path, "policy file")
    try:
        data = load_yaml(text)
        lines = _Lines(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None

    def fail(message: str, *key: Any) -> ConfigError:
        return ConfigError(f"{path}:{lines(*key)}: {message}")

    if not isinstance(data, dict):
        raise fail("a policy must be a mapping with applies_to and targets")
    _check_keys(data, _TOP_KEYS, "the policy", fail, ())
    for required in ("applies_to", "targets"):
        if required not in data:
            raise fail(f"missing required key '{required}'")
    applies_to = data["applies_to"]
    applies_to = [applies_to] if isinstance(applies_to, str) else applies_to
    if not applies_to or not all(isinstance(p, str) and p for p in applies_to):
        raise fail("applies_to must be a glob or a list of globs on model names", "applies_to")
    if not isinstance(data["targets"], dict) or not data["targets"]:
        raise fail(f"targets must map {' / '.join(TARGETS)} to rules", "targets")
    targets = {}
    for target, rules in data["targets"].items():
        if target not in TARGETS:
            raise fail(f"unknown target '{target}' (allowed: {', '.join(TARGETS)})", "targets", target)
        targets[target] = _target_rules(rules or {}, target, fail)
    return Policy(name=str(data.get("name") or path.stem), path=path, applies_to=tuple(applies_to),
                  targets=targets, sync_stages=_bool(data.get("sync_stages", False), fail, ("sync_stages",)),
                  description=str(data.get("description", "")))


def _target_rules(rules: Any, target: str, fail) -> TargetRules:
    where = ("targets", target)
    if not isinstance(rules, dict):
        raise fail(f"target '{target}' must be a mapping of rules", *where)
    _check_keys(rules, _TARGET_KEYS, f"target '{target}'", fail, where)
    metrics = rules.get("metrics", [])
    if not isinstance(metrics, list):
        raise fail(f"metrics of target '{target}' must be a list like [\"test_auroc >= 0.8\"]", *where, "metrics")
    parsed = tuple(_metric_rule(rule, fail, (*where, "metrics", i)) for i, rule in enumerate(metrics))
    recall = rules.get("min_class_recall")
    if recall is not None and not (_is_number(recall) and 0 <= recall <= 1):
        raise fail(f"min_class_recall must be a number in [0, 1], got {recall!r}", *where, "min_class_recall")
    alias = rules.get("requires_alias")
    if alias is not None and alias not in TARGETS:
        raise fail(f"requires_alias must be one of {', '.join(TARGETS)}, got {alias!r}", *where, "requires_alias")
    champion = rules.get("champion")
    if champion is not None:
        if not isinstance(champion, dict) or "metric" not in champion:
            raise fail("champion must be a mapping with 'metric' (and optional 'min_delta')", *where, "champion")
        _check_keys(champion, _CHAMPION_KEYS, "champion", fail, (*where, "champion"))
        delta = champion.get("min_delta", 0.0)
        if not _is_number(delta) or delta < 0:
            raise fail(f"champion min_delta must be a number >= 0, got {delta!r}", *where, "champion", "min_delta")
        champion = Champion(canonical_name(str(champion["metric"])), float(delta))
    beats = _beats_reference(rules.get("beats_reference"), fail, (*where, "beats_reference"))
    if not parsed and recall is None and champion is None and beats is None:
        raise fail(f"target '{target}' has no thresholds: give metrics, min_class_recall, champion or "
                   "beats_reference", *where)
    return TargetRules(parsed, None if recall is None else float(recall), alias, champion, beats)


def _beats_reference(rule: Any, fail, where: tuple) -> BeatsReference | None:
    if rule is None:
        return None
    if not isinstance(rule, dict) or "reference" not in rule:
        raise fail("beats_reference must be a mapping with 'reference' (features or scratch) and optional "
                   "'metric' and 'min_delta'", *where)
    _check_keys(rule, _REFERENCE_KEYS, "beats_reference", fail, where)
    if rule["reference"] not in REFERENCES:
        raise fail(f"beats_reference reference must be one of {', '.join(REFERENCES)}, got {rule['reference']!r}",
                   *where, "reference")
    metric = rule.get("metric", "test_auroc")
    metric = canonical_name(metric) if isinstance(metric, str) else metric
    if not isinstance(metric, str) or not metric.startswith("test_"):
        raise fail(f"beats_reference metric must be a test_* metric such as test_auroc, got {metric!r}", *where,
                   "metric")
    delta = rule.get("min_delta", 0.0)
    if not _is_number(delta) or not math.isfinite(delta):
        raise fail(f"beats_reference min_delta must be a number, got {delta!r}", *where, "min_delta")
    return BeatsReference(rule["reference"], metric, float(delta))


def _metric_rule(rule: Any, fail, where: tuple) -> MetricRule:
    m = _RULE.match(rule) if isinstance(rule, str) else None
    if not m:
        raise fail(f"metric rule {rule!r} must look like 'test_auroc >= 0.8'", *where)
    if m["op"] not in OPERATORS:
        raise fail(f"unknown operator '{m['op']}' in {rule!r} (allowed: {' '.join(OPERATORS)})", *where)
    try:
        threshold = float(m["value"])
    except ValueError:
        raise fail(f"threshold {m['value']!r} in {rule!r} is not a number", *where) from None
    return MetricRule(canonical_name(m["metric"]), m["op"], threshold)  # test/auroc and test_auroc alike


def _check_keys(mapping: dict, allowed: set[str], what: str, fail, where: tuple) -> None:
    for key in mapping:
        if key not in allowed:
            raise fail(f"unknown key '{key}' in {what} (allowed: {', '.join(sorted(allowed))})", *where, key)


def _bool(value: Any, fail, where: tuple) -> bool:
    if not isinstance(value, bool):
        raise fail(f"{where[-1]} must be true or false, got {value!r}", *where)
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def default_policies_dir() -> Path:
    """./registry_policies when present, else the project's own (next to the biosig package)."""
    local = Path("registry_policies")
    if local.is_dir():
        return local
    return Path(__file__).resolve().parents[2] / "registry_policies"


def load_policies(location: str | Path | None = None) -> list[Policy]:
    """Every *.yaml policy of a directory, or the one file given."""
    location = Path(location) if location else default_policies_dir()
    if location.is_file():
        return [load_policy(location)]
    if not location.is_dir():
        raise ConfigError(f"policy location not found: {location}")
    policies = [load_policy(p) for p in sorted(location.glob("*.y*ml"))]
    if not policies:
        raise ConfigError(f"no *.yaml policies in {location}")
    names = [p.name for p in policies]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"policy names {dupes} are used by more than one file in {location}")
    return policies


def select_policy(policies: list[Policy], model_name: str, requested: str = "") -> Policy:
    """The requested policy (which must apply), else the single specific one that applies, else default."""
    if requested:
        by_name = {p.name: p for p in policies}
        if requested not in by_name:
            raise ConfigError(f"no policy named '{requested}'; available: {', '.join(sorted(by_name))}")
        policy = by_name[requested]
        if not policy.applies(model_name):
            raise ConfigError(f"policy '{requested}' ({policy.path}) applies to {list(policy.applies_to)}, "
                              f"not to model '{model_name}'")
        return policy
    specific = [p for p in policies if p.applies(model_name) and not p.is_default]
    if len(specific) > 1:
        raise ConfigError(f"policies {[p.name for p in specific]} all apply to '{model_name}': pass policy=NAME")
    if specific:
        return specific[0]
    defaults = [p for p in policies if p.is_default]
    if not defaults:
        raise ConfigError(f"no policy applies to '{model_name}' and there is no default (applies_to: '*')")
    return defaults[0]
