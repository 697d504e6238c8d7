"""`import-checkpoint`: a backbone trained outside biosig into the registry, under its conventional name, with
where it came from.

Three sources: a Hugging Face folder of a granite-tsfm model (config.json + weights: arch, sizes, options and
objective all come from config.json, see biosig.models.hf), `hf:ORG/NAME[@revision]` (that folder in the local
Hugging Face cache), or a bare weights file described by the backbone keys. The weights are unwrapped
(checkpoint dicts, Lightning, DDP, torch.compile, EMA; biosig.models.foreign), mapped onto the backbone and
loaded with strict=True, all before any run exists: a file that does not fit is one line, nothing is
registered. The identity of imported weights is the sha256 of their file: importing the same bytes again
returns the version that holds them. The registered version is a pretrained checkpoint like any other
(fine-tune it with `checkpoint=NAME`), tagged with the sha256, the original path and who imported it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import getpass
import socket
from pathlib import Path
from typing import Any

import biosig
from biosig.backbones import build_backbone
from biosig.commands.configs import ImportCheckpointConfig
from biosig.data.channels import check_channels
from biosig.data.shards import file_sha256
from biosig.errors import DataError
from biosig.logs import get_logger
from biosig.models.checkpoint import save_checkpoint
from biosig.models.foreign import FittedWeights, fit_foreign_keys, read_foreign_weights
from biosig.models.hf import PublishedModel, check_built, is_hf_folder, read_published, resolve_hf_cache
from biosig.models.hf import check_channels as check_published_channels
from biosig.registry.publish import CANDIDATE_ALIAS, publish_model_files, register_from_run, version_with_tags
from biosig.tracking.liveness import scratch_dir
from biosig.tracking.run import configure_tracking, tracked_run
from biosig.tracking.tags import (
    ARCH_TAG,
    FIELD_TAG_PREFIX,
    IMPORTED_BY_TAG,
    IMPORTED_CLASS_TAG,
    IMPORTED_EMA_TAG,
    IMPORTED_FROM_TAG,
    IMPORTED_SHA256_TAG,
    IMPORTED_WRAPPERS_TAG,
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
    existing: bool = False  # the same bytes were already registered under this name: nothing was imported


@dataclasses.dataclass
class Source:
    """What is being imported: where the user pointed, the weights file, and the folder's config when any."""

    given: str  # config key 'path' as given (hf:ORG/NAME@rev or a path)
    weights: Path
    published: PublishedModel | None = None


def run_import_checkpoint(config: ImportCheckpointConfig) -> ImportResult:
    source = _source(config.path)
    if source.published:
        config = _described_by(config, source.published)
        check_published_channels(source.published, config.channels, source.published.folder / "config.json")
    check_channels(config.channels, "config key 'channels'")
    name = config.model_name()
    build = (source.published.build_config(config.frequency_token) if source.published else config.backbone_config())
    backbone = build_backbone(config.arch, config.channels, build)
    fitted = fit_foreign_keys(read_foreign_weights(source.weights, config.use_ema), backbone.state_dict(),
                              str(source.weights), config.spec.import_prefixes)
    backbone.load_state_dict(fitted.state, strict=True)
    if source.published:
        check_built(source.published, backbone, source.published.folder / "config.json")
    digest = file_sha256(source.weights)
    identity = {IMPORTED_SHA256_TAG: digest, IMPORTED_EMA_TAG: str(config.use_ema).lower()}
    configure_tracking(config.tracking_uri)
    if (existing := version_with_tags(name, identity)) is not None:
        log.info(f"{source.weights.name} (sha256 {digest[:12]}) is already registered as {name} version "
                 f"{existing.version}; nothing imported")
        return ImportResult(existing.run_id or "", name, str(existing.version), digest, existing=True)
    importer = f"{getpass.getuser()}@{socket.gethostname()}"
    with tracked_run("import_checkpoint", config, tags={MODEL_NAME_TAG: name}) as ctx, scratch_dir("import") as tmp:
        ctx.name_run(f"import-checkpoint {name}")
        meta = _meta(config, name, backbone, source, digest, importer, ctx.run_id)
        checkpoint = save_checkpoint(Path(tmp) / "checkpoint", backbone.state_dict(), meta)
        ctx.log_artifacts(checkpoint, "checkpoint")
        ctx.log_dict(_report(source, fitted, digest), "import/report.json")
        ctx.begin_model(name, model_type=f"imported {config.arch}",
                        params={"arch": config.arch, "source": source.weights.name})
        model = publish_model_files(ctx.model_id, checkpoint, run_id=ctx.run_id)
        provenance = {IMPORTED_FROM_TAG: _where(source), IMPORTED_BY_TAG: importer, **identity,
                      **({IMPORTED_CLASS_TAG: source.published.architecture} if source.published else {}),
                      **({IMPORTED_WRAPPERS_TAG: "; ".join(fitted.wrappers)} if fitted.wrappers else {})}
        fields = config.spec.name_fields(config)
        tags = {ARCH_TAG: config.arch, KIND_TAG: "pretrained", RUN_ID_TAG: ctx.run_id, **provenance,
                **{FIELD_TAG_PREFIX + k: ",".join(v) if isinstance(v, list) else v for k, v in fields.items()}}
        version = register_from_run(ctx, name, source=f"models:/{model.model_id}", model_id=model.model_id, tags=tags,
                                    model_tags={ARCH_TAG: config.arch},
                                    description=f"Imported {config.arch} backbone from {source.weights.name} "
                                                f"(sha256 {digest[:12]}), not pretrained by biosig; see run {ctx.run_id}")
        ctx.set_tags(provenance)
        ctx.describe(f"Imported `{_where(source)}` ({_what(source, fitted, digest)}) as **{name}** version {version} "
                     f"(@{CANDIDATE_ALIAS}).")
        log.info(f"imported {_where(source)} -> {name} version {version} (@{CANDIDATE_ALIAS}): "
                 f"{sum(v.numel() for v in fitted.state.values()):,} parameters; {_what(source, fitted, digest)}")
        return ImportResult(ctx.run_id, name, version, digest)


