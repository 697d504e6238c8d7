"""Parameter-efficient fine-tuning: LoRA adapters (the `peft` library) on a backbone's layers, as the
alternative to unfreezing its last blocks, merged back into the weights before the model is saved, so a
registered LoRA fine-tune is an ordinary checkpoint (same keys, same pyfunc, no peft at serving time)."""

from __future__ import annotations

from torch import nn

from biosig.errors import ConfigError

LORA_MARK = "lora_"  # what peft's adapter parameters are named


def add_lora(backbone: nn.Module, targets: tuple[str, ...], rank: int, alpha: float, dropout: float) -> list[str]:
    """Inject LoRA adapters into `backbone` in place (peft.inject_adapter_in_model) on the modules whose
    names end in one of `targets` (every nn.Linear when empty); only the adapters stay trainable among
    the backbone's parameters. Returns the adapted module names."""
    from peft import LoraConfig, inject_adapter_in_model

    names = sorted(name for name, module in backbone.named_modules()
                   if name and (name.rsplit(".", 1)[-1] in targets if targets else isinstance(module, nn.Linear)))
    if not names:
        raise ConfigError(f"adaptation=lora: the backbone has no layers named {', '.join(targets) or '(any Linear)'}")
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=names, bias="none")
    inject_adapter_in_model(config, backbone)
    return names


def has_lora(module: nn.Module) -> bool:
    return any(LORA_MARK in name for name, _ in module.named_parameters())


def merge_lora(backbone: nn.Module) -> None:
    """Fold every adapter into its base layer's weights and put the base layer back in its place."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in list(backbone.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(backbone.get_submodule(parent_name) if parent_name else backbone, child, module.get_base_layer())
