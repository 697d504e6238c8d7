"""One mapping between the metric names biosig's code, policies and tune use (`test_auroc`, `val_loss`,
`lr`, `stage1.trainable_params`, `reference.features.test_auroc`) and the keys runs log, grouped by
namespace so that the MLflow UI gives each group its own chart section and a run's curves come before
its one-point values:

    train/…  train_loss -> train/loss, lr -> train/lr, train_windows -> train/windows
    val/…    val_auroc -> val/auroc, val_recall.good -> val/recall.good
    test/…   test_auroc -> test/auroc, test_auroc_ci_low -> test/auroc_ci_low
    model/…  backbone_params, best_epoch, best_val_loss, epochs_run, stage<k>.trainable_params / frozen_params
    reference/…, selection/…   reference.features.test_auroc -> reference/features.test_auroc
    system/… (MLflow's system metrics) and every other name: unchanged

`logged_key` is applied where metrics are logged (tracking.metrics.MetricBatcher), `canonical_name`
where they are read back (promotion rules, registry views), so policies and older runs keep working.
"""

from __future__ import annotations

import re
from typing import Mapping

SPLITS = ("train", "val", "test")
MODEL_METRICS = frozenset({"backbone_params", "best_epoch", "best_val_loss", "epochs_run"})
GROUPS = ("reference", "selection")
#: Names whose namespace is not their prefix.
ALIASES = {"lr": "train/lr"}
_STAGE = re.compile(r"stage\d+\.")


def logged_key(name: str) -> str:
    """The key a metric is logged under (`test_auroc` -> `test/auroc`); keys holding a / are kept."""
    if "/" in name:
        return name
    if name in ALIASES:
        return ALIASES[name]
    split, underscore, rest = name.partition("_")
    if underscore and rest and split in SPLITS:
        return f"{split}/{rest}"
    if name in MODEL_METRICS or _STAGE.match(name):
        return f"model/{name}"
    group, dot, rest = name.partition(".")
    if dot and rest and group in GROUPS:
        return f"{group}/{rest}"
    return name


def canonical_name(key: str) -> str:
    """The name rules and code use for a logged key (`test/auroc` -> `test_auroc`); the inverse of
    `logged_key`, and the identity on names logged before namespaces (`test_auroc`)."""
    for name, alias in ALIASES.items():
        if key == alias:
            return name
    namespace, slash, rest = key.partition("/")
    if not slash:
        return key
    if namespace in SPLITS:
        return f"{namespace}_{rest}"
    if namespace == "model":
        return rest
    if namespace in GROUPS:
        return f"{namespace}.{rest}"
    return key


def canonical_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """A run's metrics (`run.data.metrics`) under the names rules use, whichever way they were logged."""
    return {canonical_name(key): value for key, value in metrics.items()}