def _source(path: str) -> Source:
    folder = resolve_hf_cache(path) if path.startswith("hf:") else Path(path).expanduser().resolve()
    if is_hf_folder(folder):
        published = read_published(folder)
        return Source(path, published.weights, published)
    if folder.is_dir():
        raise DataError(f"config key 'path': {folder} is a folder without config.json; give the weights file, or a "
                        "Hugging Face model folder (config.json + model.safetensors)")
    return Source(path, folder)


def _described_by(config: ImportCheckpointConfig, published: PublishedModel) -> ImportCheckpointConfig:
    """The config with arch, sizes and objective read from config.json instead of the backbone keys."""
    sizes = {k: v for k, v in published.sizes().items() if k in {f.name for f in dataclasses.fields(config)}}
    objective = published.objective or config.objective
    described = dataclasses.replace(config, arch=published.arch, objective=objective, **sizes)
    if objective == "fcst":
        described.prediction_length = published.prediction_length or config.prediction_length
    if published.mask_ratio is not None:
        described.mask_ratio = published.mask_ratio
    described.spec.check(described)
    return described


def _where(source: Source) -> str:
    if source.given.startswith("hf:"):
        return f"{source.given} ({source.published.folder if source.published else source.weights})"
    return str(source.published.folder if source.published else source.weights)


def _what(source: Source, fitted: FittedWeights, digest: str) -> str:
    parts = [f"{source.published.architecture or source.published.arch} config.json" if source.published else "",
             f"sha256 `{digest[:12]}`", *fitted.wrappers, f"key prefix `{fitted.prefix or 'none'}`",
             f"{len(fitted.ignored)} keys outside the backbone ignored (import/report.json)" if fitted.ignored else ""]
    return ", ".join(filter(None, parts))


def _report(source: Source, fitted: FittedWeights, digest: str) -> dict[str, Any]:
    """import/report.json: what was read, what was recognised, and what the backbone does not use."""
    published = source.published
    return {"source": _where(source), "weights": str(source.weights), "sha256": digest,
            "class": published.architecture if published else None, "wrappers": fitted.wrappers,
            "key_prefix": fitted.prefix,
            "unused_weights": {k: list(shape) for k, shape in fitted.ignored.items()},
            "unused_config_fields": published.unused_fields() if published else [],
            "config": published.fields if published else None}


def _meta(config: ImportCheckpointConfig, name: str, backbone, source: Source, digest: str, importer: str,
          run_id: str) -> dict[str, Any]:
    return {
        "kind": "pretrained", "name": name, "backbone": backbone.describe(), "channels": list(config.channels),
        "fs": config.fs, "context_length": backbone.context_length, "patch_length": backbone.patch_length,
        "objective": {"type": config.objective, "mask_ratio": config.mask_ratio, "masking_style": "unknown",
                      "prediction_length": config.prediction_length},
        "provenance": {"run_id": run_id, "imported_from": _where(source), "sha256": digest, "importer": importer,
                       "imported_class": source.published.architecture if source.published else None,
                       "biosig_version": biosig.__version__,
                       "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")},
    }
