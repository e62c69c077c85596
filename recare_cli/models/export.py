"""Checkpoint layouts other tools load: the original Stable Diffusion (CompVis/ldm) single file, and the
web UIs' textual-inversion files.

A Stable Diffusion 1.x single-file checkpoint holds the three networks under fixed prefixes
(``model.diffusion_model.`` for the UNet, ``first_stage_model.`` for the VAE,
``cond_stage_model.transformer.`` for the CLIP text encoder) with the names of the original code. Diffusers
names the same tensors by its own module tree. :class:`OriginalLayout` is the bijection between the two,
built from the diffusers key names themselves (how many blocks, resnets per block, where the attention and
the resamplers sit), so it fits the tiny test models and SD 1.x alike. Every key is mapped or refused:
nothing is dropped silently. The only change of values is a reshape: the VAE's mid-block attention is a
``Linear`` in diffusers and a 1×1 convolution in the original (``(C, C)`` ↔ ``(C, C, 1, 1)``).

The facts of the mapping are those of diffusers' own converters (``scripts/convert_diffusers_to_original_
stable_diffusion.py`` and ``loaders/single_file_utils.py``); the code is recare's own. The same mapping reads
the UNet of an original-layout checkpoint back (``original_unet_to_diffusers``, for ``--weights``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from recare_cli.errors import BadInputError, UsageError

if TYPE_CHECKING:
    import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer."
PARTS = ("unet", "vae", "text_encoder")

# Inside a UNet resnet block: diffusers name → original name (everything else keeps its name).
_UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
                "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
_UNET_TOP = {"time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
             "conv_in.": "input_blocks.0.0.", "conv_norm_out.": "out.0.", "conv_out.": "out.2.",
             # SDXL's added conditioning (pooled text embedding and size/crop ids)
             "add_embedding.linear_1.": "label_emb.0.0.", "add_embedding.linear_2.": "label_emb.0.2."}
_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_VAE_CONV_ATTENTION = ("q", "k", "v", "proj_out")  # 1×1 convolutions in the original VAE
_VAE_TOP = {"quant_conv.", "post_quant_conv."}
_VAE_CODER = {"conv_in.": "conv_in.", "conv_out.": "conv_out.", "conv_norm_out.": "norm_out."}


@dataclass(frozen=True)
class _Rule:
    """Keys under ``diffusers`` are the keys under ``original``; ``inner`` renames the module path inside."""

    diffusers: str
    original: str
    inner: Mapping[str, str] = field(default_factory=dict)
    conv: bool = False  # the VAE attention's Linear weights are 1×1 convolutions in the original


def _indices(keys: Iterable[str], pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := rx.match(k))})


def _unet_rules(keys: set[str]) -> list[_Rule]:
    rules = [_Rule(d, o) for d, o in _UNET_TOP.items()]
    downs = _indices(keys, r"down_blocks\.(\d+)\.")
    ups = _indices(keys, r"up_blocks\.(\d+)\.")
    per_block = len(_indices(keys, r"down_blocks\.0\.resnets\.(\d+)\.")) if downs else 0
    step = per_block + 1  # resnets of a down block, then its downsampler
    for i in downs:
        for j in range(per_block):
            n = 1 + i * step + j
            rules.append(_Rule(f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{n}.0.", _UNET_RESNET))
            rules.append(_Rule(f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{n}.1."))
        rules.append(_Rule(f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{1 + i * step + per_block}.0.op."))
    mid_attention = any(k.startswith("mid_block.attentions.0.") for k in keys)
    rules.append(_Rule("mid_block.resnets.0.", "middle_block.0.", _UNET_RESNET))
    rules.append(_Rule("mid_block.attentions.0.", "middle_block.1."))
    rules.append(_Rule("mid_block.resnets.1.", f"middle_block.{2 if mid_attention else 1}.", _UNET_RESNET))
    for i in ups:
        for j in range(step):  # an up block has one resnet more than a down block
            n = i * step + j
            rules.append(_Rule(f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{n}.0.", _UNET_RESNET))
            rules.append(_Rule(f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{n}.1."))
        last = i * step + per_block
        attended = any(k.startswith(f"up_blocks.{i}.attentions.{per_block}.") for k in keys)
        rules.append(_Rule(f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{last}.{2 if attended else 1}."))
    return rules


def _vae_rules(keys: set[str]) -> list[_Rule]:
    rules = [_Rule(top, top) for top in _VAE_TOP]
    for coder in ("encoder", "decoder"):
        rules += [_Rule(f"{coder}.{d}", f"{coder}.{o}") for d, o in _VAE_CODER.items()]
        rules.append(_Rule(f"{coder}.mid_block.attentions.0.", f"{coder}.mid.attn_1.", _VAE_ATTENTION, conv=True))
        for k in range(2):
            rules.append(_Rule(f"{coder}.mid_block.resnets.{k}.", f"{coder}.mid.block_{k + 1}.", _VAE_RESNET))
    for i in _indices(keys, r"encoder\.down_blocks\.(\d+)\."):
        for j in _indices(keys, rf"encoder\.down_blocks\.{i}\.resnets\.(\d+)\."):
            rules.append(_Rule(f"encoder.down_blocks.{i}.resnets.{j}.", f"encoder.down.{i}.block.{j}.", _VAE_RESNET))
        rules.append(_Rule(f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample."))
    ups = _indices(keys, r"decoder\.up_blocks\.(\d+)\.")
    for i in ups:
        level = len(ups) - 1 - i  # the original numbers the decoder's levels from the bottom
        for j in _indices(keys, rf"decoder\.up_blocks\.{i}\.resnets\.(\d+)\."):
            rules.append(_Rule(f"decoder.up_blocks.{i}.resnets.{j}.", f"decoder.up.{level}.block.{j}.", _VAE_RESNET))
        rules.append(_Rule(f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{level}.upsample."))
    return rules


def _join(prefix: str, module: str, leaf: str) -> str:
    return f"{prefix}{module}.{leaf}" if module else f"{prefix}{leaf}"


class _Mapper:
    """One network's key bijection: rules matched by the longest module prefix, in either direction."""

    def __init__(self, part: str, prefix: str, rules: list[_Rule], keys: set[str]) -> None:
        self.part, self.prefix = part, prefix
        used = [r for r in rules if any(k.startswith(r.diffusers) for k in keys)]  # modules this model has
        self.forward = {r.diffusers: r for r in used}
        self.backward = {r.original: r for r in used}
        if len(self.backward) != len(used):  # would be a defect of the rules above
            raise AssertionError(f"two {part} modules share an original name")

    @staticmethod
    def _match(key: str, table: Mapping[str, _Rule]) -> _Rule | None:
        parts = key.split(".")
        for n in range(len(parts) - 1, 0, -1):
            rule = table.get(".".join(parts[:n]) + ".")
            if rule is not None:
                return rule
        return None

    def to_original(self, key: str, value: Any) -> tuple[str, Any]:
        rule = self._match(key, self.forward)
        if rule is None:
            raise BadInputError(f"{self.part} parameter '{key}' has no place in the Stable Diffusion 1.x single-file "
                                "layout (write --format diffusers instead)")
        module, _, leaf = key[len(rule.diffusers):].rpartition(".")
        module = rule.inner.get(module, module)
        if rule.conv and module in _VAE_CONV_ATTENTION and leaf == "weight" and value.dim() == 2:
            value = value.reshape(*value.shape, 1, 1)
        return self.prefix + _join(rule.original, module, leaf), value

    def to_diffusers(self, key: str, value: Any) -> tuple[str, Any]:
        local = key[len(self.prefix):]
        rule = self._match(local, self.backward)
        if rule is None:
            raise BadInputError(f"'{key}' is not a {self.part} parameter this model has")
        module, _, leaf = local[len(rule.original):].rpartition(".")
        back = {o: d for d, o in rule.inner.items()}
        if rule.conv and module in _VAE_CONV_ATTENTION and leaf == "weight" and value.dim() == 4:
            value = value.reshape(value.shape[0], value.shape[1])
        return _join(rule.diffusers, back.get(module, module), leaf), value


