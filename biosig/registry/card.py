"""Model cards: one markdown page per fine-tuned version, logged as `model_card.md` in the run that
registered it, with its headline as the version description. What a reviewer needs before promoting:
task and classes, parent checkpoint, data (name, digest, subjects and windows per split), metrics with
their subject-bootstrap intervals, the reference models and the deltas to them, calibration (ECE),
per-class recall, and the known limits of the evidence."""

from __future__ import annotations

import dataclasses
import math
from typing import Any


@dataclasses.dataclass
class ModelCard:
    headline: str
    text: str


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.3f}"


def _with_interval(metrics: dict[str, float], metric: str) -> str:
    low, high = metrics.get(f"{metric}_ci_low"), metrics.get(f"{metric}_ci_high")
    interval = f" [{_fmt(low)}, {_fmt(high)}]" if low is not None and math.isfinite(low) else ""
    return f"{_fmt(metrics.get(metric))}{interval}"


def model_card(*, name: str, meta: dict[str, Any], parent, dataset, evidence, config) -> ModelCard:
    """`evidence` is the finetune command's Evidence (test metrics, references, folds, split sizes)."""
    test = evidence.test
    scheme = (f"{evidence.folds}-fold subject cross-validation (cv={config.cv}), test predictions of all folds pooled;"
              " the registered model is refit on all subjects with the same settings" if evidence.folds
              else "one subject-level train/val/test split")
    headline = (f"{meta['task']} classifier ({', '.join(meta['class_names'])}) fine-tuned from {parent.uri}: "
                f"test AUROC {_with_interval(test, 'auroc')}, F1 {_fmt(test.get('f1'))} "
                f"({'cross-validated' if evidence.folds else 'one split'}; 95 % subject-bootstrap interval)")
    refs = evidence.references
    if refs:
        deltas = ", ".join(f"{n} {_fmt(r.metrics.get('auroc'))} (delta {test['auroc'] - r.metrics['auroc']:+.3f})"
                           for n, r in refs.items())
        headline += f"; references on the same split: {deltas}"
    lines = [
        f"# {name}", "", headline, "",
        "## Task", f"- task: {meta['task']}; classes: {', '.join(meta['class_names'])}",
        f"- input: channels {meta['input']['channels']} at {meta['input']['fs']:g} Hz, "
        f"{meta['input']['n_samples']} samples per window; the model uses {meta['channels']}",
        "", "## Parent checkpoint", f"- {parent.describe()}",
        "", "## Data", f"- dataset: {dataset.name} (digest `{dataset.digest[:16]}`)",
        f"- evaluation: {scheme}; test digest `{evidence.test_digest[:16]}`",
        *(f"- {split}: {evidence.subjects.get(split, 0)} subjects, {evidence.windows.get(split, 0)} windows"
          for split in evidence.windows),
        "", "## Test metrics (95 % subject-bootstrap interval)", "| metric | value |", "|---|---|",
        *(f"| {m} | {_with_interval(test, m)} |" for m in ("auroc", "f1", "balanced_accuracy")),
        f"| ece (calibration) | {_fmt(test.get('ece'))} |",
        *(f"| recall {k[len('recall.'):]} | {_fmt(v)} |" for k, v in test.items() if k.startswith("recall.")),
    ]
    if evidence.folds:
        lines += ["", f"Per-fold AUROC: mean {_fmt(test.get('auroc_mean'))}, sd {_fmt(test.get('auroc_std'))}."]
    lines += ["", "## Reference models (same split)"]
    if refs:
        lines += ["| model | AUROC | F1 | delta AUROC (this - reference) |", "|---|---|---|---|"]
        lines += [f"| {n} | {_with_interval(r.metrics, 'auroc')} | {_fmt(r.metrics.get('f1'))} | "
                  f"{test['auroc'] - r.metrics['auroc']:+.3f} |" for n, r in refs.items()]
    else:
        lines.append("None were trained: pass `reference=[features, scratch]` to measure this model against a "
                     "window-feature baseline and the same architecture from scratch.")
    lines += ["", "## Known limits", *_limits(test, evidence, config)]
    return ModelCard(headline[:4900], "\n".join(lines) + "\n")


