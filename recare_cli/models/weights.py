"""Trained UNet and text-encoder parameters and learned token embeddings: safetensors with metadata, applied to
pipelines.

Three file kinds (docs/erase.md has every metadata key):

* ``recare.unet-weights`` (written by ``recare erase`` and ``recare invert --keep-erased``): the
  trained UNet parameters only, as their *new values* (not deltas), so loading is
  ``unet.load_state_dict(tensors, strict=False)``; metadata ``base_unet`` is the fingerprint of the
  UNet they were trained from, and applying them to any other UNet is refused.
* ``recare.text-encoder-weights`` (written by ``recare erase --method advunlearn``): the trained text-encoder
  parameters as their new values, named as in Stable Diffusion's ``text_encoder`` checkpoint
  (``text_model.encoder.…``); metadata ``base_text_encoder``, and applying them to another text encoder is
  refused. ``recare sample --weights`` takes both weight kinds and knows each file's from its ``format``.
* ``recare.unet-lora`` (written by ``recare erase --lora``): LoRA adapters in the layout diffusers'
  ``load_lora_weights`` reads (``models/lora.py``); applied here as the merged new values, with the same
  ``base_unet`` check.
* ``recare.embeddings`` (written by ``recare invert``): ``{token: (1, D) tensor}``, the layout
  diffusers' ``load_textual_inversion`` reads; metadata ``base_text_encoder``.

Other tools' erased UNets and text encoders (ESD, UCE, the ReCARE reference's ``.pt``, AdvUnlearn's text
encoders, original-layout checkpoints) are taken by ``--weights`` too (``models.field``): checked by name and
shape, since they record no base model. Pickles are
read with ``torch.load(weights_only=True)`` only.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recare_cli.errors import BadInputError
from recare_cli.io.atomic import atomic_path, check_output_dir
from recare_cli.io.streams import STDIO, open_output

if TYPE_CHECKING:
    import torch

WEIGHTS_FORMAT = "recare.unet-weights"
TEXT_ENCODER_FORMAT = "recare.text-encoder-weights"
WEIGHT_FORMATS = (WEIGHTS_FORMAT, TEXT_ENCODER_FORMAT)  # what --weights takes
EMBEDDINGS_FORMAT = "recare.embeddings"
CHECKPOINT_FORMAT = "recare.erase-checkpoint"
LORA_FORMAT = "recare.unet-lora"
VERSION = 1


def metadata_strings(meta: Mapping[str, Any]) -> dict[str, str]:
    """safetensors metadata is str → str: strings stay, everything else becomes compact JSON."""
    return {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True, separators=(",", ":"))
            for k, v in meta.items()}


def decode_metadata(meta: Mapping[str, str], keys: tuple[str, ...] = ("provenance", "tokens", "hyperparameters",
                                                                      "adversarial", "seed", "rounds",
                                                                      "version", "lora")) -> dict[str, Any]:
    out: dict[str, Any] = dict(meta)
    for key in keys:
        if key in out:
            with contextlib.suppress(TypeError, ValueError):
                out[key] = json.loads(out[key])
    return out


def write_safetensors(path: str | os.PathLike[str], tensors: Mapping[str, torch.Tensor],
                      meta: Mapping[str, Any]) -> None:
    """Atomic write (``-`` = stdout, refused on a terminal); tensors are made contiguous on CPU."""
    from safetensors.torch import save, save_file

    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    if str(path) == STDIO:
        data = bytearray(save(flat, metadata=metadata_strings(meta)))
        n = int.from_bytes(data[:8], "little")
        data[8:8 + n] = canonical_header(bytes(data[8:8 + n]))
        with open_output(STDIO, binary=True) as out:
            out.write(bytes(data))
        return
    with atomic_path(path) as tmp:
        save_file(flat, str(tmp), metadata=metadata_strings(meta))
        with open(tmp, "r+b") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = canonical_header(fh.read(n))
            fh.seek(8)
            fh.write(header)


def canonical_header(header: bytes) -> bytes:
    """The same safetensors header with keys in sorted order, padded to the same length.

    safetensors (0.8) writes the metadata map in a random order, so the same tensors and metadata gave
    different bytes on every run; sorting restores "same command, same bytes". Tensor offsets are relative
    to the data section, whose position does not change.
    """
    parsed = json.loads(header)
    text = json.dumps(parsed, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    if len(text) > len(header):  # cannot happen for serde_json output; keep the library's bytes then
        return header
    return text + b" " * (len(header) - len(text))


def read_safetensors(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    if not p.is_file():
        raise BadInputError("no such file", source=str(p))
    try:
        with safe_open(str(p), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
            tensors = {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError, ValueError) as err:
        raise BadInputError(f"not a readable safetensors file ({err})", source=str(p)) from err
    return tensors, meta


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """A safetensors file's metadata, without reading its tensors. A PyTorch checkpoint (another tool's
    ``.pt``/``.ckpt``/``.bin``) has none: it is read once with ``weights_only=True`` (memory-mapped), so that a
    pickle that needs code is refused here, before any model is loaded, and ``{}`` is returned."""
    from safetensors import SafetensorError, safe_open

    from recare_cli.models.field import is_safetensors, read_pickle, state_dict_of

    p = Path(path)
    if not p.is_file():
        raise BadInputError("no such file", source=str(p))
    if not is_safetensors(p):
        state_dict_of(read_pickle(p), str(p))
        return {}
    try:
        with safe_open(str(p), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except (SafetensorError, OSError, ValueError) as err:
        raise BadInputError(f"not a readable safetensors file ({err})", source=str(p)) from err


# What each of recare's safetensors formats holds, for messages that say where a file belongs.
FORMAT_CONTENTS = {
    WEIGHTS_FORMAT: "trained UNet parameters from recare erase",
    TEXT_ENCODER_FORMAT: "trained text-encoder parameters from recare erase --method advunlearn",
    EMBEDDINGS_FORMAT: "textual-inversion tokens from recare invert",
    CHECKPOINT_FORMAT: "the state of an unfinished recare erase run",
    LORA_FORMAT: "LoRA adapters from recare erase --lora",
}
# Formats an option takes besides the one it names: --weights applies a LoRA file as merged weights.
ALSO_TAKEN = {WEIGHTS_FORMAT: (LORA_FORMAT,)}


def read_weights(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a ``--weights`` file: safetensors (recare's, or another tool's), or a PyTorch
    checkpoint read with ``weights_only=True`` (``models.field``; no metadata)."""
    from recare_cli.models.field import is_safetensors, read_pickle, state_dict_of

    p = Path(path)
    if not p.is_file():
        raise BadInputError("no such file", source=str(p))
    if is_safetensors(p):
        return read_safetensors(p)
    return state_dict_of(read_pickle(p), str(p)), {}


