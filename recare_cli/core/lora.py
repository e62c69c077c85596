"""LoRA adapters on a UNet's selected Linear/Conv2d modules, with peft (``recare erase --lora``).

Pure functions on modules: no paths, no printing. peft injects a low-rank pair ``(A, B)`` beside each selected
module (``W x + (α / r)·B A x``; peft's initialisation: ``A`` as ``nn.Linear``'s default, ``B = 0``, so the
adapted model starts as the base model). The frozen teacher is the same module with the adapters switched off:
no copy of any weight.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

ADAPTER = "default"  # peft's adapter name; get_peft_model_state_dict removes it from the keys


@dataclass(frozen=True)
class LoraSettings:
    """Rank ``r``, scale numerator ``alpha`` (the update is ``(alpha / r)·B A``) and the seed of ``A``'s draw."""

    rank: int
    alpha: float
    seed: int


def target_modules(names: Sequence[str]) -> list[str]:
    """The modules that own parameter ``names`` (``select_parameters``' weights and biases), first-seen order."""
    return list(dict.fromkeys(name.rsplit(".", 1)[0] for name in names))


def lora_layers(module: nn.Module) -> dict[str, Any]:
    """``{module name: peft tuner layer}`` of every adapted module."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return {name: m for name, m in module.named_modules() if isinstance(m, BaseTunerLayer)}


def add_lora(unet: nn.Module, modules: Sequence[str], settings: LoraSettings) -> list[str]:
    """Inject LoRA adapters beside ``modules`` (full names) of ``unet``; returns the names of the trainable
    adapter parameters (``named_parameters`` order). Every other parameter is frozen.

    ``A`` is drawn by peft's own initialisation from the CPU generator seeded with ``settings.seed`` inside a
    forked RNG state: the same on every device, and the caller's generators are not advanced.
    """
    from peft import LoraConfig, inject_adapter_in_model

    if not modules:
        raise ValueError("no modules to adapt")
    # peft annotates lora_alpha as int; its scale is alpha / r for any number (diffusers' metadata keeps floats)
    config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha,  # type: ignore[arg-type]
                        target_modules=list(modules))
    unet.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        inject_adapter_in_model(config, unet, adapter_name=ADAPTER)
    adapted = set(lora_layers(unet))
    if adapted != set(modules):  # a name of target_modules also matches modules whose name ends with it
        raise ValueError(f"peft adapted {len(adapted)} modules where {len(modules)} were selected")
    return [name for name, p in unet.named_parameters() if p.requires_grad]


@contextlib.contextmanager
def adapters_disabled(unet: nn.Module) -> Iterator[None]:
    """Within the block ``unet`` computes the base model (the teacher): every adapter is switched off."""
    layers = list(lora_layers(unet).values())
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)


def adapter_tensors(unet: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' tensors as peft and diffusers name them: ``<module>.lora_A.weight``, ``<module>.lora_B.weight``."""
    from peft import get_peft_model_state_dict

    return {k: v.detach() for k, v in get_peft_model_state_dict(unet, adapter_name=ADAPTER).items()}


def merged_values(unet: nn.Module) -> dict[str, torch.Tensor]:
    """``{<module>.weight: W + (α / r)·B A}`` of every adapted module, named as in the UNet without adapters
    (peft's delta: the matrix product for Linear and 1×1 convolutions, the composed convolution otherwise)."""
    out = {}
    with torch.no_grad():
        for name, layer in lora_layers(unet).items():
            base = layer.get_base_layer().weight
            out[f"{name}.weight"] = base + layer.get_delta_weight(ADAPTER).to(base.dtype)
    return out


def remove_lora(unet: nn.Module, *, merge: bool) -> None:
    """Put each adapted module's base layer back in place, with the adapter's update added (``merge``) or
    dropped. Afterwards ``unet`` has its original module tree (and ``state_dict`` keys)."""
    with torch.no_grad():
        for name, layer in lora_layers(unet).items():
            base = layer.get_base_layer()
            if merge:
                base.weight.add_(layer.get_delta_weight(ADAPTER).to(base.weight.dtype))
            parent, _, attr = name.rpartition(".")
            setattr(unet.get_submodule(parent) if parent else unet, attr, base)