class _TextMapper:
    """The SD 1.x text encoder is transformers' CLIP text model under ``cond_stage_model.transformer.``, with
    transformers' names. Newer transformers drop the ``text_model.`` level from ``CLIPTextModel``'s names;
    the original layout (and every UI) keeps it."""

    part = "text_encoder"
    prefix = TEXT_PREFIX

    def __init__(self, keys: set[str]) -> None:
        self.flat = not any(k.startswith("text_model.") for k in keys)

    def to_original(self, key: str, value: Any) -> tuple[str, Any]:
        return f"{TEXT_PREFIX}{'text_model.' if self.flat else ''}{key}", value

    def to_diffusers(self, key: str, value: Any) -> tuple[str, Any]:
        local = key[len(TEXT_PREFIX):]
        if self.flat:
            if not local.startswith("text_model."):
                raise BadInputError(f"'{key}' is not a text-encoder parameter this model has")
            local = local[len("text_model."):]
        return local, value


class OriginalLayout:
    """The bijection between one pipeline's diffusers state dicts and the SD 1.x single-file state dict.

    Built from the diffusers key names of the UNet, VAE and text encoder (``{part: keys}``)."""

    def __init__(self, keys: Mapping[str, Iterable[str]]) -> None:
        unet, vae, text = (set(keys[p]) for p in PARTS)
        self.mappers: dict[str, _Mapper | _TextMapper] = {
            "unet": _Mapper("unet", UNET_PREFIX, _unet_rules(unet), unet),
            "vae": _Mapper("vae", VAE_PREFIX, _vae_rules(vae), vae),
            "text_encoder": _TextMapper(text),
        }

    def to_original(self, states: Mapping[str, Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """``{part: diffusers state dict}`` → one single-file state dict; refuses a key that has no place,
        and two keys that would land on one name."""
        out: dict[str, torch.Tensor] = {}
        for part in PARTS:
            mapper = self.mappers[part]
            for key, value in states[part].items():
                name, mapped = mapper.to_original(key, value)
                if name in out:
                    raise BadInputError(f"{part} parameters '{key}' and another both map to '{name}'")
                out[name] = mapped
        return out

    def to_diffusers(self, checkpoint: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
        """A single-file state dict → ``{part: diffusers state dict}``; refuses keys of no part."""
        out: dict[str, dict[str, torch.Tensor]] = {p: {} for p in PARTS}
        for key, value in checkpoint.items():
            part = next((p for p in PARTS if key.startswith(self.mappers[p].prefix)), None)
            if part is None:
                raise BadInputError(f"'{key}' belongs to none of the UNet, VAE and text encoder")
            name, mapped = self.mappers[part].to_diffusers(key, value)
            out[part][name] = mapped
        return out


def original_unet_to_diffusers(checkpoint: Mapping[str, torch.Tensor],
                               unet_keys: Iterable[str]) -> dict[str, torch.Tensor]:
    """The ``model.diffusion_model.`` tensors of an original-layout checkpoint under the diffusers names of a
    UNet whose keys are ``unet_keys`` (the structure is read from them, as for writing); a key without a place
    is refused."""
    keys = set(unet_keys)
    mapper = _Mapper("unet", UNET_PREFIX, _unet_rules(keys), keys)
    out: dict[str, torch.Tensor] = {}
    for key, value in checkpoint.items():
        name, mapped = mapper.to_diffusers(key, value)
        if name in out:
            raise BadInputError(f"'{key}' and another both map to unet parameter '{name}'")
        out[name] = mapped
    return out


def unet_module_names(unet_keys: Iterable[str]) -> Callable[[str], str]:
    """A function from a diffusers UNet module path to the original (LDM/SGM) path of the same module
    (``down_blocks.1.attentions.0.proj_in`` → ``input_blocks.4.1.proj_in`` on SDXL), for the UNet whose state
    dict keys are ``unet_keys``; a module the layout has no place for is refused."""
    keys = set(unet_keys)
    mapper = _Mapper("unet", UNET_PREFIX, _unet_rules(keys), keys)

    def original(module: str) -> str:
        name, _ = mapper.to_original(f"{module}.weight", None)
        return name[len(UNET_PREFIX):-len(".weight")]

    return original


def pipeline_states(pipe: Any) -> dict[str, dict[str, torch.Tensor]]:
    """``{part: state dict}`` of a diffusers Stable Diffusion pipeline's UNet, VAE and text encoder."""
    return {part: getattr(pipe, part).state_dict() for part in PARTS}


def check_sd1_text_encoder(pipe: Any) -> None:
    """The single-file layout written here is SD 1.x's: its text encoder is OpenAI's CLIP (quick-GELU).
    SD 2.x's OpenCLIP encoder is stored in another layout (fused attention projections); refuse it."""
    config = pipe.text_encoder.config
    act = getattr(config, "hidden_act", None)
    if type(pipe.text_encoder).__name__ != "CLIPTextModel" or act != "quick_gelu":
        raise UsageError(f"--format single-file writes the Stable Diffusion 1.x layout, whose text encoder is "
                         f"OpenAI CLIP; this model's is {type(pipe.text_encoder).__name__} ({act}), as in SD 2.x "
                         "or later: use --format diffusers")


# ------------------------------------------------------------------------------------------------
# Textual-inversion files for the web UIs

UI_EMBEDDING_KEY = "emb_params"  # the key AUTOMATIC1111 and ComfyUI read from a one-tensor safetensors file
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def embedding_file_name(token: str) -> str:
    """The file stem a UI takes as the prompt word: the token without characters file systems refuse
    (``<nudity-adv0>`` → ``nudity-adv0``)."""
    stem = _UNSAFE.sub("", token).strip(".")
    if not stem:
        raise BadInputError(f"token '{token}' leaves no usable file name")
    return stem


# ------------------------------------------------------------------------------------------------
# Writers

UI_METADATA = {"format": "pt"}  # what Hugging Face's loaders expect of a safetensors file of PyTorch tensors


def _cast(tensors: Mapping[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}


def save_single_file(pipe: Any, path: str | os.PathLike[str], *, dtype: torch.dtype,
                     meta: Mapping[str, Any]) -> int:
    """Write ``pipe``'s UNet, VAE and text encoder as one SD 1.x single-file safetensors checkpoint
    (atomically, tensors in ``dtype``); returns the number of tensors."""
    from recare_cli.models.weights import write_safetensors

    check_sd1_text_encoder(pipe)
    states = pipeline_states(pipe)
    layout = OriginalLayout({part: state.keys() for part, state in states.items()})
    tensors = _cast(layout.to_original(states), dtype)
    write_safetensors(path, tensors, {**UI_METADATA, **meta})
    return len(tensors)


def save_ui_embeddings(folder: str | os.PathLike[str], tokens: Mapping[str, torch.Tensor], *,
                       dtype: torch.dtype, meta: Mapping[str, Any]) -> list[str]:
    """One ``<name>.safetensors`` per token in ``folder``, holding ``{"emb_params": (n, D)}``; returns the file
    names. Two tokens that would share a file name are refused."""
    from recare_cli.models.weights import write_safetensors

    names = {token: f"{embedding_file_name(token)}.safetensors" for token in tokens}
    seen: dict[str, str] = {}
    for token, name in names.items():
        if name.lower() in seen:  # case-insensitive file systems (Windows, macOS) would merge them
            raise BadInputError(f"tokens '{seen[name.lower()]}' and '{token}' would both be written as {name}")
        seen[name.lower()] = token
    for token, value in tokens.items():
        if isinstance(value, list):  # SDXL: one vector per text encoder, under the UIs' SDXL keys
            tensors = {key: v.reshape(-1, v.shape[-1]) for key, v in zip(("clip_l", "clip_g"), value, strict=True)}
        else:
            tensors = {UI_EMBEDDING_KEY: value.reshape(-1, value.shape[-1])}
        write_safetensors(os.path.join(folder, names[token]), _cast(tensors, dtype),
                          {**UI_METADATA, "token": token, **meta})
    return list(names.values())
