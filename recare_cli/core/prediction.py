"""The UNet's prediction types and the conversions between them (docs/architectures.md).

With ``ᾱ_t`` the scheduler's cumulative product of alphas, ``α_t = √ᾱ_t``, ``σ_t = √(1 − ᾱ_t)`` and
``x_t = α_t x_0 + σ_t ε``, an ε-model predicts ``ε`` and a v-model (SD 2.x at 768 px) predicts
``v = α_t ε − σ_t x_0``. Given ``x_t`` the two determine each other:

    ε = α_t v + σ_t x_t          v = (ε − σ_t x_t) / α_t

Pure functions on tensors; ``alphas_cumprod`` is the scheduler's (``scheduler.alphas_cumprod``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

PREDICTION_TYPES = ("epsilon", "v_prediction")


def coefficients(alphas_cumprod: torch.Tensor, t: torch.Tensor | int,
                 like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(α_t, σ_t) shaped to broadcast against ``like`` (B, C, H, W): one per timestep of ``t`` (a scalar or
    one per sample), in ``like``'s dtype and device."""
    import torch

    index = torch.as_tensor(t, device=alphas_cumprod.device).long().reshape(-1)
    abar = alphas_cumprod[index].to(device=like.device, dtype=like.dtype)
    shape = (-1,) + (1,) * (like.dim() - 1)
    return abar.sqrt().reshape(shape), (1 - abar).sqrt().reshape(shape)


def velocity(sample: torch.Tensor, noise: torch.Tensor, alphas_cumprod: torch.Tensor,
             t: torch.Tensor | int) -> torch.Tensor:
    """``v = α_t ε − σ_t x_0`` for clean ``sample`` x_0 and ``noise`` ε (diffusers' ``get_velocity``)."""
    alpha, sigma = coefficients(alphas_cumprod, t, sample)
    return alpha * noise - sigma * sample


def eps_from_v(v: torch.Tensor, x_t: torch.Tensor, alphas_cumprod: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
    """``ε = α_t v + σ_t x_t``."""
    alpha, sigma = coefficients(alphas_cumprod, t, x_t)
    return alpha * v + sigma * x_t


def v_from_eps(eps: torch.Tensor, x_t: torch.Tensor, alphas_cumprod: torch.Tensor,
               t: torch.Tensor | int) -> torch.Tensor:
    """``v = (ε − σ_t x_t) / α_t``."""
    alpha, sigma = coefficients(alphas_cumprod, t, x_t)
    return (eps - sigma * x_t) / alpha


def training_target(prediction_type: str, sample: torch.Tensor, noise: torch.Tensor, alphas_cumprod: torch.Tensor,
                    t: torch.Tensor | int) -> torch.Tensor:
    """What the UNet should output for ``x_t`` made from ``sample`` and ``noise`` at ``t``, in the model's own
    prediction type: ``noise`` itself for ε-models (the same tensor), ``velocity`` for v-models (as diffusers'
    textual-inversion example, which CCE's ``concept_inversion.py`` is)."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return velocity(sample, noise, alphas_cumprod, t)
    raise ValueError(f"unknown prediction type '{prediction_type}' (choose {', '.join(PREDICTION_TYPES)})")
