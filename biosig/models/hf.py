"""Published granite-tsfm models as Hugging Face folders (`config.json` + `model.safetensors` or
`pytorch_model.bin`): read one into a biosig build config, and write a biosig backbone back as a folder that
granite-tsfm's `from_pretrained` loads.

A folder's config.json is kept whole (derived fields removed) as the backbone's `hf_config`, and the backbone
is built from it, so every option the model was published with (adaptive patching, std/mean scaling,
resolution prefix tuning, gated attention, norms, positional encoding, register tokens, FFT fusion, …) is
honoured by the very granite-tsfm code that trained it; biosig's own keys (context, patch, d_model, …) are
read from it, never typed. What biosig cannot honour is refused naming the field. Hub access is never
attempted: `hf:ORG/NAME[@revision]` is looked up in the local Hugging Face cache only.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from biosig.errors import ConfigError, DataError
from biosig.models.granite import DERIVED_FIELDS, HF_CONFIG_KEY

#: config.json `model_type` -> biosig arch
ARCHS = {"tinytimemixer": "ttm", "tspulse": "tspulse"}
#: the granite-tsfm class each arch is exported as (its backbone is biosig's)
EXPORT_CLASSES = {"ttm": "TinyTimeMixerForPrediction", "tspulse": "TSPulseForReconstruction"}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
#: transformers' bookkeeping, not model options
BOOKKEEPING = ("transformers_version", "_name_or_path", "model_type", "architectures", "torch_dtype", "dtype",
               "auto_map", "_commit_hash", "_attn_implementation_autoset")
#: TTM fields that only its forecasting head / decoder read: kept for export, unused by the backbone
TTM_HEAD_FIELDS = ("prediction_length", "prediction_channel_indices", "exogenous_channel_indices", "loss",
                   "head_dropout", "distribution_output", "num_parallel_samples", "decoder_num_layers",
                   "decoder_d_model", "decoder_adaptive_patching_levels", "decoder_raw_residual", "decoder_mode",
                   "use_decoder", "enable_forecast_channel_mixing", "fcm_gated_attn", "fcm_context_length",
                   "fcm_use_mixer", "fcm_mix_layers", "fcm_prepend_past", "fcm_prepend_past_offset",
                   "categorical_vocab_size_list", "prediction_filter_length", "quantile", "huber_delta",
                   "multi_quantile_head", "point_extra_weight", "d_model_scale", "decoder_d_model_scale")
#: biosig key <- config.json field, per arch (the sizes biosig reasons about: names, heads, context fit)
SIZE_FIELDS = {
    "ttm": {"context_length": "context_length", "patch_length": "patch_length", "d_model": "d_model",
            "num_layers": "num_layers", "expansion_factor": "expansion_factor", "dropout": "dropout",
            "mode": "mode", "scaling": "scaling", "adaptive_patching_levels": "adaptive_patching_levels"},
    "tspulse": {"context_length": "context_length", "patch_length": "patch_length", "d_model": "d_model",
                "num_layers": "num_layers", "expansion_factor": "expansion_factor", "dropout": "dropout",
                "mode": "mode", "mask_ratio": "mask_ratio", "fuse_fft": "fuse_fft"},
}
GRANITE_DEFAULTS = {"ttm": {"scaling": "std", "adaptive_patching_levels": 0, "expansion_factor": 2,
                            "dropout": 0.2, "mode": "common_channel"},
                    "tspulse": {"expansion_factor": 2, "dropout": 0.2, "mode": "common_channel",
                                "fuse_fft": False}}


@dataclasses.dataclass
class PublishedModel:
    """A granite-tsfm Hugging Face folder, read."""

    folder: Path
    weights: Path  # model.safetensors or pytorch_model.bin
    arch: str  # biosig arch (ttm, tspulse)
    architecture: str  # the granite-tsfm class that saved it (TinyTimeMixerForPrediction, …)
    fields: dict[str, Any]  # config.json without transformers' bookkeeping and derived fields
    num_patches: int | None  # what the file says it derived (checked against the rebuilt model)

    @property
    def objective(self) -> str:
        """fcst for a forecasting TTM, mae for TSPulse's masked reconstruction; '' when the file has only a backbone."""
        if self.arch == "ttm":
            return "fcst" if self.architecture.endswith("ForPrediction") else ""
        return "mae"

    @property
    def prediction_length(self) -> int:
        return int(self.fields.get("prediction_length") or 0)

    @property
    def mask_ratio(self) -> float | None:
        ratio = self.fields.get("mask_ratio")
        return float(ratio) if ratio else None

    def sizes(self) -> dict[str, Any]:
        """biosig's keys, read from the config (granite-tsfm's default where the file leaves one out)."""
        defaults = GRANITE_DEFAULTS[self.arch]
        return {ours: self.fields.get(theirs, defaults.get(theirs)) for ours, theirs in SIZE_FIELDS[self.arch].items()
                if theirs in self.fields or theirs in defaults}

    def build_config(self, frequency_token: int = 0) -> dict[str, Any]:
        """The backbone build config: biosig's keys plus the whole config as `hf_config`."""
        config = {**self.sizes(), HF_CONFIG_KEY: dict(self.fields)}
        if self.arch == "ttm" and self.fields.get("resolution_prefix_tuning"):
            config["frequency_token"] = frequency_token
        return config

    def unused_fields(self) -> list[str]:
        """Fields the backbone does not read (the forecasting head's, the decoder's): kept, for export."""
        if self.arch == "ttm":
            return sorted(k for k in self.fields if k in TTM_HEAD_FIELDS)
        return sorted(k for k in self.fields if k.startswith(("decoder_", "head_", "loss", "classification_")))


