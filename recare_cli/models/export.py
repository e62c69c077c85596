"""Checkpoint layouts other tools load: the original Stable Diffusion single file (CompVis/ldm for SD 1.x and
2.x, Stability's SGM for SDXL), and the web UIs' textual-inversion files.

A single-file checkpoint holds the networks under fixed prefixes (``model.diffusion_model.`` for the UNet,
``first_stage_model.`` for the VAE; the text encoders under ``cond_stage_model.transformer.`` (SD 1.x's CLIP),
``cond_stage_model.model.`` (SD 2.x's OpenCLIP), or ``conditioner.embedders.0.transformer.`` and
``conditioner.embedders.1.model.`` (SDXL's CLIP and OpenCLIP)) with the names of the original code. Diffusers
names the same tensors by its own module tree. :class:`OriginalLayout` is the bijection between the two,
built from the diffusers key names themselves (how many blocks, resnets per block, where the attention and
the resamplers sit), so it fits the tiny test models and the real ones alike. Every key is mapped or refused:
nothing is dropped silently. The changes of values: the VAE's mid-block attention is a ``Linear`` in
diffusers and a 1×1 convolution in the original (``(C, C)`` ↔ ``(C, C, 1, 1)``); OpenCLIP fuses each layer's
query, key and value projections into one tensor and stores its text projection transposed.

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
            raise BadInputError(f"{self.part} parameter '{key}' has no place in the original single-file layout "
                                "(write --format diffusers instead)")
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
    """OpenAI's CLIP text encoder (SD 1.x's, SDXL's first) is transformers' CLIP text model under ``prefix``,
    with transformers' names. Newer transformers drop the ``text_model.`` level from ``CLIPTextModel``'s names;
    the original layout (and every UI) keeps it."""

    def __init__(self, part: str, prefix: str, keys: set[str]) -> None:
        self.part, self.prefix = part, prefix
        self.flat = not any(k.startswith("text_model.") for k in keys)

    def to_original(self, key: str, value: Any) -> tuple[str, Any]:
        return f"{self.prefix}{'text_model.' if self.flat else ''}{key}", value

    def to_diffusers(self, key: str, value: Any) -> tuple[str, Any]:
        local = key[len(self.prefix):]
        if self.flat:
            if not local.startswith("text_model."):
                raise BadInputError(f"'{key}' is not a {self.part} parameter this model has")
            local = local[len("text_model."):]
        return local, value


# OpenCLIP (open_clip's own module names) ← transformers' CLIP names, outside and inside a layer
_OPENCLIP_TOP = {"embeddings.token_embedding.weight": "token_embedding.weight",
                 "embeddings.position_embedding.weight": "positional_embedding",
                 "final_layer_norm.weight": "ln_final.weight", "final_layer_norm.bias": "ln_final.bias"}
_OPENCLIP_LAYER = {"layer_norm1.": "ln_1.", "layer_norm2.": "ln_2.", "mlp.fc1.": "mlp.c_fc.",
                   "mlp.fc2.": "mlp.c_proj.", "self_attn.out_proj.": "attn.out_proj."}
_OPENCLIP_QKV = ("q_proj", "k_proj", "v_proj")  # fused, in this order, into attn.in_proj_weight / in_proj_bias
_OPENCLIP_PROJECTION = "text_projection"  # (width, projection): the transpose of transformers' Linear weight
_LAYER_RX = re.compile(r"encoder\.layers\.(\d+)\.(.+)$")
_RESBLOCK_RX = re.compile(r"transformer\.resblocks\.(\d+)\.(.+)$")


class _OpenClipMapper:
    """An OpenCLIP text encoder (SD 2.x's ViT-H, SDXL's bigG), converted to transformers' CLIP by diffusers, stored
    in open_clip's layout under ``prefix``: ``transformer.resblocks.i.{ln_1, attn, ln_2, mlp.c_fc, mlp.c_proj}``,
    ``token_embedding``, ``positional_embedding`` (a bare tensor), ``ln_final``, ``text_projection`` (a bare
    matrix, transposed), and each layer's query, key and value projections fused into one ``attn.in_proj_weight``
    / ``in_proj_bias`` (rows q, then k, then v). Not one name per tensor: it maps whole state dicts."""

    def __init__(self, part: str, prefix: str, keys: set[str]) -> None:
        self.part, self.prefix = part, prefix
        self.wrapped = any(k.startswith("text_model.") for k in keys)  # CLIPTextModelWithProjection's names

    def _refuse(self, key: str) -> BadInputError:
        return BadInputError(f"{self.part} parameter '{key}' has no place in the OpenCLIP single-file layout "
                             "(write --format diffusers instead)")

    def state_to_original(self, state: Mapping[str, Any]) -> dict[str, Any]:
        import torch

        out: dict[str, Any] = {}
        fused: dict[tuple[str, str], dict[str, Any]] = {}  # (layer, weight|bias) → {q_proj: …, k_proj: …, v_proj: …}
        for key, value in state.items():
            if key == f"{_OPENCLIP_PROJECTION}.weight":
                out[self.prefix + _OPENCLIP_PROJECTION] = value.t().contiguous()
                continue
            local = key.removeprefix("text_model.") if self.wrapped else key
            if local in _OPENCLIP_TOP:
                out[self.prefix + _OPENCLIP_TOP[local]] = value
                continue
            m = _LAYER_RX.match(local)
            if m is None or (self.wrapped and not key.startswith("text_model.")):
                raise self._refuse(key)
            layer, rest = m.groups()
            module, _, leaf = rest.rpartition(".")
            if module.startswith("self_attn.") and module[len("self_attn."):] in _OPENCLIP_QKV:
                fused.setdefault((layer, leaf), {})[module[len("self_attn."):]] = value
                continue
            inner = next((o + rest[len(d):] for d, o in _OPENCLIP_LAYER.items() if rest.startswith(d)), None)
            if inner is None:
                raise self._refuse(key)
            out[f"{self.prefix}transformer.resblocks.{layer}.{inner}"] = value
        for (layer, leaf), parts in fused.items():
            if set(parts) != set(_OPENCLIP_QKV):
                raise self._refuse(f"encoder.layers.{layer}.self_attn.*.{leaf}")
            out[f"{self.prefix}transformer.resblocks.{layer}.attn.in_proj_{leaf}"] = torch.cat(
                [parts[p] for p in _OPENCLIP_QKV], dim=0)
        return out

    def state_to_diffusers(self, checkpoint: Mapping[str, Any]) -> dict[str, Any]:
        wrap = "text_model." if self.wrapped else ""
        top = {o: d for d, o in _OPENCLIP_TOP.items()}
        layer_back = {o: d for d, o in _OPENCLIP_LAYER.items()}
        out: dict[str, Any] = {}
        for key, value in checkpoint.items():
            local = key[len(self.prefix):]
            if local == _OPENCLIP_PROJECTION:
                out[f"{_OPENCLIP_PROJECTION}.weight"] = value.t().contiguous()
                continue
            if local in top:
                out[wrap + top[local]] = value
                continue
            m = _RESBLOCK_RX.match(local)
            if m is None:
                raise BadInputError(f"'{key}' is not a {self.part} parameter this model has")
            layer, rest = m.groups()
            base = f"{wrap}encoder.layers.{layer}."
            if rest.startswith("attn.in_proj_"):
                leaf = rest[len("attn.in_proj_"):]
                for name, chunk in zip(_OPENCLIP_QKV, value.chunk(3, dim=0), strict=True):
                    out[f"{base}self_attn.{name}.{leaf}"] = chunk.contiguous()
                continue
            inner = next((d + rest[len(o):] for o, d in layer_back.items() if rest.startswith(o)), None)
            if inner is None:
                raise BadInputError(f"'{key}' is not a {self.part} parameter this model has")
            out[base + inner] = value
        return out


_Keyed = _Mapper | _TextMapper

# The text encoders of each family's single file: (pipeline part, prefix, OpenAI CLIP or OpenCLIP layout)
TEXT_LAYOUTS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "sd1": (("text_encoder", TEXT_PREFIX, "clip"),),
    "sd2": (("text_encoder", "cond_stage_model.model.", "openclip"),),
    "sdxl": (("text_encoder", "conditioner.embedders.0.transformer.", "clip"),
             ("text_encoder_2", "conditioner.embedders.1.model.", "openclip")),
}


class OriginalLayout:
    """The bijection between one pipeline's diffusers state dicts and its single-file state dict: SD 1.x's
    (``family`` ``sd1``), SD 2.x's or SDXL's original layout.

    Built from the diffusers key names of the UNet, VAE and text encoder(s) (``{part: keys}``)."""

    def __init__(self, keys: Mapping[str, Iterable[str]], family: str = "sd1") -> None:
        unet, vae = set(keys["unet"]), set(keys["vae"])
        self.family = family
        self.mappers: dict[str, _Keyed | _OpenClipMapper] = {
            "unet": _Mapper("unet", UNET_PREFIX, _unet_rules(unet), unet),
            "vae": _Mapper("vae", VAE_PREFIX, _vae_rules(vae), vae),
        }
        for part, prefix, kind in TEXT_LAYOUTS[family]:
            mapper = _TextMapper if kind == "clip" else _OpenClipMapper
            self.mappers[part] = mapper(part, prefix, set(keys[part]))
        self.parts = tuple(self.mappers)

    def to_original(self, states: Mapping[str, Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """``{part: diffusers state dict}`` → one single-file state dict; refuses a key that has no place,
        and two keys that would land on one name."""
        out: dict[str, torch.Tensor] = {}
        for part in self.parts:
            mapper = self.mappers[part]
            if isinstance(mapper, _OpenClipMapper):
                mapped = mapper.state_to_original(states[part])
            else:
                mapped = {}
                for key, value in states[part].items():
                    name, value = mapper.to_original(key, value)
                    if name in mapped:
                        raise BadInputError(f"{part} parameters '{key}' and another both map to '{name}'")
                    mapped[name] = value
            out.update(mapped)
        return out

    def to_diffusers(self, checkpoint: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
        """A single-file state dict → ``{part: diffusers state dict}``; refuses keys of no part."""
        grouped: dict[str, dict[str, torch.Tensor]] = {p: {} for p in self.parts}
        for key, value in checkpoint.items():
            part = next((p for p in self.parts if key.startswith(self.mappers[p].prefix)), None)
            if part is None:
                raise BadInputError(f"'{key}' belongs to none of the UNet, VAE and text encoder(s)")
            grouped[part][key] = value
        out: dict[str, dict[str, torch.Tensor]] = {}
        for part, items in grouped.items():
            mapper = self.mappers[part]
            if isinstance(mapper, _OpenClipMapper):
                out[part] = mapper.state_to_diffusers(items)
            else:
                out[part] = dict(mapper.to_diffusers(k, v) for k, v in items.items())
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
    """``{part: state dict}`` of a diffusers Stable Diffusion pipeline's UNet, VAE and text encoder(s)."""
    parts = [*PARTS, *(["text_encoder_2"] if getattr(pipe, "text_encoder_2", None) is not None else [])]
    return {part: getattr(pipe, part).state_dict() for part in parts}


