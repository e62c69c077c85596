"""CLIP embeddings of short token sequences and of images, batched, L2-normalised.

CLIP's text attention is causal and the pooled output is read at the EOS position, so the
embedding of ``[BOS, ids…, EOS]`` equals the embedding of the same sequence padded to 77 tokens:
padding is pure waste (tests check the equality). Sequences in a batch are padded only to the
longest one in that batch, after EOS, where the causal mask makes them invisible.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch


def _l2(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


@torch.no_grad()
def embed_token_sequences(model: Any, sequences: Sequence[Sequence[int]], *, bos: int, eos: int,
                          pad: int, batch_size: int = 1024,
                          progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Embed each ``[bos, *seq, eos]`` with ``model`` (a ``CLIPModel``); returns float32 (N, D)."""
    device = model.text_projection.weight.device
    order = sorted(range(len(sequences)), key=lambda i: (len(sequences[i]), i))
    out = np.empty((len(sequences), model.config.projection_dim), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        length = max(len(sequences[i]) for i in chunk) + 2
        ids = torch.full((len(chunk), length), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), length), dtype=torch.long)
        for row, i in enumerate(chunk):
            seq = [bos, *sequences[i], eos]
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        pooled = model.text_model(input_ids=ids.to(device), attention_mask=mask.to(device)).pooler_output
        feats = _l2(model.text_projection(pooled).float())
        out[chunk] = feats.cpu().numpy()
        if progress is not None:
            progress(len(chunk))
    return out


@torch.no_grad()
def embed_pixel_batch(model: Any, pixel_values: torch.Tensor) -> np.ndarray:
    """L2-normalised image embeddings (float32) of preprocessed pixel values."""
    param = model.visual_projection.weight
    pooled = model.vision_model(pixel_values=pixel_values.to(param.device, param.dtype)).pooler_output
    return _l2(model.visual_projection(pooled).float()).cpu().numpy()


@torch.no_grad()
def embed_padded_sequences(model: Any, sequences: Sequence[Sequence[int]], *, bos: int, eos: int,
                           length: int = 77, pad: int = 0, batch_size: int = 1024) -> np.ndarray:
    """Embed each ``[bos, *seq, eos]`` as the ReCARE reference feeds CLIP (OpenAI's ``clip.tokenize``): padded
    to ``length`` with ``pad``, no attention mask, in batches of ``batch_size`` in the given order. The pooled
    output is the same as :func:`embed_token_sequences`' up to the last bits, which t-SNE amplifies: the
    reference's word and target embeddings are made this way."""
    device = model.text_projection.weight.device
    out = np.empty((len(sequences), model.config.projection_dim), dtype=np.float32)
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start : start + batch_size]
        ids = torch.full((len(chunk), length), pad, dtype=torch.long)
        for row, seq in enumerate(chunk):
            full = [bos, *seq, eos]
            ids[row, : len(full)] = torch.tensor(full)
        pooled = model.text_model(input_ids=ids.to(device)).pooler_output
        out[start : start + len(chunk)] = _l2(model.text_projection(pooled).float()).cpu().numpy()
    return out
