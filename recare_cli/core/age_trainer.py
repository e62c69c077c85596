"""AGE's training loop (``train_age.py``) on the erase engine: the same frozen teacher (the trained parameters'
original values swapped in), optimizers stepped inside backward, checkpoints of plain tensors.

One ``step(i)`` is one of the authors' UNet iterations followed by their ``pgd_num_steps − 1`` weight steps
(loop indices ``i·P … i·P + P − 1``; index ``0 mod P`` updates the UNet, the others the weights ``π``). Every
loop index draws, in the authors' order, from the run's generator: the Gumbel uniforms, the DDIM index
``t_enc ~ U{0 … S − 1}``, the training timestep in ``timestep_bounds(t_enc)``, the starting noise. x_t is
sampled with the model being trained (DDIM η = 0, guidance 3) as the authors' ldm sampler does it
(``core.age.sampler_steps``); ᾱ for the x0 predictions is that of the DDIM schedule's entry ``t_enc``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from recare_cli.core.age import (
    gumbel_softmax,
    mixture,
    sampler_steps,
    search_loss,
    timestep_bounds,
    unet_loss,
)
from recare_cli.core.diffusion import (
    ErasePrompts,
    EraseSchedule,
    EraseSettings,
    EraseTrainer,
    autocast,
    sample_partial,
    unet_eps,
)


@dataclass
class AgeSettings:
    """The target search's settings (the authors' names). No defaults: ``stages.erase.EraseOptions`` declares
    them. ``EraseSettings.guidance`` is AGE's negative guidance, ``retain_weight`` its λ (``lamda``)."""

    gumbel_lr: float
    gumbel_temp: float
    gumbel_hard: int
    gumbel_topk: int
    pgd_num_steps: int


@dataclass
class AgeDraw:
    """One loop index's random draws."""

    uniform: torch.Tensor  # (1, n) for the Gumbel noise
    t_enc: int  # DDIM index
    timestep: torch.Tensor  # (1,) training timestep
    noise: torch.Tensor  # (1, C, h, w) starting latents


