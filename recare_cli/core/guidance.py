"""Erasure targets, losses, balanced schedules and trained-parameter selection (method.md §5).

Pure functions on tensors and modules: no paths, no printing. Notation: ``eps_*`` are teacher
(frozen-model) noise predictions, ``uncond`` the prediction for the empty prompt ∅.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, TypeVar

import numpy as np

if TYPE_CHECKING:
    import torch

T = TypeVar("T")

# ESD's train-method names (esd_sd.py) and the selection each one is: the same name filter.
ESD_TRAIN_METHODS = {"esd-x": "xattn", "esd-u": "noxattn", "esd-all": "full", "esd-x-strict": "xattn-kv"}
TRAIN_METHODS = ("noxattn", "xattn", "selfattn", "full", "xattn-kv", *ESD_TRAIN_METHODS)
# esd: published ESD (esd_sd.py); esd-recare: the ESD step of ReCARE's reference (its invert stage's erasure);
# stereo: published STEREO's "robustly erase once" (its own anchor prompts); recare-noretain: ReCARE's objective
# without the retain loss (the CARE-set as anchors)
METHODS = ("recare", "esd", "esd-recare", "stereo", "recare-noretain")
ANCHORED = ("recare", "stereo", "recare-noretain")  # methods whose target has the compositional anchor term
TIMESTEP_DRAWS = ("uniform", "stratified")
LR_SCHEDULES = ("constant", "linear", "cosine")
PRECISIONS = ("fp32", "bf16", "fp16")  # training precisions (core.diffusion.autocast), for erase and invert


def esd_target(eps_from: torch.Tensor, eps_concept: torch.Tensor, eps_uncond: torch.Tensor,
               negative_guidance: float) -> torch.Tensor:
    """Published ESD target (esd_sd.py): ``ε*_from − g·(ε*_c − ε*_∅)``, ``from`` = the concept mapped from
    (the erased concept itself by default, then ``ε*_∅ − (g − 1)(ε*_c − ε*_∅)``)."""
    return eps_from - negative_guidance * (eps_concept - eps_uncond)


def esd_recare_target(eps_concept: torch.Tensor, eps_uncond: torch.Tensor, negative_guidance: float) -> torch.Tensor:
    """The ESD step of ReCARE's reference: ``ε*_c − (g − 1)(ε*_c − ε*_∅)``; ``ε*_∅`` at g = 2.

    The reference reaches this through a "normalised guidance" helper whose projection is a no-op
    at its ``eta = 1`` (parallel + orthogonal parts add back to the difference). It is ``esd_target``
    with ``from = c`` and ``g − 1``: at g = 2 the target is ``ε*_∅`` (the ESD paper's η = 0), where published
    ESD's g = 2 is ``ε*_∅ − (ε*_c − ε*_∅)`` (η = 1).
    """
    return eps_concept - (negative_guidance - 1.0) * (eps_concept - eps_uncond)


def compositional_target(eps_uncond: torch.Tensor, eps_erase: torch.Tensor, eps_anchor: torch.Tensor | None,
                         scale: float) -> torch.Tensor:
    """ReCARE's erase target ``ε*_∅ + (s − 1)(ε*_a − ε*_∅) − (s + 1)·mean_e(ε*_e − ε*_∅)``.

    ``eps_uncond`` is (B, C, H, W); ``eps_erase`` is (|E|, B, C, H, W), one prediction per erase
    concept; ``eps_anchor`` (B, C, H, W) or None (no anchor term). ``scale`` follows the reference
    flag, which is "the intended scale + 1" (default 2). Anchors enter with guidance ``+s`` and erase
    concepts with ``−s``; each group's ``(scale − 1)·difference`` is averaged over the group.
    """
    target = eps_uncond - (scale + 1.0) * (eps_erase - eps_uncond.unsqueeze(0)).mean(dim=0)
    if eps_anchor is not None:
        target = target + (scale - 1.0) * (eps_anchor - eps_uncond)
    return target


def mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error in float32 (autocast outputs may be half precision)."""
    import torch.nn.functional as F

    return F.mse_loss(prediction.float(), target.float(), reduction="mean")


def erase_loss(pred_erase: torch.Tensor, erase_target: torch.Tensor, pred_retain: torch.Tensor | None = None,
               retain_target: torch.Tensor | None = None,
               retain_weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``L = MSE(ε_θ(x_t, h), target) + λ·MSE(ε_θ(x_t, r), ε*(x_t, r))``; returns (total, erase, retain)."""
    erase = mse(pred_erase, erase_target.detach())
    if pred_retain is None or retain_target is None or retain_weight == 0:
        return erase, erase, None
    retain = mse(pred_retain, retain_target.detach())
    return erase + retain_weight * retain, erase, retain


def balanced_schedule(items: Sequence[T], length: int, rng: np.random.Generator) -> list[T]:
    """Each item ``length // len(items)`` times in shuffled order, then the remainder drawn
    without replacement (the reference's schedule, with an explicit generator)."""
    if not items:
        raise ValueError("balanced_schedule needs at least one item")
    n = len(items)
    order = np.tile(np.arange(n), length // n)
    rng.shuffle(order)
    rest = length - len(order)
    if rest > 0:
        order = np.concatenate([order, rng.choice(n, size=rest, replace=False)])
    return [items[int(i)] for i in order]


def ddim_step_choices(sample_steps: int) -> range:
    """The DDIM step counts ``k`` an erase iteration draws x_t at: 1 … ``sample_steps`` − 2 (reference:
    ``torch.randint(1, ddim_steps - 1)``)."""
    return range(1, sample_steps - 1)


def esd_step_choices(sample_steps: int) -> range:
    """The step counts ``k`` a published-ESD iteration stops its sampler after: 0 … ``sample_steps`` − 1
    (esd_sd.py: ``random.randint(0, num_inference_steps - 1)``, both ends included)."""
    return range(0, sample_steps)


def stratified_steps(sample_steps: int, length: int, rng: np.random.Generator,
                     choices: range | None = None) -> list[int]:
    """A stratified draw of ``k`` for ``length`` iterations: every choice (default: ``ddim_step_choices``)
    equally often, shuffled (the remainder without replacement). Same marginal distribution as the uniform
    draw, but 100 iterations can no longer cluster on a few depths."""
    return balanced_schedule(list(choices if choices is not None else ddim_step_choices(sample_steps)), length, rng)


def lr_factor(schedule: str, i: int, total: int) -> float:
    """Multiplier of the base learning rate at iteration ``i`` of ``total`` (0-based): ``constant`` 1 (the
    reference), ``linear`` from 1 down to 1/total, ``cosine`` half a cosine from 1 down to near 0."""
    if schedule == "constant":
        return 1.0
    if schedule == "linear":
        return 1.0 - i / total
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * i / total))
    raise ValueError(f"unknown lr schedule '{schedule}' (choose {', '.join(LR_SCHEDULES)})")


def training_timestep_index(k: int, sample_steps: int = 50, train_steps: int = 1000) -> int:
    """Index into the ``train_steps`` schedule for DDIM step ``k`` of ``sample_steps`` (reference:
    ``int(k / 50 · 1000)``)."""
    return int(k / sample_steps * train_steps)


def _selected(module_name: str, train_method: str) -> bool:
    train_method = ESD_TRAIN_METHODS.get(train_method, train_method)
    if train_method == "noxattn":
        return "attn2" not in module_name
    if train_method == "xattn":
        return "attn2" in module_name
    if train_method == "selfattn":
        return "attn1" in module_name
    if train_method == "full":
        return True
    if train_method == "xattn-kv":
        return "attn2.to_k" in module_name or "attn2.to_v" in module_name
    raise ValueError(f"unknown train method '{train_method}' (choose {', '.join(TRAIN_METHODS)})")


def select_parameters(unet: torch.nn.Module, train_method: str) -> list[str]:
    """Names of the UNet parameters a train method updates, in ``named_parameters`` order.

    As in the reference, only ``Linear`` and ``Conv2d`` modules are candidates (norms and
    embeddings stay frozen): ``noxattn`` every one whose name has no ``attn2`` (cross-attention),
    ``xattn`` only ``attn2``, ``selfattn`` only ``attn1``, ``full`` all of them, ``xattn-kv`` only the
    cross-attention key and value projections (``attn2.to_k``, ``attn2.to_v``). ESD's names select the
    same: ``esd-x`` = xattn, ``esd-u`` = noxattn, ``esd-all`` = full, ``esd-x-strict`` = xattn-kv.
    """
    import torch

    if train_method not in TRAIN_METHODS:
        raise ValueError(f"unknown train method '{train_method}' (choose {', '.join(TRAIN_METHODS)})")
    chosen: set[str] = set()
    for module_name, module in unet.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and _selected(module_name, train_method):
            for param_name, _ in module.named_parameters(recurse=False):
                chosen.add(f"{module_name}.{param_name}" if module_name else param_name)
    return [name for name, _ in unet.named_parameters() if name in chosen]
