"""Erased UNets written by other tools, read as ``--weights``: never by running code.

What the field's tools write (docs/erase.md, "Reading other tools' checkpoints"):

* ESD (``esd_sd.py``) and UCE (``uce_sd_erase.py``): ``safetensors.torch.save_file`` of the changed parameters
  only, under the diffusers UNet's own names (``<module>.weight``/``.bias``), without metadata;
* the ReCARE reference (``ReCARE-Diffusers-UNet.pt``) and ESD's older train script (its ``…-diffusers.pt``):
  ``torch.save(unet.state_dict())``, a pickled full UNet state dict under diffusers names; other tools wrap one
  in a dict under ``state_dict``, ``model_state_dict`` or ``unet``;
* ESD's older train script (its compvis ``.pt``) and single-file checkpoints: the original Stable Diffusion
  layout, the UNet under ``model.diffusion_model.`` beside the VAE, text encoder and schedule buffers;
* text encoders erased by other tools: AdvUnlearn's ``TextEncoder-….pt`` (``torch.save`` of its
  ``CustomTextEncoder`` wrapper: the CLIP text model under ``text_encoder.text_model.…``, plus the same tensors
  again under the wrapper's aliases ``embedding.``, ``encoder.``, ``final_layer_norm.``) and a transformers
  ``text_encoder`` state dict (``text_model.…``).

Pickles are read with ``torch.load(weights_only=True)`` only: tensors and plain containers; a pickle that needs
code to load is refused. These files record no base model, so the caller checks their names and shapes against
the loaded UNet and says that the base model cannot be verified.
"""

from __future__ import annotations

import os
import pickle
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recare_cli.errors import BadInputError

if TYPE_CHECKING:
    import torch

WRAPPERS = ("state_dict", "model_state_dict", "unet")  # dict entries that hold the state dict
PIPELINE_PREFIX = "unet."  # a whole pipeline's (or module wrapper's) state dict names its UNet's tensors so


