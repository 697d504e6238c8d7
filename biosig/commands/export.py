"""`export`: a registered pretrained checkpoint out of biosig, as a Hugging Face folder that granite-tsfm's
`from_pretrained` loads (TinyTimeMixerForPrediction for TTM, TSPulseForReconstruction for TSPulse) plus a
README.md model card in the Hub's format, generated from what biosig recorded for the version.

The folder is written beside its destination and renamed into place only after it has proved itself:
granite-tsfm loads it back and its backbone's output equals biosig's on the same input; nothing half-written
is ever left at `output`.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch

from biosig.backbones import build_backbone
from biosig.commands.configs import ExportConfig
from biosig.errors import DataError
from biosig.logs import get_logger
from biosig.models.checkpoint import load_weights
from biosig.models.hf import EXPORT_CLASSES, export_folder, load_exported
from biosig.registry.card import hub_card
from biosig.registry.discovery import resolve_checkpoint
from biosig.registry.report import run_metrics
from biosig.tracking.run import configure_tracking

log = get_logger(__name__)


def run_export(config: ExportConfig) -> Path:
    configure_tracking(config.tracking_uri)
    parent = resolve_checkpoint(config.model)
    arch = parent.arch
    if arch not in EXPORT_CLASSES:
        raise DataError(f"config key 'model': {config.model} is a {arch} backbone; format=hf writes granite-tsfm "
                        f"models ({', '.join(EXPORT_CLASSES)})")
    spec = parent.meta["backbone"]
    backbone = build_backbone(arch, spec["channels"], spec["config"])
    load_weights(parent.path, backbone)
    backbone.eval()
    objective = parent.meta.get("objective") or {}
    horizon = int(objective.get("prediction_length") or 0) if objective.get("type") == "fcst" else 0
    output = Path(config.output).expanduser().resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        export_folder(backbone, staging, horizon)
        _prove(backbone, staging)
        card = hub_card(name=parent.name or parent.meta.get("name", ""), version=parent.version or "",
                        meta=parent.meta, metrics=run_metrics(parent.run_id), hf_class=EXPORT_CLASSES[arch],
                        run_id=parent.run_id or "")
        (staging / "README.md").write_text(card, encoding="utf-8")
        if output.exists():
            output.rmdir()  # validated empty
        staging.rename(output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info(f"exported {parent.describe().split(' -> ')[0]} -> {output} ({EXPORT_CLASSES[arch]}.from_pretrained "
             "loads it; README.md is its model card)")
    return output


def _prove(backbone, folder: Path) -> None:
    """granite-tsfm loads the folder and its backbone computes what biosig's does."""
    model = load_exported(backbone.arch, folder)
    x = torch.randn(2, len(backbone.channels), backbone.context_length, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = backbone(x)
        theirs = backbone.output_of(model.backbone, x)
    if ours.shape != theirs.shape or not torch.allclose(ours, theirs, atol=1e-5):
        raise DataError(f"the exported folder {folder} does not reproduce the backbone (max difference "
                        f"{(ours - theirs).abs().max().item() if ours.shape == theirs.shape else 'shape'}); "
                        "nothing was written")
