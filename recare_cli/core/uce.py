"""UCE, Unified Concept Editing (Gandikota et al.): the closed-form edit of the UNet's cross-attention
key/value projections (authors' code: rohitgandikota/unified-concept-editing, trainscripts/uce_sd_erase.py).

For every projection ``W`` (``attn2.to_k``, ``attn2.to_v``) the authors solve

    W_new = (λW + Σ_e s_e·(W c_g(e)) c_eᵀ + Σ_p s_p·(W c_p) c_pᵀ) · (λI + Σ_e s_e·c_e c_eᵀ + Σ_p s_p·c_p c_pᵀ)⁻¹

(``c`` = one text-encoder state per concept; ``e`` erased, ``g(e)`` its guide, ``p`` preserved;
``s_e`` = erase scale, ``s_p`` = preserve scale, ``λ`` = lamb). Writing ``B`` for the right-hand
matrix, the left-hand one is ``W·(B + Σ_e s_e (c_g(e) − c_e) c_eᵀ)``, so

    W_new = W + Σ_e s_e·(W c_g(e) − W c_e)·(B⁻¹ c_e)ᵀ

the same matrix, computed here: one solve shared by every layer (``B`` depends on the text states
only), then a rank-(number of erased concepts) update per layer, in float64. Tensors in, tensors out.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

PROJECTIONS = ("to_k", "to_v")  # the authors' edited modules: names containing attn2 and ending in these


def edited_modules(names: Iterable[str]) -> list[str]:
    """The module names UCE edits, in the order given (``unet.named_modules()`` order): the
    cross-attention (``attn2``) key and value projections."""
    return [n for n in names if "attn2" in n and n.endswith(PROJECTIONS)]


def last_token_states(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(N, D): each prompt's state at position ``attention_mask.sum() − 2``, the authors' choice — the last
    token before the end-of-text token (BOS + words + EOS are the unmasked positions); for the empty
    prompt it is the start-of-text token's state. ``hidden`` (N, L, D), ``attention_mask`` (N, L)."""
    index = attention_mask.sum(dim=1).long() - 2
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), index.to(hidden.device)]


@dataclass(frozen=True)
class UceEdit:
    """The layer-independent part of the edit: ``W_new = W + (W @ directions.T) @ reads``."""

    directions: torch.Tensor  # (k, D): s_e·(c_g(e) − c_e) per erased concept
    reads: torch.Tensor  # (k, D): B⁻¹ c_e per erased concept (B symmetric)

    def apply(self, weight: torch.Tensor) -> torch.Tensor:
        """The edited weight (out, D), in the weight's dtype and device; the arithmetic is float64."""
        w = weight.detach().to(device=self.directions.device, dtype=torch.float64)
        new = w + (w @ self.directions.T) @ self.reads
        return new.to(device=weight.device, dtype=weight.dtype)


def uce_edit(edit: torch.Tensor, guide: torch.Tensor, preserve: torch.Tensor, *, lamb: float,
             erase_scale: float, preserve_scale: float) -> UceEdit:
    """The edit mapping each ``edit[i]`` state (k, D) to the value of ``guide[i]`` (k, D) while keeping the
    ``preserve`` states' values (m, D; m may be 0). Every row counts once per occurrence, as in the
    authors' loops. Raises ``ValueError`` when ``λ`` is not positive (``B`` may be singular)."""
    if lamb <= 0:
        raise ValueError(f"lamb must be above 0 (got {lamb})")
    if edit.shape != guide.shape or edit.dim() != 2:
        raise ValueError(f"edit {tuple(edit.shape)} and guide {tuple(guide.shape)} must both be (k, D)")
    c_e, c_g = edit.to(torch.float64), guide.to(torch.float64)
    dim = c_e.shape[1]
    c_p = preserve.to(device=c_e.device, dtype=torch.float64).reshape(-1, dim)
    b = lamb * torch.eye(dim, dtype=torch.float64, device=c_e.device)
    b += erase_scale * (c_e.T @ c_e) + preserve_scale * (c_p.T @ c_p)
    reads = torch.linalg.solve(b, c_e.T).T
    return UceEdit(directions=erase_scale * (c_g - c_e), reads=reads)


def relative_gap(new: torch.Tensor, old: torch.Tensor, states: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
    """Per row of ``states`` (N, D): ``‖W_new c − goal‖ / ‖W c − goal‖`` with ``goal`` (N, out) — 0 when the
    edit reaches the goal exactly, 1 when it did not move towards it."""
    s = states.to(torch.float64)
    after = s @ new.to(torch.float64).T - goal.to(torch.float64)
    before = s @ old.to(torch.float64).T - goal.to(torch.float64)
    return after.norm(dim=1) / before.norm(dim=1).clamp_min(torch.finfo(torch.float64).tiny)


def relative_change(new: torch.Tensor, old: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    """Per row of ``states`` (N, D): ``‖(W_new − W) c‖ / ‖W c‖`` — how far each state's output moved."""
    s = states.to(torch.float64)
    moved = s @ (new.to(torch.float64) - old.to(torch.float64)).T
    base = s @ old.to(torch.float64).T
    return moved.norm(dim=1) / base.norm(dim=1).clamp_min(torch.finfo(torch.float64).tiny)