class AgeTrainer(EraseTrainer):
    """Trains ``names`` of ``unet`` (Adam, ``settings.lr``) and the weights ``π`` over ``concepts`` (n, L, D), the
    text states of the concept dictionary (Adam, ``age.gumbel_lr``). ``prompts.erase`` is the target's states
    (1, L, D), ``prompts.uncond`` the empty prompt's (for x_t's classifier-free guidance)."""

    def __init__(self, unet: nn.Module, names: Sequence[str], prompts: ErasePrompts, concepts: torch.Tensor,
                 settings: EraseSettings, age: AgeSettings, scheduler_config: Any,
                 generator: torch.Generator) -> None:
        super().__init__(unet, names, prompts, EraseSchedule(erase=[0]), settings, scheduler_config, generator)
        self.age = age
        self.shape = tuple(concepts.shape[1:])
        self.matrix = concepts.reshape(concepts.shape[0], -1).to(self.device)  # the authors' preserved matrix
        n = concepts.shape[0]
        # the authors: zeros((1, n)) + 1/n, a leaf with a gradient, its own Adam
        self.pi = (torch.zeros((1, n), device=self.device, dtype=self.matrix.dtype) + 1 / n).requires_grad_(True)
        self.pi_optimizer = torch.optim.Adam([self.pi], lr=age.gumbel_lr)
        self.ascending = self.sampler.timesteps.flip(0).cpu()  # the DDIM schedule, index t_enc ↔ timestep
        self.alphas = self.sampler.alphas_cumprod
        self.train_steps = int(self.sampler.config.num_train_timesteps)

    # -- draws and the target ------------------------------------------------------------------------------------
    def draw(self) -> AgeDraw:
        g, s = self.generator, self.settings
        uniform = torch.rand(tuple(self.pi.shape), generator=g)
        t_enc = int(torch.randint(s.sample_steps, (1,), generator=g).item())
        lo, hi = timestep_bounds(t_enc, s.sample_steps, self.train_steps)
        timestep = torch.randint(lo, hi, (1,), generator=g)
        noise = torch.randn((1, self.channels, s.latent_size, s.latent_size), generator=g)
        return AgeDraw(uniform, t_enc, timestep, noise)

    def weights(self, uniform: torch.Tensor, *, grad: bool) -> torch.Tensor:
        pi = self.pi if grad else self.pi.detach()
        return gumbel_softmax(pi, uniform.to(self.device), self.age.gumbel_temp, self.age.gumbel_hard,
                              self.age.gumbel_topk)

    def alpha_bar(self, t_enc: int) -> torch.Tensor:
        return self.alphas[int(self.ascending[t_enc])].to(self.device)

    def _sample(self, draw: AgeDraw, conds: torch.Tensor) -> torch.Tensor:
        """x_t for each condition of ``conds`` from the draw's noise (the authors' ``quick_sample_till_t``)."""
        s = self.settings
        z = draw.noise.to(self.device).expand(conds.shape[0], *draw.noise.shape[1:])
        with autocast(self.device, s.precision):
            return sample_partial(self.unet, self.sampler, z, conds, self.prompts.uncond,
                                  steps=sampler_steps(draw.t_enc, s.sample_steps), guidance=s.sample_guidance,
                                  first=1).float()

    # -- the two kinds of loop index -----------------------------------------------------------------------------
    def unet_step(self, i: int, draw: AgeDraw) -> dict[str, float]:
        """Loop index ``0 mod P``: erase towards, and preserve, the sampled target concept; Adam on the UNet."""
        s = self.settings
        target = mixture(self.weights(draw.uniform, grad=False), self.matrix, self.shape)
        concept = self.prompts.erase[:1]
        assert isinstance(concept, torch.Tensor)  # AGE runs on SD 1.x/2.x (refused on SDXL: stages.erase)
        x = self._sample(draw, torch.cat([concept, target]))
        x_e, x_c = x[:1], x[1:]
        t = draw.timestep.to(self.device)
        with torch.no_grad(), autocast(self.device, s.precision):  # ε*_0(x_e), ε*_e(x_e), ε*_c(x_c): one batch
            eps = unet_eps(self.unet, torch.cat([x_e, x_e, x_c]), t, torch.cat([target, concept, target]),
                           params=self.teacher).float()
        self._schedule_lr(i)
        with autocast(self.device, s.precision):
            pred = unet_eps(self.unet, x, t, torch.cat([concept, target])).float()
        loss, erase, preserve = unet_loss(x_e, pred[:1], eps[1:2], eps[:1], x_c, pred[1:], eps[2:],
                                          self.alpha_bar(draw.t_enc), s.guidance, s.retain_weight)
        self._backward_and_step(loss)  # the hooks step each parameter's Adam
        return {"loss": float(loss.detach()), "erase": float(erase.detach()), "preserve": float(preserve.detach()),
                "k": float(draw.t_enc)}

    def search_step(self, draw: AgeDraw) -> float:
        """Any other loop index: move ``π`` towards the concept the trained UNet preserves worst (Adam on
        ``−λ·MSE``). Only the terms with a gradient with respect to ``π`` are computed, and no parameter
        gradient: the UNet is not changed."""
        s = self.settings
        target = mixture(self.weights(draw.uniform, grad=True), self.matrix, self.shape)
        x_c = self._sample(draw, target.detach())
        t = draw.timestep.to(self.device)
        with torch.no_grad(), autocast(self.device, s.precision):
            eps_orig = unet_eps(self.unet, x_c, t, target.detach(), params=self.teacher).float()
        with autocast(self.device, s.precision):
            eps = unet_eps(self.unet, x_c, t, target).float()
        loss = search_loss(x_c, eps, eps_orig, self.alpha_bar(draw.t_enc), s.retain_weight)
        (grad,) = torch.autograd.grad(loss, [self.pi])  # not .backward(): the UNet's Adam hooks must not fire
        self.pi.grad = grad
        self.pi_optimizer.step()
        self.pi.grad = None
        return float(loss.detach())

    def step(self, i: int) -> dict[str, float]:
        out = self.unet_step(i, self.draw())
        for _ in range(self.age.pgd_num_steps - 1):
            out["search"] = self.search_step(self.draw())
        out["concept"] = float(self.chosen())
        return out

    def chosen(self) -> int:
        """The dictionary index with the largest weight (what the authors log as the current target)."""
        return int(torch.argmax(self.pi.detach(), dim=1).item())

    # -- checkpoints ---------------------------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        out = super().state_tensors()
        out["age/pi"] = self.pi.detach().cpu().clone()
        for key, value in self.pi_optimizer.state.get(self.pi, {}).items():
            out[f"age/adam/{key}"] = torch.as_tensor(value).detach().cpu().clone()
        return out

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        super().load_state_tensors(tensors)
        with torch.no_grad():
            self.pi.copy_(tensors["age/pi"].to(self.device))
        state = {k[len("age/adam/"):]: v.clone().to(self.device) if v.dim() else v.clone()
                 for k, v in tensors.items() if k.startswith("age/adam/")}
        if state:
            self.pi_optimizer.state[self.pi] = state

    def release(self) -> None:
        super().release()
        self.pi.requires_grad_(False)