def is_recare_file(meta: Mapping[str, str]) -> bool:
    """Whether a file is recare's: its metadata names a recare format, or records the base UNet it was made for
    (then that is checked). Other tools' files carry no metadata, or only ``format: pt``."""
    found = str(meta.get("format", ""))
    return found in FORMAT_CONTENTS or found.startswith("recare.") or "base_unet" in meta


def check_format(path: str | os.PathLike[str], meta: Mapping[str, str], wanted: str | tuple[str, ...],
                 takes: Mapping[str, str]) -> None:
    """Refuse a file of another recare format than ``wanted`` (one format or several), saying in one line what
    it is and where it goes (``takes``: format → the option or command that reads it). Files without a recare
    format (written by other tools) are left to the reader's own checks."""
    found = meta.get("format")
    accepted = (wanted,) if isinstance(wanted, str) else wanted
    also = {x for w in accepted for x in ALSO_TAKEN.get(w, ())}
    if found is None or found in accepted or found not in FORMAT_CONTENTS or found in also:
        return
    where = takes.get(found)
    advice = f": pass it with {where}" if where else ""
    raise BadInputError(f"{path} is a {found} file ({FORMAT_CONTENTS[found]}){advice}")


# ------------------------------------------------------------------------------------------------
# UNet weights


def save_unet_weights(path: str | os.PathLike[str], tensors: Mapping[str, torch.Tensor], *, base_unet: str,
                      dtype: torch.dtype | None = None, **meta: Any) -> None:
    values = {k: (v.to(dtype) if dtype is not None else v) for k, v in tensors.items()}
    write_safetensors(path, values, {"format": WEIGHTS_FORMAT, "version": str(VERSION), "values": "new",
                                     "base_unet": base_unet, **meta})