# The activation of each text-encoder layout: OpenAI's CLIP uses quick-GELU, OpenCLIP GELU
_TEXT_ACTIVATION = {"clip": ("quick_gelu", "OpenAI CLIP"), "openclip": ("gelu", "OpenCLIP")}


def check_text_encoders(pipe: Any, family: str) -> None:
    """The single-file layout of ``family`` stores each text encoder in the layout of the model it was trained
    as (SD 1.x: OpenAI CLIP; SD 2.x: OpenCLIP; SDXL: both); refuse a model whose encoder is another."""
    if family not in TEXT_LAYOUTS:
        raise UsageError(f"--format single-file writes SD 1.x, SD 2.x and SDXL; this model is {family}: use "
                         "--format diffusers")
    for part, _, kind in TEXT_LAYOUTS[family]:
        encoder = getattr(pipe, part, None)
        act = getattr(getattr(encoder, "config", None), "hidden_act", None)
        want, what = _TEXT_ACTIVATION[kind]
        if type(encoder).__name__ not in ("CLIPTextModel", "CLIPTextModelWithProjection") or act != want:
            raise UsageError(f"--format single-file writes the {family} layout, whose {part} is {what}; this "
                             f"model's is {type(encoder).__name__} ({act}): use --format diffusers")


def check_sd1_text_encoder(pipe: Any) -> None:
    """The SD 1.x single file's text encoder is OpenAI's CLIP (quick-GELU); SD 2.x's OpenCLIP is refused."""
    check_text_encoders(pipe, "sd1")


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
                     meta: Mapping[str, Any], family: str = "sd1") -> int:
    """Write ``pipe``'s UNet, VAE and text encoder(s) as one single-file safetensors checkpoint in the original
    layout of ``family`` (sd1, sd2, sdxl), atomically, tensors in ``dtype``; returns the number of tensors."""
    from recare_cli.models.weights import write_safetensors

    check_text_encoders(pipe, family)
    states = pipeline_states(pipe)
    layout = OriginalLayout({part: state.keys() for part, state in states.items()}, family)
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