def is_hf_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def resolve_hf_cache(spec: str) -> Path:
    """`hf:ORG/NAME[@revision]` -> its snapshot folder in the local Hugging Face cache ($HF_HUB_CACHE,
    $HF_HOME/hub or ~/.cache/huggingface/hub); never the network."""
    repo, _, revision = spec.removeprefix("hf:").partition("@")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise ConfigError(f"config key 'path': {spec!r} is not hf:ORG/NAME[@revision]")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        cache = os.environ.get("HF_HUB_CACHE") or None  # read now, not when huggingface_hub was imported
        return Path(snapshot_download(repo, revision=revision or None, local_files_only=True, cache_dir=cache))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        command = f"huggingface-cli download {repo}" + (f" --revision {revision}" if revision else "")
        raise DataError(f"config key 'path': {repo}{'@' + revision if revision else ''} is not in the local Hugging "
                        f"Face cache and biosig never downloads at run time: run `{command}` on a machine with "
                        "network access (or copy its folder here) and import again") from None


def read_published(folder: Path) -> PublishedModel:
    """config.json + weights of a Hugging Face folder; a model biosig cannot build is one line naming the field."""
    config_file = folder / "config.json"
    try:
        raw = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{config_file} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise DataError(f"{config_file} must hold a JSON object")
    model_type = raw.get("model_type")
    if model_type not in ARCHS:
        raise DataError(f"{config_file}: field 'model_type' is {model_type!r}; biosig imports granite-tsfm models "
                        f"({', '.join(ARCHS)})")
    weights = next((folder / f for f in WEIGHT_FILES if (folder / f).is_file()), None)
    if weights is None:
        sharded = sorted(p.name for p in folder.glob("*.index.json"))
        raise DataError(f"{folder} holds no {' or '.join(WEIGHT_FILES)}"
                        + (f" (sharded weights {sharded[0]} are not read: granite-tsfm models fit one file)"
                           if sharded else ""))
    architectures = raw.get("architectures") or []
    fields = {k: v for k, v in raw.items() if k not in BOOKKEEPING and k not in DERIVED_FIELDS}
    published = PublishedModel(folder, weights, ARCHS[model_type], str(architectures[0]) if architectures else "",
                               fields, raw.get("num_patches"))
    _check_supported(published, config_file)
    return published