def _limits(test: dict[str, float], evidence, config) -> list[str]:
    out = []
    n_test = evidence.subjects.get("test (pooled over folds)" if evidence.folds else "test", 0)
    if n_test < 10:
        out.append(f"- the test evidence rests on {n_test} subjects: intervals are wide and subject-specific "
                   "effects dominate")
    low = test.get("auroc_ci_low")
    if low is not None and math.isfinite(low):
        out.append(f"- with 95 % confidence the test AUROC is above {low:.3f}, not the point value")
    for name, ref in evidence.references.items():
        if test["auroc"] < ref.metrics["auroc"]:
            out.append(f"- the `{name}` reference beats this model on test AUROC "
                       f"({ref.metrics['auroc']:.3f} vs {test['auroc']:.3f}): prefer it unless other reasons hold")
    if test.get("ece", 0.0) > 0.1:
        out.append(f"- probabilities are not calibrated (ECE {test['ece']:.3f}): run `biosig evaluate "
                   "calibration=temperature` before using them as risks")
    out.append("- trained and tested on one data source; performance on other devices, sites or populations "
               "is unknown")
    return out


def hub_card(*, name: str, version: str, meta: dict[str, Any], metrics: dict[str, float], hf_class: str,
             run_id: str) -> str:
    """README.md of an exported Hugging Face folder: the Hub's YAML header (library_name, tags, base model,
    datasets by name with their digest as model-index revision, metrics) and a body generated from what
    biosig recorded for the version (input contract, normalisation, provenance, limits)."""
    import yaml

    provenance = meta.get("provenance", {})
    backbone = meta["backbone"]
    dataset, digest = provenance.get("dataset"), provenance.get("dataset_digest")
    imported = str(provenance.get("imported_from") or "")
    base_model = imported[3:].split("@")[0].split(" ")[0] if imported.startswith("hf:") else None
    shown = {k: round(float(v), 6) for k, v in sorted(metrics.items())
             if k.startswith(("val", "probe", "train/loss", "test")) and math.isfinite(v)}
    header: dict[str, Any] = {
        "library_name": "granite-tsfm",
        "tags": ["biosig", "biosignals", "time-series", backbone["arch"], *[c.lower() for c in meta["channels"]]],
        **({"base_model": base_model} if base_model else {}),
        **({"datasets": [dataset]} if dataset else {}),
        **({"metrics": sorted(shown)} if shown else {}),
        "biosig": {"registered_model": name, "version": str(version), "run_id": run_id,
                   "dataset_digest": digest, "weights_sha256": provenance.get("sha256")},
    }
    if shown and dataset:
        header["model-index"] = [{"name": name, "results": [{
            "task": {"type": "self-supervised-pretraining", "name": str(meta.get("objective", {}).get("type"))},
            "dataset": {"name": dataset, "type": "biosig", "revision": digest},
            "metrics": [{"type": k, "value": v, "name": k} for k, v in shown.items()]}]}]
    norm = meta.get("normalisation") or {}
    if norm.get("kind") == "global":
        scaling = (f"z-score each channel with the training statistics before calling the model: mean "
                   f"{[round(m, 4) for m in norm['mean']]}, std {[round(s, 4) for s in norm['std']]} (channels "
                   f"{norm['channels']})")
    elif norm.get("kind"):
        scaling = "scale each window by its own typical amplitude (biosig's `window` normalisation)"
    else:
        scaling = f"as published (the model's own scaling: {backbone['config'].get('scaling')!r})"
    config = backbone["config"]
    lines = [
        f"# {name} (version {version})", "",
        f"A {backbone['arch']} backbone exported by biosig from the registered model `{name}` version {version} "
        f"as a granite-tsfm `{hf_class}` folder.", "",
        "## Use", "```python",
        f"from tsfm_public import {hf_class}", f"model = {hf_class}.from_pretrained(\"PATH\")",
        "embeddings = model.backbone(past_values).last_hidden_state  # past_values: [batch, time, channels]",
        "```", "",
        "## Input", f"- channels {meta['channels']} at {meta['fs']:g} Hz, {meta['context_length']} samples per "
        f"window, patches of {meta['patch_length']}", f"- normalisation: {scaling}",
        f"- d_model {config.get('d_model')}, {config.get('num_layers')} layers, mode {config.get('mode')}", "",
        "## Provenance",
        f"- objective: {meta.get('objective', {}).get('type')}; biosig run `{run_id}`",
        *([f"- pretrained on `{dataset}` (digest `{digest}`)"] if dataset else []),
        *([f"- imported from `{imported}` (sha256 `{provenance.get('sha256')}`)"] if imported else []), "",
        "## Metrics", *(f"- {k}: {v:.4f}" for k, v in shown.items()), *([] if shown else ["- none recorded"]), "",
        "## Limits",
        f"- the {hf_class} task head in this folder is freshly initialised: biosig keeps and exports the backbone; "
        "fine-tune a head (biosig finetune) before using its outputs",
        "- trained on the data named above; behaviour on other devices, sites or populations is unknown",
    ]
    return "---\n" + yaml.safe_dump(header, sort_keys=False) + "---\n\n" + "\n".join(lines) + "\n"