def check_unet_weights(unet: torch.nn.Module, tensors: Mapping[str, torch.Tensor], source: str) -> None:
    state = unet.state_dict()
    for key, value in tensors.items():
        if key not in state:
            raise BadInputError(f"parameter '{key}' is not in the model's UNet", source=source)
        if tuple(value.shape) != tuple(state[key].shape):
            raise BadInputError(f"parameter '{key}' has shape {tuple(value.shape)}, the UNet's is "
                                f"{tuple(state[key].shape)}", source=source)


def apply_unet_weights(pipe: Any, path: str | os.PathLike[str], *, base_unet: str | None = None) -> dict[str, str]:
    """Load ``recare erase`` weights (new values, or a LoRA file merged in) into ``pipe.unet`` (a diffusers
    pipeline, or a bare UNet).

    ``base_unet`` is the fingerprint of the pipeline's *unmodified* UNet (``SDBundle.unet_fingerprint``);
    when omitted it is computed from the UNet now, so call this before any other change. Weights made
    for another base model raise ``BadInputError``. Returns the file's metadata.
    """
    tensors, meta = read_weights(path)
    unet = getattr(pipe, "unet", pipe)
    if is_recare_file(meta):
        _load_unet_weights(unet, tensors, meta, str(path), base_unet)
    else:
        _load_field(pipe, tensors, str(path))
    return meta


def apply_weight_files(bundle: Any, paths: Sequence[str | os.PathLike[str]]) -> list[dict[str, Any]]:
    """Apply ``recare erase`` outputs to an ``SDBundle`` in order, each file read once: UNet weights to its
    UNet, text-encoder weights (``format`` ``recare.text-encoder-weights``) to its text encoder. Returns the
    record provenance keeps of each (path, fingerprint of its tensors, base UNet or base text encoder, tensor
    count)."""
    from recare_cli.io.digest import sha256_file
    from recare_cli.models.fingerprint import state_fingerprint

    applied: list[dict[str, Any]] = []
    for path in paths:
        tensors, meta = read_weights(path)
        record: dict[str, Any] = {"path": str(path), "fingerprint": state_fingerprint(tensors)}
        if not is_recare_file(meta):  # another tool's file: identified by its bytes, no base model to check
            record["sha256"] = sha256_file(path)
            record["layout"], part = _load_field(bundle.pipe, tensors, str(path))
            record[f"base_{part}"] = None
        elif meta.get("format") == TEXT_ENCODER_FORMAT:
            _load_text_encoder_weights(bundle.pipe.text_encoder, tensors, meta, str(path),
                                       bundle.text_encoder_fingerprint, bundle.unet_fingerprint)
            record["base_text_encoder"] = meta.get("base_text_encoder")
        else:
            _load_unet_weights(bundle.pipe.unet, tensors, meta, str(path), bundle.unet_fingerprint)
            record["base_unet"] = meta.get("base_unet")
        record["tensors"] = len(tensors)
        applied.append(record)
    return applied


def check_base_unet(meta: Mapping[str, str], current: str, source: str) -> None:
    """Refuse a recare file made for another base UNet than the one fingerprinted ``current``."""
    made_for = meta.get("base_unet")
    if made_for is None:
        raise BadInputError("no 'base_unet' fingerprint in the metadata: not weights written by recare erase",
                            source=source, field="base_unet")
    if made_for != current:
        raise BadInputError(f"made for base UNet {made_for}, but this model's UNet is {current}",
                            source=source, field="base_unet")


def _load_unet_weights(unet: Any, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, str], source: str,
                       base_unet: str | None) -> None:
    from recare_cli.models.fingerprint import module_fingerprint

    check_base_unet(meta, base_unet or module_fingerprint(unet), source)
    if not tensors:
        raise BadInputError("holds no tensors", source=source)
    state = unet.state_dict()
    if meta.get("format") == LORA_FORMAT:
        from recare_cli.models.lora import lora_new_values

        tensors = lora_new_values(state, tensors, meta, source)
    check_unet_weights(unet, tensors, source)
    unet.load_state_dict({k: v.to(state[k].dtype) for k, v in tensors.items()}, strict=False)


