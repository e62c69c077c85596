"""Loading a transformers CLIP model (folder or hub id) for mining and scoring."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from recare_cli.models.device import dtype_name, resolve_device, resolve_dtype
from recare_cli.models.fingerprint import combine, module_fingerprint, vocab_fingerprint
from recare_cli.models.hub import load_pretrained

if TYPE_CHECKING:
    import torch

DEFAULT_CLIP = "openai/clip-vit-base-patch32"
CLIP_ENV = "RECARE_CLIP"
CLIP_HINT = f"pass a local folder with --clip or {CLIP_ENV}"


def default_clip() -> str:
    return os.environ.get(CLIP_ENV) or DEFAULT_CLIP


@dataclass
class ClipBundle:
    model: Any  # transformers.CLIPModel
    tokenizer: Any  # transformers.CLIPTokenizer
    processor: Any  # CLIP image processor
    name: str
    fingerprint: str
    device: torch.device
    dtype: torch.dtype

    @property
    def embed_dim(self) -> int:
        return int(self.model.config.projection_dim)

    def identity(self) -> dict[str, str]:
        """What provenance records about this model."""
        return {"name": self.name, "fingerprint": self.fingerprint, "dtype": dtype_name(self.dtype)}


def pad_id(tokenizer: Any) -> int:
    """The id that pads a prompt: the tokenizer's pad token, else its end-of-text token. A pad id of 0 (SD 2's
    OpenCLIP tokenizer pads with '!', id 0) is a pad id, not a missing one."""
    pad = tokenizer.pad_token_id
    return int(tokenizer.eos_token_id if pad is None else pad)


def image_processor_class() -> Any:
    import transformers

    # transformers 5 names the PIL backend explicitly; the default class wants torchvision.
    return getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor


def load_clip(name: str, *, device: str = "auto", dtype: str = "auto") -> ClipBundle:
    from transformers import CLIPModel, CLIPTokenizer

    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    model = load_pretrained(CLIPModel.from_pretrained, name, what="CLIP model", hint=CLIP_HINT,
                            dtype=dt)
    tokenizer = load_pretrained(CLIPTokenizer.from_pretrained, name, what="CLIP tokenizer",
                                hint=CLIP_HINT)
    processor = load_pretrained(image_processor_class().from_pretrained, name,
                                what="CLIP image processor", hint=CLIP_HINT)
    model.eval().requires_grad_(False).to(dev)
    fingerprint = combine(module_fingerprint(model), vocab_fingerprint(tokenizer.get_vocab()))
    return ClipBundle(model, tokenizer, processor, name, fingerprint, dev, dt)
