"""LoRA files of ``recare erase --lora`` (``recare.unet-lora``): what diffusers' ``pipe.load_lora_weights``
reads, plus recare's metadata; recare applies them as merged weights.

Layout (diffusers' for a UNet LoRA in peft's naming): tensors ``unet.<module>.lora_A.weight`` (r, in[, kh, kw])
and ``unet.<module>.lora_B.weight`` (out, r[, 1, 1]); the safetensors metadata key ``lora_adapter_metadata``
holds the ``LoraConfig`` arguments diffusers builds the adapter from (``unet.r``, ``unet.lora_alpha``,
``unet.target_modules``), so a scale ``α / r`` other than 1 loads as trained. The update of a module's weight
is ``(α / r)·B A`` (for a convolution ``Σ_r B[o, r]·A[r, i, kh, kw]``).

``kohya_tensors`` writes the same adapters in kohya naming (``recare export --format kohya-lora``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from recare_cli.errors import BadInputError
from recare_cli.models.weights import LORA_FORMAT, VERSION, write_safetensors

if TYPE_CHECKING:
    import torch

PREFIX = "unet."  # diffusers' prefix of a pipeline's UNet adapters (text-encoder ones would be text_encoder.)
DIFFUSERS_KEY = "lora_adapter_metadata"  # diffusers.loaders.lora_base.LORA_ADAPTER_METADATA_KEY


def lora_modules(tensors: Mapping[str, Any]) -> list[str]:
    """The adapted modules of peft-named adapter tensors (``<module>.lora_A.weight``), first-seen order."""
    return list(dict.fromkeys(key.rsplit(".lora_", 1)[0] for key in tensors))


def save_unet_lora(path: str | os.PathLike[str], tensors: Mapping[str, torch.Tensor], *, rank: int, alpha: float,
                   base_unet: str, dtype: torch.dtype | None = None, **meta: Any) -> None:
    """Write peft-named adapter tensors (``core.lora.adapter_tensors``) as a ``recare.unet-lora`` file."""
    config = {"r": rank, "lora_alpha": alpha, "target_modules": lora_modules(tensors)}
    values = {PREFIX + k: (v.to(dtype) if dtype is not None else v) for k, v in tensors.items()}
    write_safetensors(path, values, {"format": LORA_FORMAT, "version": str(VERSION), "values": "lora",
                                     "base_unet": base_unet, **meta,
                                     DIFFUSERS_KEY: {PREFIX + k: v for k, v in config.items()}})


def lora_scale(meta: Mapping[str, str], source: str) -> float:
    """``α / r`` from the file's diffusers metadata."""
    try:
        config = json.loads(meta[DIFFUSERS_KEY])
        rank, alpha = config[f"{PREFIX}r"], config[f"{PREFIX}lora_alpha"]
        scale = float(alpha) / int(rank)
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as err:
        raise BadInputError(f"no usable LoRA rank and alpha ({err})", source=source, field=DIFFUSERS_KEY) from err
    return scale