def is_safetensors(path: str | os.PathLike[str]) -> bool:
    """safetensors starts with an 8-byte header length and the JSON header's ``{``; torch's zip format (``PK``)
    and pickles (``\\x80``) do not."""
    with open(path, "rb") as fh:
        head = fh.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def read_pickle(path: str | os.PathLike[str]) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU (memory-mapped when in torch's zip format), with one
    line naming the file for a pickle that needs code and for a file that is no checkpoint."""
    import torch

    p = Path(path)
    if not p.is_file():
        raise BadInputError("no such file", source=str(p))
    zipped = zipfile.is_zipfile(p)
    with open(p, "rb") as fh:
        pickled = fh.read(1) == b"\x80"  # a pickle of protocol 2 or later, as torch.save writes
    if not (zipped or pickled):
        raise BadInputError("neither a safetensors file nor a PyTorch checkpoint (torch's zip format or a pickle)",
                            source=str(p))
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols on its way to refusing a file
            warnings.simplefilter("ignore")
            return torch.load(str(p), map_location="cpu", weights_only=True, mmap=zipped)
    except pickle.UnpicklingError as err:
        if "weights only" not in str(err).lower():  # a damaged pickle, not a refused one
            raise BadInputError(f"not a readable PyTorch checkpoint ({(str(err).strip().splitlines() or [''])[0]})",
                                source=str(p)) from err
        raise BadInputError("a pickle that needs code to load, or more than tensors and plain containers: "
                            "refused (recare reads pickles weights-only, torch.load(weights_only=True))",
                            source=str(p)) from err
    except Exception as err:  # bytes that are no checkpoint fail in many ways (RuntimeError, EOFError, KeyError…)
        first = (str(err).strip().splitlines() or [""])[0]
        raise BadInputError(f"neither a safetensors file nor a PyTorch checkpoint ({type(err).__name__}: {first})",
                            source=str(p)) from err


def state_dict_of(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """The ``{name: tensor}`` inside a loaded checkpoint: the object itself, or the dict under one of
    ``WRAPPERS`` (nested wrappers too)."""
    import torch

    seen = 0
    while isinstance(obj, dict) and seen < 4:
        if obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
            return obj
        inner = next((obj[k] for k in WRAPPERS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj, seen = inner, seen + 1
    raise BadInputError("holds no state dict (parameter name → tensor), neither itself nor under "
                        f"{', '.join(repr(w) for w in WRAPPERS)}", source=source)


@dataclass
class FieldWeights:
    """A field checkpoint's UNet tensors under the loaded UNet's diffusers names."""

    tensors: dict[str, torch.Tensor]
    layout: str  # "diffusers", "diffusers (pipeline)" or "original"
    ignored: int  # tensors of other parts (VAE, text encoder, schedule, EMA) that are not applied


def _refuse_lora(keys: list[str], source: str) -> None:
    lora = next((k for k in keys if ".lora_" in k or k.startswith("lora_") or ".lora." in k), None)
    if lora is not None:
        raise BadInputError(f"a LoRA file of another tool (tensor '{lora}'): --weights takes LoRA files of recare "
                            "erase --lora; load others with diffusers' load_lora_weights", source=source)


def unet_weights(tensors: Mapping[str, torch.Tensor], unet_keys: list[str], source: str) -> FieldWeights:
    """The UNet part of a field checkpoint renamed to ``unet_keys``' (diffusers) names. Names and shapes are
    checked by the caller against the UNet itself; here only the layout is recognised."""
    from recare_cli.models.export import UNET_PREFIX, original_unet_to_diffusers

    keys = list(tensors)
    _refuse_lora(keys, source)
    if any(k.startswith(UNET_PREFIX) for k in keys):
        part = {k: v for k, v in tensors.items() if k.startswith(UNET_PREFIX)}
        try:
            mapped = original_unet_to_diffusers(part, unet_keys)
        except BadInputError as err:
            raise BadInputError(f"{err} (original Stable Diffusion layout)", source=source) from err
        return FieldWeights(mapped, "original", len(tensors) - len(part))
    if any(k.startswith(PIPELINE_PREFIX) for k in keys) and not any(k.startswith(PIPELINE_PREFIX) for k in unet_keys):
        part = {k.removeprefix(PIPELINE_PREFIX): v for k, v in tensors.items() if k.startswith(PIPELINE_PREFIX)}
        return FieldWeights(part, "diffusers (pipeline)", len(tensors) - len(part))
    return FieldWeights(dict(tensors), "diffusers", 0)


TEXT_MODEL = "text_model."  # transformers' CLIPTextModel names (Stable Diffusion's text_encoder checkpoint)
TEXT_WRAPPER = "text_encoder."  # a wrapper's (AdvUnlearn's CustomTextEncoder) or a pipeline's text encoder
# a constant arange that transformers 4 saved as a buffer and transformers 5 does not keep: never trained
POSITION_IDS = "embeddings.position_ids"


def is_text_encoder(tensors: Mapping[str, Any]) -> bool:
    """Whether a field checkpoint holds a text encoder: CLIP text-model names, and no UNet."""
    from recare_cli.models.export import UNET_PREFIX

    keys = list(tensors)
    if any(k.startswith((UNET_PREFIX, PIPELINE_PREFIX)) for k in keys):
        return False
    return any(k.startswith((TEXT_MODEL, TEXT_WRAPPER + TEXT_MODEL)) for k in keys)


def text_encoder_weights(tensors: Mapping[str, torch.Tensor], source: str) -> FieldWeights:
    """The text-encoder tensors of a field checkpoint, under ``text_model.…`` names (``weights.text_encoder_state``
    maps them to the loaded encoder's own and checks names and shapes)."""
    _refuse_lora(list(tensors), source)
    wrapped = any(k.startswith(TEXT_WRAPPER) for k in tensors)
    part = {k.removeprefix(TEXT_WRAPPER): v for k, v in tensors.items()
            if (k.startswith(TEXT_WRAPPER) or not wrapped)
            and not k.endswith(POSITION_IDS)}
    return FieldWeights(part, "text encoder (wrapped)" if wrapped else "text encoder", len(tensors) - len(part))
