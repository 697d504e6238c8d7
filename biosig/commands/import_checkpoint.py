"""`import-checkpoint`: a backbone trained outside biosig (a `best_model.pt` of earlier code) into the
registry, under its conventional name, with where it came from.

The weights are read (safetensors, or torch.save with weights_only=True), mapped onto the backbone the
config describes (a `model_state_dict` wrapper, a `backbone.`/`module.` key prefix), and loaded with
strict=True, all before any run exists: a file that does not fit is one line listing the first missing
and unexpected keys, and nothing is registered. The registered version is a pretrained checkpoint like
any other (fine-tune it with `checkpoint=NAME`), tagged with the source file's sha256, its original path
and who imported it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import getpass
import hashlib
import socket
from pathlib import Path
from typing import Any

import biosig
from biosig.backbones import build_backbone
from biosig.commands.configs import ImportCheckpointConfig
from biosig.data.channels import check_channels
from biosig.logs import get_logger
from biosig.models.checkpoint import fit_foreign_keys, read_foreign_state, save_checkpoint
from biosig.registry.publish import CANDIDATE_ALIAS, publish_model_files, register_from_run
from biosig.tracking.liveness import scratch_dir
from biosig.tracking.run import tracked_run
from biosig.tracking.tags import (
    ARCH_TAG,
    FIELD_TAG_PREFIX,
    IMPORTED_BY_TAG,
    IMPORTED_FROM_TAG,
    IMPORTED_SHA256_TAG,
    KIND_TAG,
    MODEL_NAME_TAG,
    RUN_ID_TAG,
)

log = get_logger(__name__)


@dataclasses.dataclass
class ImportResult:
    run_id: str
    name: str
    version: str
    sha256: str


def run_import_checkpoint(config: ImportCheckpointConfig) -> ImportResult:
    source = Path(config.path).resolve()
    check_channels(config.channels, "config key 'channels'")
    name = config.model_name()
    backbone = build_backbone(config.arch, config.channels, config.backbone_config())
    state, prefix, ignored = fit_foreign_keys(read_foreign_state(source), backbone.state_dict(), str(source),
                                              config.spec.import_prefixes)
    backbone.load_state_dict(state, strict=True)
    digest = _sha256(source)
    importer = f"{getpass.getuser()}@{socket.gethostname()}"
    with tracked_run("import_checkpoint", config, tags={MODEL_NAME_TAG: name}) as ctx, \
            scratch_dir("import") as tmp:
        ctx.name_run(f"import-checkpoint {name}")
        meta = _meta(config, name, backbone, source, digest, importer, ctx.run_id)
        checkpoint = save_checkpoint(Path(tmp) / "checkpoint", backbone.state_dict(), meta)
        ctx.log_artifacts(checkpoint, "checkpoint")
        ctx.begin_model(name, model_type=f"imported {config.arch}", params={"arch": config.arch, "source": source.name})
        model = publish_model_files(ctx.model_id, checkpoint, run_id=ctx.run_id)
        provenance = {IMPORTED_FROM_TAG: str(source), IMPORTED_SHA256_TAG: digest, IMPORTED_BY_TAG: importer}
        fields = config.spec.name_fields(config)
        tags = {ARCH_TAG: config.arch, KIND_TAG: "pretrained", RUN_ID_TAG: ctx.run_id, **provenance,
                **{FIELD_TAG_PREFIX + k: ",".join(v) if isinstance(v, list) else v for k, v in fields.items()}}
        version = register_from_run(ctx, name, source=f"models:/{model.model_id}", model_id=model.model_id, tags=tags,
                                    model_tags={ARCH_TAG: config.arch},
                                    description=f"Imported {config.arch} backbone from {source.name} (sha256 "
                                                f"{digest[:12]}), not pretrained by biosig; see run {ctx.run_id}")
        ctx.set_tags(provenance)
        ctx.describe(f"Imported `{source}` (sha256 `{digest[:12]}`, key prefix `{prefix or 'none'}`"
                     f"{f', {len(ignored)} keys outside the backbone ignored' if ignored else ''}) as **{name}** "
                     f"version {version} (@{CANDIDATE_ALIAS}).")
        log.info(f"imported {source.name} -> {name} version {version} (@{CANDIDATE_ALIAS}): "
                 f"{sum(v.numel() for v in state.values()):,} parameters, key prefix {prefix or 'none'!r}"
                 + (f", ignored {len(ignored)} keys outside it (e.g. {ignored[0]})" if ignored else ""))
        return ImportResult(ctx.run_id, name, version, digest)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _meta(config: ImportCheckpointConfig, name: str, backbone, source: Path, digest: str, importer: str,
          run_id: str) -> dict[str, Any]:
    return {
        "kind": "pretrained", "name": name, "backbone": backbone.describe(), "channels": list(config.channels),
        "fs": config.fs, "context_length": config.context_length, "patch_length": config.patch_length,
        "objective": {"type": config.objective, "mask_ratio": config.mask_ratio, "masking_style": "unknown",
                      "prediction_length": config.prediction_length},
        "provenance": {"run_id": run_id, "imported_from": str(source), "sha256": digest, "importer": importer,
                       "biosig_version": biosig.__version__,
                       "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")},
    }
