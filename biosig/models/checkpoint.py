"""Checkpoint directory: `model.safetensors` (weights) + `biosig.json` (architecture, config, channels,
fs, context/patch length, normalisation, provenance). Loading builds the model from config and
loads weights with strict=True: a key mismatch is an error, never silently random weights."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable

import torch
from safetensors.torch import load_file, save_file

from biosig.errors import DataError

WEIGHTS_FILE = "model.safetensors"
META_FILE = "biosig.json"
FORMAT_VERSION = 1


def save_checkpoint(path: str | Path, state_dict: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write the directory atomically (temporary sibling, then rename)."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        # safetensors refuses shared storage; contiguous clones make every tensor standalone.
        save_file({k: v.detach().contiguous().clone() for k, v in state_dict.items()}, tmp / WEIGHTS_FILE)
        (tmp / META_FILE).write_text(json.dumps({"format_version": FORMAT_VERSION, **meta}, indent=2, default=str))
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def write_meta(directory: str | Path, meta: dict[str, Any]) -> Path:
    """biosig.json alone, for checkpoint directories whose model is not a state dict (features reference)."""
    path = Path(directory) / META_FILE
    path.write_text(json.dumps({"format_version": FORMAT_VERSION, **meta}, indent=2, default=str))
    return path


#: Keys a pretrained checkpoint must carry to be fine-tuned; a fine-tuned one to be served.
PRETRAINED_KEYS = ("backbone.arch", "backbone.config", "channels", "fs", "context_length", "patch_length")
FINETUNED_KEYS = ("backbone.arch", "backbone.config", "channels", "fs", "context_length", "class_names", "input")


def read_meta(path: str | Path, require: Iterable[str] = ()) -> dict[str, Any]:
    """biosig.json of a checkpoint directory; `require` lists keys (dotted for nested ones) it must have."""
    path = Path(path)
    meta_file = path / META_FILE
    if not meta_file.is_file():
        raise DataError(f"{path} is not a biosig checkpoint directory (no {META_FILE})")
    try:
        meta = json.loads(meta_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{meta_file} is not valid JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise DataError(f"{meta_file} must hold a JSON object")
    require_keys(meta, require, str(meta_file))
    return meta


def require_keys(meta: dict[str, Any], keys: Iterable[str], where: str) -> None:
    """DataError listing every key of `keys` that `meta` lacks (`a.b`: key b of the mapping a)."""
    missing = []
    for key in keys:
        node: Any = meta
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            missing.append(key)
    if missing:
        raise DataError(f"{where} ({meta.get('kind', 'pretrained')} checkpoint) lacks the key(s) {', '.join(missing)}: "
                        "it was not written by biosig or was edited")


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of a checkpoint directory; a missing, truncated or foreign file is one DataError."""
    weights = Path(path) / WEIGHTS_FILE
    if not weights.is_file():
        raise DataError(f"checkpoint {path} has no {WEIGHTS_FILE}")
    try:
        return load_file(weights)
    except Exception as exc:  # safetensors' own error types: truncated, not safetensors, bad header
        raise DataError(f"checkpoint weights {weights} cannot be read ({type(exc).__name__}: {exc}); "
                        "the file is truncated or not a safetensors file") from None


def load_weights(path: str | Path, module: torch.nn.Module) -> None:
    state = read_weights(path)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # missing/unexpected keys or shape mismatches
        raise DataError(f"checkpoint {path} does not fit the model built from its config: {exc}") from None