def pretrained_card(*, name: str, meta: dict[str, Any], history: list[dict[str, Any]], best_epoch: int,
                    probe: list[dict[str, Any]], probe_line: str) -> str:
    """model_card.md of a pretrained checkpoint: corpus (name, digest), objective, steps, the loss curve in
    brief, and the probe evidence (did pretraining beat random initialisation?)."""
    provenance, objective, backbone = meta.get("provenance", {}), meta.get("objective", {}), meta["backbone"]
    losses = [row["val_loss"] for row in history if "val_loss" in row]
    seen = sum(row.get("train_windows_seen", 0) for row in history)
    lines = [
        f"# {name}", "",
        f"Pretrained {backbone['arch']} backbone ({objective.get('type')}"
        + (f", mask ratio {objective.get('mask_ratio')}" if objective.get("type") == "mae" else "") + ").", "",
        "## Corpus", f"- `{provenance.get('dataset')}` (digest `{provenance.get('dataset_digest')}`)",
        f"- channels {meta['channels']} at {meta['fs']:g} Hz, context {meta['context_length']} samples, patches of "
        f"{meta['patch_length']}", "",
        "## Training",
        f"- {len(history)} epochs, {seen:,} training windows seen; best epoch {best_epoch} (registered)",
        (f"- validation loss: first {_fmt(losses[0])}, best {_fmt(min(losses))}, last {_fmt(losses[-1])} "
         "(1.0 = predicting the mean of normalised targets)") if losses else "- no validation loss recorded",
        f"- backbone config: {json_line({k: v for k, v in backbone['config'].items() if k != 'hf_config'})}", "",
        "## Does pretraining help? (linear probe)",
    ]
    if probe:
        lines += [probe_line, "", "| epoch | probe AUROC | 95 % subject-bootstrap interval |", "|---|---|---|"]
        lines += [f"| {'init' if row['epoch'] == 0 else row['epoch']} | {_fmt(row['auroc'])} | "
                  f"[{_fmt(row['ci_low'])}, {_fmt(row['ci_high'])}] |" for row in probe]
    else:
        lines.append("No probe was run (probe=none, or no bundled labelled task for these channels).")
    return "\n".join(lines) + "\n"


def json_line(value: Any) -> str:
    import json

    return json.dumps(value, default=str)