def _load_field(pipe: Any, tensors: Mapping[str, torch.Tensor], source: str) -> tuple[str, str]:
    """Load another tool's erased UNet or text encoder (``models.field`` layouts; ``pipe`` a pipeline, or a bare
    UNet) after checking every name and shape against the model, with one warning that the base model cannot be
    verified. Returns the layout's name and the part loaded (``unet`` or ``text_encoder``)."""
    from recare_cli import console
    from recare_cli.models.field import is_text_encoder, text_encoder_weights, unet_weights

    text_encoder = getattr(pipe, "text_encoder", None)
    if text_encoder is not None and is_text_encoder(tensors):
        part, found = "text_encoder", text_encoder_weights(tensors, source)
        text_encoder.load_state_dict(text_encoder_state(text_encoder, found.tensors, source), strict=False)
    else:
        unet = getattr(pipe, "unet", pipe)
        state = unet.state_dict()
        part, found = "unet", unet_weights(tensors, list(state), source)
        if not found.tensors:
            raise BadInputError("holds no UNet tensors", source=source)
        check_unet_weights(unet, found.tensors, source)
        unet.load_state_dict({k: v.to(state[k].dtype) for k, v in found.tensors.items()}, strict=False)
    what = "UNet" if part == "unet" else "text-encoder"
    skipped = (f"; {found.ignored} other tensors (other parts, or the same tensors under a wrapper's aliases) are "
               "not applied" if found.ignored else "")
    console.warn(f"{source}: not a recare file ({found.layout} layout), so the base model it was made for cannot "
                 f"be verified: {len(found.tensors)} {what} tensors applied after checking their names and shapes"
                 f"{skipped}")
    return found.layout, part


# ------------------------------------------------------------------------------------------------
# Text-encoder weights

CHECKPOINT_PREFIX = "text_model."  # Stable Diffusion's text_encoder checkpoint names its tensors text_model.…


def save_text_encoder_weights(path: str | os.PathLike[str], tensors: Mapping[str, torch.Tensor], *,
                              base_text_encoder: str, dtype: torch.dtype | None = None, **meta: Any) -> None:
    """Write trained text-encoder parameters (``{name: new value}``, names as ``named_parameters()`` gives
    them) under the checkpoint's names (``text_model.…``), whatever the transformers version's nesting."""
    values = {CHECKPOINT_PREFIX + k.removeprefix(CHECKPOINT_PREFIX): (v.to(dtype) if dtype is not None else v)
              for k, v in tensors.items()}
    write_safetensors(path, values, {"format": TEXT_ENCODER_FORMAT, "version": str(VERSION), "values": "new",
                                     "base_text_encoder": base_text_encoder, **meta})


def text_encoder_state(text_encoder: Any, tensors: Mapping[str, torch.Tensor], source: str) -> dict[str, Any]:
    """``tensors`` renamed to ``text_encoder``'s own state-dict names (with or without ``text_model.``) and
    cast to its dtypes, after checking every name and shape."""
    state = text_encoder.state_dict()
    out = {}
    for key, value in tensors.items():
        bare = key.removeprefix(CHECKPOINT_PREFIX)
        name = next((n for n in (key, bare, CHECKPOINT_PREFIX + bare) if n in state), None)
        if name is None:
            raise BadInputError(f"parameter '{key}' is not in the model's text encoder", source=source)
        if tuple(value.shape) != tuple(state[name].shape):
            raise BadInputError(f"parameter '{key}' has shape {tuple(value.shape)}, the text encoder's is "
                                f"{tuple(state[name].shape)}", source=source)
        out[name] = value.to(state[name].dtype)
    return out


def apply_text_encoder_weights(pipe: Any, path: str | os.PathLike[str], *,
                               base_text_encoder: str | None = None) -> dict[str, str]:
    """Load ``recare erase --method advunlearn`` weights into ``pipe.text_encoder`` (a diffusers pipeline, or
    a bare text encoder). ``base_text_encoder`` is the fingerprint of the *unmodified* text encoder
    (``SDBundle.text_encoder_fingerprint``; computed now when omitted). Returns the file's metadata."""
    tensors, meta = read_safetensors(path)
    _load_text_encoder_weights(getattr(pipe, "text_encoder", pipe), tensors, meta, str(path), base_text_encoder,
                               None)
    return meta