def _check_supported(model: PublishedModel, where: Path) -> None:
    f = model.fields
    refusals = {
        "decompose": (f.get("decompose"), "decomposed (trend + residual) TTMs have two backbones; biosig "
                                          "fine-tunes one"),
        "channel_virtual_expand_scale": ((f.get("channel_virtual_expand_scale") or 1) > 1,
                                         "biosig keeps one embedding row per named channel"),
        "masked_context_length": (f.get("masked_context_length") is not None,
                                  "biosig feeds the whole context window"),
    }
    for field, (refused, why) in refusals.items():
        if refused:
            raise ConfigError(f"{where}: field '{field}' = {f[field]!r} is not supported: {why}")
    if f.get("patch_stride", f.get("patch_length")) != f.get("patch_length"):
        raise ConfigError(f"{where}: field 'patch_stride' ({f.get('patch_stride')}) differs from patch_length "
                          f"({f.get('patch_length')}); granite-tsfm builds non-overlapping patches only")
    for key in ("context_length", "patch_length", "d_model", "num_layers"):
        if not isinstance(f.get(key), int) or f[key] < 1:
            raise ConfigError(f"{where}: field '{key}' must be a positive integer, got {f.get(key)!r}")


def check_channels(model: PublishedModel, channels: list[str], where: Path) -> None:
    """mix_channel weights are sized by the channel count the model was trained with."""
    trained = model.fields.get("num_input_channels")
    if model.sizes().get("mode") == "mix_channel" and trained and trained != len(channels):
        raise ConfigError(f"{where}: field 'num_input_channels' is {trained} and mode is mix_channel (channel "
                          f"mixers sized for {trained} channels): give exactly {trained} names in config key "
                          f"'channels' (got {len(channels)}: {','.join(channels)})")


def check_built(model: PublishedModel, backbone, where: Path) -> None:
    """The rebuilt backbone derives the patch count the file recorded."""
    if model.arch == "ttm" and model.num_patches is not None and backbone.num_patches != model.num_patches:
        raise ConfigError(f"{where}: field 'num_patches' is {model.num_patches} but its context, patch and "
                          f"options give {backbone.num_patches}; the file was edited or comes from another "
                          "granite-tsfm version")


def export_folder(backbone, output: Path, prediction_length: int = 0) -> Path:
    """A granite-tsfm model (TinyTimeMixerForPrediction / TSPulseForReconstruction) whose backbone holds
    `backbone`'s weights (strict), saved with `save_pretrained`. The task head (forecasting, reconstruction)
    is freshly initialised: biosig keeps backbones, not heads. Returns the folder."""
    _quiet_transformers()
    model = _granite_model(backbone, prediction_length)
    model.backbone.load_state_dict(backbone.model.state_dict(), strict=True)
    model.save_pretrained(str(output))
    return output


def _quiet_transformers() -> None:
    """No per-file progress bars from save_pretrained/from_pretrained between biosig's own lines."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def load_exported(arch: str, folder: Path):
    """granite-tsfm's own `from_pretrained` of an exported folder (the check that it loads as published)."""
    _quiet_transformers()
    if arch == "ttm":
        from tsfm_public.models.tinytimemixer import TinyTimeMixerForPrediction as model_cls
    else:
        from tsfm_public.models.tspulse import TSPulseForReconstruction as model_cls
    return model_cls.from_pretrained(str(folder)).eval()


def _granite_model(backbone, prediction_length: int):
    if backbone.arch == "ttm":
        from tsfm_public.models.tinytimemixer import TinyTimeMixerForPrediction

        overrides = {"prediction_length": prediction_length} if prediction_length else {}
        return TinyTimeMixerForPrediction(backbone.tsfm_config(**overrides))
    from tsfm_public.models.tspulse import TSPulseForReconstruction

    from biosig.models.tspulse import tsfm_config

    return TSPulseForReconstruction(tsfm_config(backbone))
