"""Weights saved by other training code, mapped onto a biosig backbone: a safetensors file or a `torch.save`
file (loaded with weights_only=True: tensors and plain containers only, never pickled objects), inside the
wrappers training frameworks put around a model's keys, which are recognised and reported:

- a checkpoint dict (`model_state_dict`, `state_dict`, …), PyTorch Lightning's (`state_dict` beside
  `pytorch-lightning_version`/`global_step`, keys under the LightningModule's attribute, e.g. `model.`);
- DistributedDataParallel / DataParallel (`module.`), torch.compile (`_orig_mod.`);
- an EMA copy (`ema_state_dict`/`state_dict_ema` beside the weights, or `ema.`/`ema_model.`/`model_ema.` keys):
  reported, and imported instead of the raw weights with `use_ema`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from safetensors.torch import load_file

from biosig.errors import DataError

#: Wrappers other training code saves a state dict in, and key prefixes it puts before the backbone's own.
STATE_WRAPPERS = ("model_state_dict", "state_dict", "model", "backbone_state_dict", "weights", "module")
EMA_WRAPPERS = ("ema_state_dict", "state_dict_ema", "model_ema", "ema_model", "ema")
EMA_KEY_PREFIXES = ("ema_model.", "model_ema.", "module_ema.", "ema.")
LIGHTNING_MARKERS = ("pytorch-lightning_version", "global_step", "lr_schedulers", "optimizer_states")
KEY_PREFIXES = ("", "backbone.", "module.", "module.backbone.", "model.", "model.backbone.", "model.module.",
                "module.model.", "model.model.", "encoder.", "net.", "model.encoder.", "network.")
COMPILE_MARK = "_orig_mod."


@dataclasses.dataclass
class ForeignWeights:
    """The tensors to import and what was recognised around them."""

    tensors: dict[str, torch.Tensor]
    wrappers: list[str] = dataclasses.field(default_factory=list)  # one phrase each, for the run's description
    ema: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)  # an EMA copy, when present


@dataclasses.dataclass
class FittedWeights:
    """Foreign weights renamed onto a backbone's keys."""

    state: dict[str, torch.Tensor]
    prefix: str  # the foreign key prefix that was removed/renamed
    ignored: dict[str, tuple[int, ...]]  # keys outside the backbone (heads, decoders) and their shapes
    wrappers: list[str]


def _load(path: Path):
    try:
        if path.suffix == ".safetensors":
            return load_file(path)
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(f"config key 'path': {path} cannot be read as a state dict ({type(exc).__name__}: "
                        f"{(str(exc).splitlines() or [''])[0][:200]}); torch.save files are loaded with "
                        "weights_only=True, so only tensors and plain containers are accepted") from None


def _tensors(value) -> dict[str, torch.Tensor]:
    return {k: v for k, v in value.items() if isinstance(v, torch.Tensor)} if isinstance(value, dict) else {}


def read_foreign_weights(path: str | Path, use_ema: bool = False) -> ForeignWeights:
    """The state dict in `path`, unwrapped, with `_orig_mod.` removed and any EMA copy set aside."""
    path = Path(path)
    state = _load(path)
    wrappers: list[str] = []
    ema: dict[str, torch.Tensor] = {}
    for _ in range(3):  # {"model_state_dict": {...}} or {"checkpoint": {"state_dict": {...}}}
        if not isinstance(state, dict) or _tensors(state):
            break
        ema = ema or next((_tensors(state[k]) for k in EMA_WRAPPERS if _tensors(state.get(k))), {})
        key = next((k for k in STATE_WRAPPERS if isinstance(state.get(k), dict)), None)
        if key is None:
            break
        lightning = any(marker in state for marker in LIGHTNING_MARKERS)
        wrappers.append(f"Lightning checkpoint ({key})" if lightning else f"checkpoint dict ({key})")
        state = state[key]
    tensors = _tensors(state)
    if not tensors:
        raise DataError(f"config key 'path': {path} holds no tensors under the keys biosig knows "
                        f"({', '.join(STATE_WRAPPERS)}); save the model's state_dict()")
    if any(COMPILE_MARK in k for k in [*tensors, *ema]):
        wrappers.append("torch.compile (_orig_mod.)")
        tensors = {k.replace(COMPILE_MARK, ""): v for k, v in tensors.items()}
        ema = {k.replace(COMPILE_MARK, ""): v for k, v in ema.items()}
    in_keys = {k: v for k, v in tensors.items() if k.startswith(EMA_KEY_PREFIXES)}
    if in_keys:
        tensors = {k: v for k, v in tensors.items() if k not in in_keys}
        ema = ema or {k.split(".", 1)[1]: v for k, v in in_keys.items()}
    if ema:
        wrappers.append("EMA copy (imported)" if use_ema else "EMA copy present (not imported; use_ema=true imports it)")
    if use_ema:
        if not ema:
            raise DataError(f"config key 'use_ema': {path} holds no EMA copy (no {', '.join(EMA_WRAPPERS)} entry, no "
                            f"{', '.join(EMA_KEY_PREFIXES)} keys)")
        tensors = ema
    return ForeignWeights(tensors, wrappers, ema)


def fit_foreign_keys(weights: ForeignWeights, expected: dict[str, torch.Tensor], where: str,
                     renames: tuple[tuple[str, str], ...] = ()) -> FittedWeights:
    """Map the foreign keys onto `expected` (a built backbone's state_dict) by the key prefix that fits best:
    a wrapper prefix (`module.`, `model.`, `model.backbone.`, …) followed by a backbone spec's (foreign, ours)
    rename or by nothing. A key set that still does not fit is one DataError listing the first missing and
    unexpected keys and shape clashes."""
    state = weights.tensors

    def under(rename: tuple[str, str]) -> dict[str, torch.Tensor]:
        foreign, ours = rename
        return {ours + k[len(foreign):]: v for k, v in state.items() if k.startswith(foreign)}

    candidates = [(outer + foreign, ours) for outer in KEY_PREFIXES for foreign, ours in (*renames, ("", ""))]
    rename = max(candidates, key=lambda r: (len(set(under(r)) & set(expected)), -len(r[0])))
    best, mapped = rename[0], under(rename)
    missing = sorted(set(expected) - set(mapped))
    unexpected = sorted(set(mapped) - set(expected))
    shapes = [f"{k} {tuple(mapped[k].shape)} vs {tuple(expected[k].shape)}" for k in sorted(set(mapped) & set(expected))
              if mapped[k].shape != expected[k].shape]
    if missing or unexpected or shapes:
        def first(items: list[str]) -> str:
            return ", ".join(items[:5]) + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")

        problems = [f"missing {len(missing)}: {first(missing)}" if missing else "",
                    f"unexpected {len(unexpected)}: {first(unexpected)}" if unexpected else "",
                    f"shape mismatch {len(shapes)}: {first(shapes)}" if shapes else ""]
        raise DataError(f"{where} does not fit the backbone the config describes (key prefix "
                        f"{best or 'none'!r}): " + "; ".join(filter(None, problems))
                        + " - check arch and its size keys (d_model, num_layers, patch_length, …)")
    wrappers = list(weights.wrappers)
    if best.startswith("module.") or ".module." in best:
        wrappers.append("DistributedDataParallel (module.)")
    ignored = {k: tuple(v.shape) for k, v in sorted(state.items()) if not k.startswith(best)}
    return FittedWeights({k: mapped[k].to(expected[k].dtype) for k in expected}, best, ignored, wrappers)
