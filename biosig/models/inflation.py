"""Channel mapping by name between a checkpoint and a new channel layout.

TTM in common_channel mode has no channel-dependent tensors: a 2-channel checkpoint loads into a
5-channel model as is. In mix_channel mode the channel mixers (gate `attn_layer`, MLP `fc1`/`fc2`)
have channel-sized dimensions; inflation copies each pretrained value to the position of its channel
(by name) and initialises the rest so that the pretrained channels' embeddings are unchanged:
 - nothing new feeds a pretrained output (weights from new inputs into old outputs are zero);
 - the softmax gate over channels gives new channels a bias of NEW_CHANNEL_GATE_BIAS and no input
   weights, so their gate is ~1e-7 and the pretrained channels' gates are renormalised as before.
The pretrained slices are reported as boolean masks so that freezing can hold them still while the
new slices train (gradient masks, models/freezing.py).
"""

from __future__ import annotations

import dataclasses

import torch

from biosig.errors import DataError

#: exp(-16) ~ 1e-7: pretrained channels' outputs agree to ~1e-6, yet the gradient reaching the bias
#: (~1e-7) is still above AdamW's eps, so the optimiser can open the gate for a useful new channel.
NEW_CHANNEL_GATE_BIAS = -16.0
_GATE = "gating_block.attn_layer"


@dataclasses.dataclass
class ChannelMapping:
    """The outcome of mapping a checkpoint onto a channel layout."""

    state_dict: dict[str, torch.Tensor]
    pretrained_masks: dict[str, torch.Tensor]  # name -> bool mask of pretrained entries (inflated only)
    positions: dict[str, int]  # pretrained channel -> index in the new layout

    @property
    def inflated(self) -> list[str]:
        return sorted(self.pretrained_masks)

    def describe(self) -> str:
        if not self.pretrained_masks:
            return (f"no channel-dependent tensors change shape: pretrained channels {list(self.positions)} load unchanged "
                    f"at positions {list(self.positions.values())}")
        return (f"inflated {len(self.pretrained_masks)} channel-mixer tensors; pretrained channels "
                f"{list(self.positions)} keep their weights at positions {list(self.positions.values())}")


def drop_channels(pretrained: dict[str, torch.Tensor], kept_fresh: dict[str, torch.Tensor], old_channels: list[str],
                  kept: list[str]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """`pretrained` (trained on `old_channels`) reduced to the channels `kept`, by name: the shapes of
    `kept_fresh` (a model built for `kept`) tell which tensors are channel-dependent. Channel dimensions
    keep the kept channels' slices; hidden dimensions (channels x expansion, mix_channel MLPs) keep their
    first units. common_channel TTM has no channel-dependent tensors and loads unchanged. Returns the
    reduced state dict and the names of the re-sliced tensors."""
    positions = torch.tensor([old_channels.index(c) for c in kept])
    n_old, n_kept = len(old_channels), len(kept)
    out, resliced = {}, []
    for name, old in pretrained.items():
        target = kept_fresh.get(name)
        if target is None or old.shape == target.shape:
            out[name] = old
            continue
        reduced = old
        for dim, (size_old, size_new) in enumerate(zip(old.shape, target.shape)):
            if size_old == size_new:
                continue
            if size_old == n_old and size_new == n_kept:
                reduced = reduced.index_select(dim, positions)
            elif size_old % n_old == 0 and size_new == (size_old // n_old) * n_kept:
                reduced = reduced.narrow(dim, 0, size_new)
            else:
                raise DataError(f"cannot drop channels from {name}: dimension {size_old} -> {size_new} for "
                                f"{n_old} -> {n_kept} channels")
        out[name] = reduced.contiguous()
        resliced.append(name)
    return out, resliced


def map_channels(pretrained: dict[str, torch.Tensor], fresh: dict[str, torch.Tensor], old_channels: list[str],
                 new_channels: list[str]) -> ChannelMapping:
    """Map `pretrained` (trained on `old_channels`) onto the shapes of `fresh` (a freshly initialised
    model for `new_channels`). Every pretrained channel must be present in the new layout."""
    missing = [c for c in old_channels if c not in new_channels]
    if missing:
        raise DataError(f"the checkpoint was pretrained on {old_channels}; channels {missing} are missing "
                        f"from the fine-tuning data channels {new_channels} (drop_channels first)")
    if set(pretrained) != set(fresh):
        extra = sorted(set(pretrained) ^ set(fresh))[:5]
        raise DataError(f"checkpoint tensors do not match the model built from its config (e.g. {extra})")
    positions = {c: new_channels.index(c) for c in old_channels}
    old_index = torch.tensor(list(positions.values()))
    out: dict[str, torch.Tensor] = {}
    masks: dict[str, torch.Tensor] = {}
    for name, old in pretrained.items():
        new = fresh[name]
        if old.shape == new.shape:
            out[name] = old
            continue
        out[name], masks[name] = _inflate(name, old, new.clone(), old_index, len(old_channels), len(new_channels))
    return ChannelMapping(out, masks, positions)


def _inflate(name: str, old: torch.Tensor, new: torch.Tensor, channel_index: torch.Tensor, n_old: int,
             n_new: int) -> tuple[torch.Tensor, torch.Tensor]:
    if old.ndim not in (1, 2):
        raise DataError(f"cannot inflate {name} of shape {tuple(old.shape)} to {tuple(new.shape)}")
    dims = [_dim_index(name, o, n, channel_index, n_old, n_new) for o, n in zip(old.shape, new.shape)]
    is_old = [torch.zeros(n, dtype=torch.bool).index_fill_(0, idx, True) for idx, n in zip(dims, new.shape)]
    gate = _GATE in name
    if old.ndim == 2:  # Linear weight [out, in]
        out_old, in_old = is_old
        if gate:
            new[~out_old, :] = 0.0  # new channels' gate is its bias alone
        new[out_old[:, None] & ~in_old[None, :]] = 0.0  # nothing new feeds a pretrained output
        new[dims[0][:, None], dims[1][None, :]] = old
        mask = out_old[:, None] & in_old[None, :]
    else:  # bias [out]
        if gate:
            new[~is_old[0]] = NEW_CHANNEL_GATE_BIAS
        new[dims[0]] = old
        mask = is_old[0]
    return new, mask


def _dim_index(name: str, old: int, new: int, channel_index: torch.Tensor, n_old: int, n_new: int) -> torch.Tensor:
    """Where the old entries of one dimension go: channel dims follow the channel names; hidden dims
    (channels x expansion) keep the pretrained units first."""
    if old == new:
        return torch.arange(old)
    if old == n_old and new == n_new:
        return channel_index
    if old % n_old == 0 and new == (old // n_old) * n_new:
        return torch.arange(old)
    raise DataError(f"cannot map dimension {old} -> {new} of {name} for {n_old} -> {n_new} channels")
