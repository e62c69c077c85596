"""What the UNet is conditioned on: a tensor of text-encoder states (SD 1.x/2.x), or SDXL's states with its added
conditions (docs/architectures.md).

SDXL's UNet reads, besides ``encoder_hidden_states``, ``added_cond_kwargs``: ``text_embeds``, the pooled (projected)
output of its second text encoder, and ``time_ids``, six numbers per sample: the original size, the crop's top-left
corner and the target size, ``(H, W, 0, 0, H, W)`` for an uncropped image of ``H × W`` pixels. ``SDXLCondition``
keeps the three row-aligned and answers the few tensor operations the engines apply to a batch of conditions
(rows, ``shape``, ``expand``, ``repeat``, ``repeat_interleave``), so the engines treat both kinds alike and SD 1.x/2.x
conditions stay plain tensors (their arithmetic, and so their outputs, unchanged).

Pure functions on modules and tensors: no paths, no loading.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class SDXLCondition:
    """Row-aligned SDXL conditions: ``hidden`` (N, L, D₁ + D₂), ``text_embeds`` (N, P), ``time_ids`` (N, 6)."""

    hidden: torch.Tensor
    text_embeds: torch.Tensor
    time_ids: torch.Tensor

    @property
    def shape(self) -> torch.Size:
        return self.hidden.shape

    def _map(self, fn: Any) -> SDXLCondition:
        return SDXLCondition(fn(self.hidden), fn(self.text_embeds), fn(self.time_ids))

    def __getitem__(self, rows: slice | list[int] | torch.Tensor) -> SDXLCondition:
        return self._map(lambda t: t[rows])

    def expand(self, n: int, *_: int) -> SDXLCondition:
        """``n`` rows from one (as ``tensor.expand(n, *shape[1:])``)."""
        return self._map(lambda t: t.expand(n, *t.shape[1:]))

    def repeat(self, n: int, *_: int) -> SDXLCondition:
        return self._map(lambda t: t.repeat(n, *([1] * (t.dim() - 1))))

    def repeat_interleave(self, n: int, dim: int = 0) -> SDXLCondition:
        assert dim == 0, "conditions repeat along their rows"
        return self._map(lambda t: t.repeat_interleave(n, dim=0))

    def to(self, *args: Any, **kwargs: Any) -> SDXLCondition:
        return self._map(lambda t: t.to(*args, **kwargs))


Condition = torch.Tensor | SDXLCondition


def cat_conditions(parts: Sequence[Condition]) -> Condition:
    """The rows of ``parts`` in order (``torch.cat`` for tensors)."""
    if all(isinstance(p, torch.Tensor) for p in parts):
        return torch.cat(list(parts))  # type: ignore[arg-type]
    if not all(isinstance(p, SDXLCondition) for p in parts):
        raise TypeError("cannot join SDXL conditions with plain text-encoder states")
    xl: list[SDXLCondition] = list(parts)  # type: ignore[arg-type]
    return SDXLCondition(torch.cat([p.hidden for p in xl]), torch.cat([p.text_embeds for p in xl]),
                         torch.cat([p.time_ids for p in xl]))


def unet_kwargs(cond: Condition) -> dict[str, Any]:
    """The UNet call's keyword arguments for ``cond``."""
    if isinstance(cond, SDXLCondition):
        return {"encoder_hidden_states": cond.hidden,
                "added_cond_kwargs": {"text_embeds": cond.text_embeds, "time_ids": cond.time_ids}}
    return {"encoder_hidden_states": cond}


def time_ids(height: int, width: int, n: int, *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(n, 6) ``(H, W, 0, 0, H, W)``: original size, crop corner (none), target size, as the SDXL pipeline's
    defaults for an image of ``height × width`` pixels."""
    row = torch.tensor([[height, width, 0, 0, height, width]], dtype=dtype, device=device)
    return row.repeat(n, 1)


def sdxl_states(text_encoders: Sequence[Any], ids: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden, pooled) as ``StableDiffusionXLPipeline.encode_prompt`` computes them from token ids, one (N, 77) per
    encoder: each encoder's penultimate hidden states (``hidden_states[-2]``, no final layer norm) concatenated along
    the width, and the pooled projected output of the encoder that has one (``CLIPTextModelWithProjection``'s
    ``text_embeds``: the second)."""
    states, pooled = [], None
    for encoder, token_ids in zip(text_encoders, ids, strict=True):
        out = encoder(token_ids, output_hidden_states=True)
        if pooled is None and out[0].dim() == 2:
            pooled = out[0]
        states.append(out.hidden_states[-2])
    if pooled is None:
        raise ValueError("no text encoder with a pooled (projected) output")
    return torch.cat(states, dim=-1), pooled


@torch.no_grad()
def encode_sdxl(tokenizers: Sequence[Any], text_encoders: Sequence[Any], prompts: Sequence[str], *,
                size: tuple[int, int], device: torch.device, batch_size: int = 64) -> SDXLCondition:
    """SDXL conditions of ``prompts`` for images of ``size`` = (H, W) pixels, batched."""
    from recare_cli.core.diffusion import tokenize

    hidden, pooled = [], []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        h, p = sdxl_states(text_encoders, [tokenize(tok, chunk).to(device) for tok in tokenizers])
        hidden.append(h)
        pooled.append(p)
    states = torch.cat(hidden)
    return SDXLCondition(states, torch.cat(pooled), time_ids(*size, len(prompts), dtype=states.dtype, device=device))


def zeros_like(cond: SDXLCondition) -> SDXLCondition:
    """All-zero states and pooled embedding with the same size ids: the SDXL pipeline's unconditional input when no
    negative prompt is given and its ``force_zeros_for_empty_prompt`` is set (SDXL base's)."""
    return SDXLCondition(torch.zeros_like(cond.hidden), torch.zeros_like(cond.text_embeds), cond.time_ids)
