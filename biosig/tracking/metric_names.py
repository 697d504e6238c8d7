"""One mapping between the metric names biosig's code, policies and tune use (`test_auroc`, `val_loss`,
`lr`, `best_epoch`, `reference.features.test_auroc`) and the keys runs log. The MLflow UI gives each
namespace its own chart section and orders sections alphabetically (checked on MLflow 3.17's run page), so a
run logs into `test/`, `train/` and `val/` only: the headline results first, then the curves, each result
beside the curves it comes from; sizes (windows, parameters) are run params, not metrics:

    test/…   test_auroc -> test/auroc, test_auroc_ci_low -> test/auroc_ci_low,
             reference.features.test_auroc -> test/reference.features.auroc,
             reference.features.delta_test_auroc -> test/reference.features.delta_auroc
    train/…  train_loss -> train/loss, lr -> train/lr, stage -> train/stage, best_epoch -> train/best_epoch,
             epochs_run -> train/epochs_run
    val/…    val_auroc -> val/auroc, val_recall.good -> val/recall.good, best_val_loss -> val/best_loss,
             selection.val_auroc.logreg -> val/selection.auroc.logreg
    probe/…, system/… (MLflow's system metrics) and every other name: unchanged

`logged_key` is applied where metrics are logged (tracking.metrics.MetricBatcher), `canonical_name`
where they are read back (promotion rules, registry views), so policies keep working; runs logged before
(bare names, or the `model/`, `reference/`, `selection/` namespaces) read back the same.
"""

from __future__ import annotations

import re
from typing import Mapping

SPLITS = ("train", "val", "test")
#: Names whose namespace is not their prefix: a fit's results shown beside its curves.
ALIASES = {"lr": "train/lr", "stage": "train/stage", "best_epoch": "train/best_epoch",
           "epochs_run": "train/epochs_run"}
#: (name pattern, key format) and their inverses, tried before the split prefixes.
_TO_KEY = [(re.compile(r"^reference\.(?P<ref>[^./]+)\.delta_test_(?P<m>.+)$"), "test/reference.{ref}.delta_{m}"),
           (re.compile(r"^reference\.(?P<ref>[^./]+)\.test_(?P<m>.+)$"), "test/reference.{ref}.{m}"),
           (re.compile(r"^selection\.val_(?P<m>.+)$"), "val/selection.{m}"),
           (re.compile(r"^best_val_(?P<m>.+)$"), "val/best_{m}")]
_TO_NAME = [(re.compile(r"^test/reference\.(?P<ref>[^./]+)\.delta_(?P<m>.+)$"), "reference.{ref}.delta_test_{m}"),
            (re.compile(r"^test/reference\.(?P<ref>[^./]+)\.(?P<m>.+)$"), "reference.{ref}.test_{m}"),
            (re.compile(r"^val/selection\.(?P<m>.+)$"), "selection.val_{m}"),
            (re.compile(r"^val/best_(?P<m>.+)$"), "best_val_{m}")]
#: Sizes (windows, parameters) are run params under this prefix: `size.train_windows`, `size.stage1.trainable_params`.
SIZE_PARAM_PREFIX = "size."
#: Namespaces of runs logged before the layout above: read back, never written.
LEGACY_GROUPS = ("reference", "selection")


def _rewrite(text: str, rules: list[tuple[re.Pattern, str]]) -> str | None:
    for pattern, template in rules:
        if match := pattern.match(text):
            return template.format(**match.groupdict())
    return None


def logged_key(name: str) -> str:
    """The key a metric is logged under (`test_auroc` -> `test/auroc`); keys holding a / are kept."""
    if "/" in name:
        return name
    if name in ALIASES:
        return ALIASES[name]
    if (key := _rewrite(name, _TO_KEY)) is not None:
        return key
    split, underscore, rest = name.partition("_")
    if underscore and rest and split in SPLITS:
        return f"{split}/{rest}"
    return name


def canonical_name(key: str) -> str:
    """The name rules and code use for a logged key (`test/auroc` -> `test_auroc`); the inverse of
    `logged_key`, and the identity on names logged before namespaces (`test_auroc`)."""
    for name, alias in ALIASES.items():
        if key == alias:
            return name
    if (name := _rewrite(key, _TO_NAME)) is not None:
        return name
    namespace, slash, rest = key.partition("/")
    if not slash:
        return key
    if namespace in SPLITS:
        return f"{namespace}_{rest}"
    if namespace == "model":  # before: one-off sizes and results
        return rest
    if namespace in LEGACY_GROUPS:
        return f"{namespace}.{rest}"
    return key


def canonical_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """A run's metrics (`run.data.metrics`) under the names rules use, whichever way they were logged."""
    return {canonical_name(key): value for key, value in metrics.items()}
