"""Human-readable registry views: `biosig registry show NAME` and `biosig registry history NAME`."""

from __future__ import annotations

from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from biosig.errors import DataError
from biosig.registry.promotion import promotion_history
from biosig.tracking.metric_names import canonical_metrics
from biosig.tracking.tags import DATASET_NAME_TAG, PARENT_NAME_TAG, PARENT_VERSION_TAG

KEY_METRICS = ("test_auroc", "test_f1", "test_balanced_accuracy", "test_ece")


def format_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    cells = [[str(row.get(c, "")) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def model_versions(client: MlflowClient, name: str) -> list[dict[str, Any]]:
    """One row per version: aliases, stage, key test metrics, parent checkpoint, dataset, run."""
    try:
        model = client.get_registered_model(name)  # aliases live here, not on search results
    except MlflowException:
        raise DataError(f"no registered model named '{name}'") from None
    aliases: dict[str, list[str]] = {}
    for alias, version in model.aliases.items():
        aliases.setdefault(str(version), []).append(alias)
    rows = []
    for mv in client.search_model_versions(f"name = '{name}'", order_by=["version_number DESC"], max_results=1000):
        metrics = canonical_metrics(client.get_run(mv.run_id).data.metrics) if mv.run_id else {}
        parent = mv.tags.get(PARENT_NAME_TAG, "")
        rows.append({
            "version": mv.version, "aliases": ",".join(sorted(aliases.get(str(mv.version), []))),
            "stage": mv.current_stage,
            **{m.removeprefix("test_"): f"{metrics[m]:.3f}" for m in KEY_METRICS if m in metrics},
            "parent": f"{parent}/{mv.tags.get(PARENT_VERSION_TAG, '')}" if parent else "",
            "dataset": mv.tags.get(DATASET_NAME_TAG, ""), "run": mv.run_id or "",
        })
    return rows


def show(client: MlflowClient, name: str) -> str:
    rows = model_versions(client, name)
    columns = ["version", "aliases", "stage", *[m.removeprefix("test_") for m in KEY_METRICS], "parent", "dataset",
               "run"]
    return f"{name}: {len(rows)} version(s)\n" + format_table(rows, columns)


def history(client: MlflowClient, name: str) -> str:
    model_versions(client, name)  # an unknown model is an error, not an empty table
    rows = promotion_history(client, name)
    if not rows:
        return f"{name}: no promotion has been attempted"
    return f"{name}: {len(rows)} promotion attempt(s)\n" + format_table(
        rows, ["at", "version", "target", "decision", "policy", "reason", "run_id"])


def render(view: str, name: str, tracking_uri: str = "") -> str:
    """`show` or `history` of `name` in the configured tracking store (the CLI's registry views)."""
    from biosig.tracking.run import configure_tracking

    configure_tracking(tracking_uri)
    return {"show": show, "history": history}[view](MlflowClient(), name)


def run_metrics(run_id: str | None) -> dict[str, float]:
    """The latest value of every metric of a run (that registered a version; empty without one)."""
    if not run_id:
        return {}
    try:
        return dict(MlflowClient().get_run(run_id).data.metrics)
    except MlflowException:
        return {}