def lora_new_values(state: Mapping[str, torch.Tensor], tensors: Mapping[str, torch.Tensor], meta: Mapping[str, str],
                    source: str) -> dict[str, torch.Tensor]:
    """``{<module>.weight: W + (α / r)·B A}`` for every adapted module of a ``recare.unet-lora`` file, ``W`` from
    ``state`` (the UNet's ``state_dict``), computed in float32. Keys that are not a module's A/B pair, or whose
    shapes do not fit the module's weight, raise ``BadInputError``."""
    import torch

    scale = lora_scale(meta, source)
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        name = key.removeprefix(PREFIX)
        module, sep, part = name.rpartition(".lora_")
        if not key.startswith(PREFIX) or not sep or part not in ("A.weight", "B.weight"):
            raise BadInputError(f"tensor '{key}' is not a UNet LoRA tensor (unet.<module>.lora_A/B.weight)",
                                source=source)
        pairs.setdefault(module, {})[part[0]] = value
    out = {}
    for module, pair in pairs.items():
        weight = state.get(f"{module}.weight")
        if weight is None:
            raise BadInputError(f"LoRA module '{module}' is not in the model's UNet", source=source)
        if set(pair) != {"A", "B"}:
            raise BadInputError(f"LoRA module '{module}' lacks its lora_{'B' if 'A' in pair else 'A'} tensor",
                                source=source)
        a, b = pair["A"].float(), pair["B"].float()
        rank = a.shape[0]
        fits = (b.dim() == weight.dim() and tuple(b.shape[:2]) == (weight.shape[0], rank)
                and b.shape[2:] == (1,) * (weight.dim() - 2) and tuple(a.shape[1:]) == tuple(weight.shape[1:]))
        if not fits:
            raise BadInputError(f"LoRA module '{module}': A {tuple(a.shape)} and B {tuple(b.shape)} do not fit its "
                                f"weight {tuple(weight.shape)}", source=source)
        b2 = b.reshape(b.shape[0], rank)
        delta = b2 @ a if a.dim() == 2 else torch.einsum("or,rikl->oikl", b2, a)
        out[f"{module}.weight"] = weight.float() + scale * delta
    return out


# ------------------------------------------------------------------------------------------------
# kohya naming, the layout the web UIs (AUTOMATIC1111, ComfyUI) and sd-scripts read

KOHYA_PREFIX = "lora_unet_"  # sd-scripts' LORA_PREFIX_UNET, joined to the module path with "_"
KOHYA_DOWN, KOHYA_UP, KOHYA_ALPHA = ".lora_down.weight", ".lora_up.weight", ".alpha"


def kohya_name(module: str) -> str:
    """``down_blocks.0.attentions.0.proj_in`` → ``lora_unet_down_blocks_0_attentions_0_proj_in`` (sd-scripts
    names a module by the path of its own UNet with dots as underscores: for SD 1.x/2.x that UNet has
    diffusers' names; for SDXL it is the original (SGM) UNet, whose path ``rename`` gives in ``kohya_tensors``)."""
    return KOHYA_PREFIX + module.replace(".", "_")


def kohya_tensors(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, str], source: str,
                  dtype: torch.dtype | None = None,
                  rename: Callable[[str], str] | None = None) -> dict[str, torch.Tensor]:
    """A ``recare.unet-lora`` file's adapters in kohya naming: ``<name>.lora_down.weight`` = A,
    ``<name>.lora_up.weight`` = B (in ``dtype``), ``<name>.alpha`` = α as a float32 scalar, so that a reader's
    ``alpha / rank`` (rank = A's first dimension) is the file's ``α / r``. ``rename`` maps a diffusers module
    path to the path sd-scripts' UNet gives it (SDXL: ``models.export.unet_module_names``); none keeps the
    diffusers path (SD 1.x/2.x). Module order is kept."""
    import torch

    scale = lora_scale(meta, source)
    out: dict[str, torch.Tensor] = {}
    seen: dict[str, str] = {}
    for key, value in tensors.items():
        module, sep, part = key.removeprefix(PREFIX).rpartition(".lora_")
        if not key.startswith(PREFIX) or not sep or part not in ("A.weight", "B.weight"):
            raise BadInputError(f"tensor '{key}' is not a UNet LoRA tensor (unet.<module>.lora_A/B.weight)",
                                source=source)
        name = kohya_name(rename(module) if rename is not None else module)
        if seen.setdefault(name, module) != module:  # cannot happen for real module paths; never merge two
            raise BadInputError(f"LoRA modules '{seen[name]}' and '{module}' share the kohya name '{name}'",
                                source=source)
        cast = value.to(dtype) if dtype is not None else value
        out[name + (KOHYA_DOWN if part == "A.weight" else KOHYA_UP)] = cast
        if part == "A.weight":
            out[name + KOHYA_ALPHA] = torch.tensor(scale * value.shape[0], dtype=torch.float32)
    return out
