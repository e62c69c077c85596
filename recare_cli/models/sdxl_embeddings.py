"""SDXL token embeddings: one vector per text encoder per token, in the layout diffusers loads SDXL embeddings.

A ``recare.embeddings`` file made on SDXL holds two tensors, ``clip_l`` (n, D₁) for ``text_encoder`` (CLIP ViT-L,
768 wide in SDXL base) and ``clip_g`` (n, D₂) for ``text_encoder_2`` (OpenCLIP bigG, 1280), row i being token i of
the metadata's ``tokens`` list, and the metadata ``architecture: sdxl``, ``base_text_encoder`` and
``base_text_encoder_2``. Plain diffusers loads it as it loads any SDXL embedding::

    state = safetensors.torch.load_file(path)
    pipe.load_textual_inversion(state["clip_l"], token=tokens, text_encoder=pipe.text_encoder,
                                tokenizer=pipe.tokenizer)
    pipe.load_textual_inversion(state["clip_g"], token=tokens, text_encoder=pipe.text_encoder_2,
                                tokenizer=pipe.tokenizer_2)

SD 1.x/2.x files (``{token: (1, D)}``, ``models.weights``) and SDXL files are not interchangeable: giving either to
the other kind of model is refused with one line (exit 3).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from recare_cli.errors import BadInputError
from recare_cli.models.weights import EMBEDDINGS_FORMAT, VERSION, read_safetensors, write_safetensors

if TYPE_CHECKING:
    import torch

KEYS = ("clip_l", "clip_g")  # text_encoder, text_encoder_2


def save_sdxl_embeddings(path: str | os.PathLike[str], tokens: Sequence[str], vectors: Sequence[torch.Tensor], *,
                         base_text_encoder: str, base_text_encoder_2: str, **meta: Any) -> None:
    """``vectors``: (n, D₁) and (n, D₂), row i for ``tokens[i]``."""
    tensors = {key: v.reshape(len(tokens), -1) for key, v in zip(KEYS, vectors, strict=True)}
    write_safetensors(path, tensors, {"format": EMBEDDINGS_FORMAT, "version": str(VERSION), "tokens": list(tokens),
                                      "architecture": "sdxl", "base_text_encoder": base_text_encoder,
                                      "base_text_encoder_2": base_text_encoder_2, **meta})


def is_sdxl(tensors: Mapping[str, Any]) -> bool:
    return set(KEYS) <= set(tensors)


def check_kind(path: str | os.PathLike[str], tensors: Mapping[str, Any], *, sdxl_model: bool) -> None:
    """Refuse SDXL embeddings for an SD 1.x/2.x model and the reverse (one line, exit 3)."""
    if is_sdxl(tensors) and not sdxl_model:
        raise BadInputError("SDXL embeddings (clip_l and clip_g: one vector per text encoder), but the model is not "
                            "SDXL; use embeddings learned on this model", source=str(path))
    if sdxl_model and not is_sdxl(tensors):
        raise BadInputError("embeddings for one text encoder (SD 1.x/2.x), but SDXL has two: learn them on this "
                            "model (recare invert or attack writes clip_l and clip_g)", source=str(path))


def read_sdxl_embeddings(path: str | os.PathLike[str], *, dims: Sequence[int],
                         text_encoders: Sequence[str | None] = (None, None)) -> dict[str, list[torch.Tensor]]:
    """``{token: [(1, D₁), (1, D₂)]}`` in the file's token order, checked against the encoders' widths ``dims`` and,
    when the file records them, fingerprints ``text_encoders``."""
    tensors, meta = read_safetensors(path)
    check_kind(path, tensors, sdxl_model=True)
    try:
        tokens = json.loads(meta.get("tokens", "null"))
    except ValueError:
        tokens = None
    rows = [tensors[key].reshape(-1, tensors[key].shape[-1]).float() for key in KEYS]
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens) or \
            any(len(r) != len(tokens) for r in rows):
        raise BadInputError("no 'tokens' list with one name per row of clip_l and clip_g", source=str(path),
                            field="tokens")
    for key, value, dim in zip(KEYS, rows, dims, strict=True):
        if value.shape[-1] != dim:
            raise BadInputError(f"{key} has width {value.shape[-1]}, the text encoder's is {dim} (made for another "
                                "model)", source=str(path), field=key)
    for field, fingerprint in zip(("base_text_encoder", "base_text_encoder_2"), text_encoders, strict=True):
        made_for = meta.get(field)
        if made_for is not None and fingerprint is not None and made_for != fingerprint:
            raise BadInputError(f"embeddings made for text encoder {made_for}, but this model's is {fingerprint}",
                                source=str(path), field=field)
    return {token: [r[i:i + 1] for r in rows] for i, token in enumerate(tokens)}


def read_model_tokens(bundle: Any, path: str | os.PathLike[str]) -> dict[str, Any]:
    """The tokens of a ``recare.embeddings`` file for ``bundle``'s model (``models.sd.SDBundle``): ``{token: (n, D)}``
    (``models.weights.read_embeddings``), or on SDXL ``{token: [(1, D₁), (1, D₂)]}``; a file of the other kind is
    refused (exit 3)."""
    from recare_cli.models.weights import read_embeddings

    xl = bundle.architecture.sdxl
    check_kind(path, read_safetensors(path)[0], sdxl_model=xl)
    if xl:
        dims = [int(e.get_input_embeddings().weight.shape[1]) for e in bundle.text_encoders]
        return dict(read_sdxl_embeddings(path, dims=dims, text_encoders=(bundle.text_encoder_fingerprint,
                                                                          bundle.text_encoder_2_fingerprint)))
    dim = int(bundle.pipe.text_encoder.get_input_embeddings().weight.shape[1])
    tokens, _ = read_embeddings(path, dim=dim, text_encoder=bundle.text_encoder_fingerprint)
    return dict(tokens)


def load_sdxl_embeddings_into(pipe: Any, path: str | os.PathLike[str], *,
                              text_encoders: Sequence[str | None] = (None, None)) -> list[str]:
    """Add the tokens of an SDXL embeddings file to both tokenizers and text encoders (diffusers'
    ``load_textual_inversion``, once per encoder, as for any SDXL embedding)."""
    import torch

    dims = [pipe.text_encoder.get_input_embeddings().weight.shape[1],
            pipe.text_encoder_2.get_input_embeddings().weight.shape[1]]
    found = read_sdxl_embeddings(path, dims=dims, text_encoders=text_encoders)
    tokens = list(found)
    try:
        for i, (encoder, tokenizer) in enumerate(((pipe.text_encoder, pipe.tokenizer),
                                                  (pipe.text_encoder_2, pipe.tokenizer_2))):
            rows = torch.cat([found[t][i] for t in tokens])
            pipe.load_textual_inversion(list(rows), token=tokens, text_encoder=encoder, tokenizer=tokenizer)
    except ValueError as err:
        raise BadInputError(f"cannot add the tokens: {err}", source=str(path)) from err
    return tokens