def _load_text_encoder_weights(text_encoder: Any, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, str],
                               source: str, base_text_encoder: str | None, base_unet: str | None) -> None:
    from recare_cli import console
    from recare_cli.models.fingerprint import module_fingerprint

    made_for = meta.get("base_text_encoder")
    if made_for is None:
        raise BadInputError("no 'base_text_encoder' fingerprint in the metadata: not text-encoder weights written "
                            "by recare erase", source=source, field="base_text_encoder")
    current = base_text_encoder or module_fingerprint(text_encoder)
    if made_for != current:
        raise BadInputError(f"made for base text encoder {made_for}, but this model's text encoder is {current}",
                            source=source, field="base_text_encoder")
    if not tensors:
        raise BadInputError("holds no tensors", source=source)
    trained_with = meta.get("base_unet")
    if base_unet is not None and trained_with is not None and trained_with != base_unet:
        console.warn(f"{source}: trained against base UNet {trained_with}, this model's is {base_unet} (same text "
                     "encoder): applying it")
    text_encoder.load_state_dict(text_encoder_state(text_encoder, tensors, source), strict=False)


def load_reference_unet(path: str | os.PathLike[str], unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Read a reference ``ReCARE-Diffusers-UNet.pt`` (a full UNet ``state_dict`` pickle) safely:
    ``torch.load(weights_only=True)`` refuses code objects. Returns the tensors, checked against ``unet``."""
    from recare_cli.models.field import read_pickle, state_dict_of

    state = state_dict_of(read_pickle(path), str(path))
    check_unet_weights(unet, state, str(path))
    return state


def save_pipeline(pipe: Any, folder: str | os.PathLike[str]) -> None:
    """Write a complete diffusers pipeline folder (safetensors), appearing only when finished."""
    target = Path(folder)
    check_output_dir(target)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        from recare_cli.errors import RefusedError

        raise RefusedError(f"'{target}' exists and is not an empty folder; refusing to overwrite it")
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        pipe.save_pretrained(str(tmp), safe_serialization=True)
        if target.exists():
            target.rmdir()
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ------------------------------------------------------------------------------------------------
# Token embeddings


def save_embeddings(path: str | os.PathLike[str], tokens: Mapping[str, torch.Tensor], *, base_text_encoder: str,
                    **meta: Any) -> None:
    write_safetensors(path, {t: v.reshape(1, -1) if v.dim() == 1 else v for t, v in tokens.items()},
                      {"format": EMBEDDINGS_FORMAT, "version": str(VERSION), "tokens": list(tokens),
                       "base_text_encoder": base_text_encoder, **meta})


def read_embeddings(path: str | os.PathLike[str], *, dim: int,
                    text_encoder: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``{token: (n, D)}`` in the file's token order, checked against a text encoder of width ``dim``
    and (when the file records one) fingerprint ``text_encoder``."""
    tensors, meta = read_safetensors(path)
    if not tensors:
        raise BadInputError("holds no embeddings", source=str(path))
    order = list(tensors)
    if "tokens" in meta:
        try:
            listed = json.loads(meta["tokens"])
        except ValueError:
            listed = None
        if isinstance(listed, list) and sorted(listed) == sorted(order):
            order = listed
    out = {}
    for token in order:
        value = tensors[token].reshape(-1, tensors[token].shape[-1]).float()
        if value.shape[-1] != dim:
            raise BadInputError(f"embedding '{token}' has size {value.shape[-1]}, the text encoder's is {dim} "
                                "(made for another text encoder)", source=str(path), field=token)
        out[token] = value
    made_for = meta.get("base_text_encoder")
    if made_for is not None and text_encoder is not None and made_for != text_encoder:
        raise BadInputError(f"embeddings made for text encoder {made_for}, but this model's is {text_encoder}",
                            source=str(path), field="base_text_encoder")
    return out, meta


def load_embeddings_into(pipe: Any, path: str | os.PathLike[str], *, text_encoder: str | None = None) -> list[str]:
    """Add the tokens of a ``recare invert`` file to ``pipe`` (plain diffusers ``load_textual_inversion``)."""
    dim = pipe.text_encoder.get_input_embeddings().weight.shape[1]
    tokens, _ = read_embeddings(path, dim=dim, text_encoder=text_encoder)
    try:
        pipe.load_textual_inversion(list(tokens.values()), token=list(tokens))
    except ValueError as err:
        raise BadInputError(f"cannot add the tokens: {err}", source=str(path)) from err
    return list(tokens)
