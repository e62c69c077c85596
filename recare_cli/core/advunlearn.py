"""AdvUnlearn's engine: adversarial training of the text encoder (Zhang et al., NeurIPS 2024; the authors'
``train-scripts/AdvUnlearn.py`` of OPTML-Group/AdvUnlearn, docs/erase.md "AdvUnlearn").

Each outer iteration ``i`` (from ``warmup_iter`` on, every ``adv_prompt_update_step`` iterations) first runs
the attack: ``attack_step`` Adam steps on ``k`` adversarial word embeddings placed in the target prompt, each
pulling the erased model's prediction for the adversarial prompt towards the original model's prediction for
the target (the attack brings the target back). Then one Adam step of the text encoder on
``MSE(ε(x_t, E_θ(adversarial prompt)), ε*_∅ − g(ε*_c − ε*_∅)) + λ·MSE(ε(x_r, E_θ(r)), ε*(x_r, r))``, ``r`` a
batch of retain prompts. The UNet is frozen: the original model is the same UNet with the original text
states (computed once), so no second copy of anything is kept.

x_t is drawn as the authors' ldm DDIM sampler draws it (:func:`sample_till`), the training timestep as they
draw it (:func:`draw_timestep`); every draw comes from one CPU ``torch.Generator`` in the authors' order, so
a replay of the same draws through a transcription of their code gives the same numbers
(tests/test_advunlearn.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from recare_cli.core.diffusion import autocast, placeholder_embeddings, unet_eps

ATTACK_TYPES = ("prefix_k", "suffix_k", "replace_k", "add")
ATTACK_INITS = ("random", "latest")
ATTACK_METHODS = ("pgd", "fast_at")


def _layers(digits: Sequence[int]) -> tuple[str, ...]:
    return tuple(f"encoder.layers.{d}" for d in digits)


# The authors' text-encoder train methods (utils/util.py param_choices, component "all"), as the name prefixes
# their test ``name.startswith(...)`` accepts: "encoder.layers.1" also matches layers 10 and 11, as in theirs.
# None: every encoder layer and the final layer norm (text_encoder_full).
TRAIN_METHODS: dict[str, tuple[str, ...] | None] = {
    "text_encoder_full": None,
    **{"text_encoder_layer" + "".join(str(d) for d in range(n)): _layers(range(n)) for n in range(1, 13)},
    "text_encoder_layer0_11": _layers((0, 11)),
    "text_encoder_layer01_1011": _layers((0, 1, 10, 11)),
    "text_encoder_layer012_91011": _layers((0, 1, 2, 9, 10, 11)),
}


def trained_parameters(text_encoder: nn.Module, train_method: str) -> list[str]:
    """Names (as ``text_encoder.named_parameters()`` gives them) of the parameters ``train_method`` trains.
    Token and position embeddings are never trained."""
    if train_method not in TRAIN_METHODS:
        raise ValueError(f"unknown train method '{train_method}' (choose {', '.join(TRAIN_METHODS)})")
    prefixes = TRAIN_METHODS[train_method]
    names = []
    for name, _ in text_encoder.named_parameters():
        rel = name.removeprefix("text_model.")  # transformers 4 nests the model under text_model
        chosen = (rel.startswith(("encoder.", "final_layer_norm.")) if prefixes is None
                  else rel.startswith(prefixes))
        if chosen:
            names.append(name)
    return names


def adversarial_sequence(words: torch.Tensor, adv: torch.Tensor, n_words: int, attack_type: str) -> torch.Tensor:
    """The (L, D) word embeddings of the adversarial prompt (the authors' ``split_embd`` + ``construct_embd``).

    ``words``: the target prompt's word embeddings padded to L; ``adv``: (k, D). The prompt is split by its
    number of whitespace-separated words ``n`` (not tokens, as the authors): ``[start, the next n tokens,
    k dropped, the rest]``, and the k adversarial vectors go before the n tokens (``prefix_k``), after them
    (``suffix_k``), replace them (``replace_k``: the n become copies of the first token after the dropped k),
    or are added to them (``add``, k = n)."""
    k = adv.shape[0]
    sot, mid, rest = words[:1], words[1:1 + n_words], words[1 + n_words + k:]
    if attack_type == "prefix_k":
        return torch.cat([sot, adv, mid, rest])
    if attack_type == "suffix_k":
        return torch.cat([sot, mid, adv, rest])
    if attack_type == "replace_k":
        return torch.cat([sot, adv, rest[:1].expand(n_words, -1), rest])
    if attack_type == "add":
        if k != n_words:
            raise ValueError(f"attack type 'add' perturbs the prompt's {n_words} words, got {k} vectors")
        return torch.cat([sot, adv + mid, rest[:1].expand(k, -1), rest])
    raise ValueError(f"unknown attack type '{attack_type}' (choose {', '.join(ATTACK_TYPES)})")


def adversarial_count(attack_type: str, adv_prompt_num: int, n_words: int) -> int:
    """k, the number of adversarial vectors: ``adv_prompt_num``, or the prompt's word count for ``add``."""
    return n_words if attack_type == "add" else adv_prompt_num


def draw_timestep(generator: torch.Generator, ddim_steps: int, train_steps: int = 1000) -> tuple[int, int]:
    """(k, t): the DDIM depth ``k ∈ [0, ddim_steps)`` x_t is sampled to and the training timestep
    ``t ∈ [round(k/S·T), round((k+1)/S·T))``, drawn as the authors draw ``t_enc`` and ``t_enc_ddpm``."""
    k = int(torch.randint(ddim_steps, (1,), generator=generator).item())
    lo, hi = round(k / ddim_steps * train_steps), round((k + 1) / ddim_steps * train_steps)
    return k, int(torch.randint(lo, hi, (1,), generator=generator).item())


def mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error in float32, or in float64 for float64 tensors (half-precision outputs are widened)."""
    dtype = torch.promote_types(prediction.dtype, torch.float32)
    return torch.nn.functional.mse_loss(prediction.to(dtype), target.to(dtype))


def ldm_ddim(scheduler_config: Any) -> Any:
    """A diffusers DDIM scheduler that steps as ldm's ``DDIMSampler`` (η = 0): timesteps ``1 + j·(T/S)``, no
    clipping, the final step to ``ᾱ_0`` (not 1), and ``ᾱ`` computed in float64 as ldm computes it (diffusers
    takes the cumulative product in float32)."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(scheduler_config, clip_sample=False, set_alpha_to_one=False,
                                          steps_offset=1, timestep_spacing="leading", thresholding=False)
    c = scheduler.config
    n, lo, hi = int(c.num_train_timesteps), float(c.beta_start), float(c.beta_end)
    if c.trained_betas is None and c.beta_schedule in ("scaled_linear", "linear"):
        betas = (np.linspace(lo ** 0.5, hi ** 0.5, n, dtype=np.float64) ** 2 if c.beta_schedule == "scaled_linear"
                 else np.linspace(lo, hi, n, dtype=np.float64))  # ldm's "linear" is diffusers' scaled_linear
        scheduler.alphas_cumprod = torch.from_numpy(np.cumprod(1.0 - betas))
        scheduler.final_alpha_cumprod = scheduler.alphas_cumprod[0]
    return scheduler


@torch.no_grad()
def sample_till(unet: nn.Module, scheduler: Any, latents: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
                *, till: int, guidance: float) -> torch.Tensor:
    """x_t as the authors' ``quick_sample_till_t`` draws it: ldm's ``DDIMSampler.sample(x_T=latents,
    till_T=till)`` with classifier-free guidance. Their call keeps ldm's ``t_start=-1``, which drops the
    noisiest timestep (``latents`` enter at the second), and stops after the step whose index + 1 is ``till``:
    ``S − till`` steps, or all ``S − 1`` for ``till`` 0. ``cond`` (B, L, D) conditions ``latents``' B samples;
    ``uncond`` (1, L, D) serves all. ``scheduler``: :func:`ldm_ddim` with ``set_timesteps(S)`` called."""
    steps = scheduler.timesteps[1:]
    n = len(steps) if till == 0 else len(steps) + 1 - till
    b = latents.shape[0]
    emb = torch.cat([uncond.expand(b, *uncond.shape[1:]), cond])
    x = latents
    for t in steps[:n]:
        e_u, e_c = unet_eps(unet, torch.cat([x, x]), t, emb).chunk(2)
        x = scheduler.step(e_u + guidance * (e_c - e_u), t, x).prev_sample
    return x


def retain_schedule(n_prompts: int, batch: int, iterations: int, rng: np.random.Generator) -> list[list[int]]:
    """Each iteration's retain prompts: drawn without replacement until fewer than ``batch`` are unseen, then
    from all again (the authors' ``PromptDataset``), from an explicit generator."""
    if n_prompts < batch:
        raise ValueError(f"{n_prompts} retain prompts for a batch of {batch}")
    out: list[list[int]] = []
    unseen: list[int] = []
    for _ in range(iterations):
        if len(unseen) < batch:
            unseen = [int(j) for j in rng.permutation(n_prompts)]
        out.append(unseen[:batch])
        unseen = unseen[batch:]
    return out


@dataclass
class AdvUnlearnSettings:
    """No defaults here: ``stages.erase.EraseOptions`` declares them."""

    iterations: int
    lr: float
    warmup_iter: int
    attack_step: int
    attack_lr: float
    attack_init: str
    attack_type: str
    attack_method: str
    adv_prompt_update_step: int
    negative_guidance: float
    retain_loss_w: float
    ddim_steps: int
    latent_size: int
    precision: str
    start_guidance: float = 3.0  # the authors' default guidance of x_t's sampling


@dataclass
class AdvUnlearnPrompts:
    """Token ids (·, L) and the *original* text encoder's states (·, L, D), computed once."""

    uncond: torch.Tensor
    target: torch.Tensor
    target_ids: torch.Tensor
    retain: torch.Tensor
    retain_ids: torch.Tensor
    k: int  # adversarial vectors
    n_words: int  # the target's whitespace-separated words (the authors' split)


class AdvUnlearnTrainer:
    """Trains ``names`` of ``text_encoder`` in place against the frozen ``unet``; ``step(i)`` runs iteration i."""

    def __init__(self, unet: nn.Module, text_encoder: Any, names: Sequence[str], prompts: AdvUnlearnPrompts,
                 schedule: Sequence[Sequence[int]], settings: AdvUnlearnSettings, scheduler_config: Any,
                 generator: torch.Generator) -> None:
        self.unet, self.text_encoder, self.names = unet, text_encoder, list(names)
        self.prompts, self.schedule, self.settings, self.generator = prompts, schedule, settings, generator
        self.device = next(unet.parameters()).device
        unet.requires_grad_(False)
        text_encoder.requires_grad_(False)
        params = dict(text_encoder.named_parameters())
        self.params = [params[n] for n in self.names]
        self.table = text_encoder.get_input_embeddings().weight
        if any(p is self.table for p in self.params):
            raise ValueError("the token embedding is not trained (the adversarial vectors are drawn from it)")
        for p in self.params:
            p.requires_grad_(True)
        self.optimizer = torch.optim.Adam(self.params, lr=settings.lr)  # the authors': Adam, no weight decay
        self.sampler = ldm_ddim(scheduler_config)
        self.sampler.set_timesteps(settings.ddim_steps, device=self.device)
        self.train_steps = int(self.sampler.config.num_train_timesteps)
        self.channels = int(getattr(unet, "config").in_channels)  # noqa: B009 (diffusers config)
        self.dtype = self.table.dtype  # the models' weights' (float32; float64 in the tests' exact comparison)
        self.vocab = int(self.table.shape[0])
        length = prompts.target_ids.shape[1]
        self.adv_ids = (self.vocab + torch.arange(length, device=self.device))[None]  # placeholders for a sequence
        self.adv_seq: torch.Tensor | None = None  # the last attack's adversarial prompt, (L, D) word embeddings
        self.attack_losses: list[float] = []  # the last attack's loss at each of its steps

    # -- pieces ---------------------------------------------------------------------------------------------
    def _noise(self, n: int) -> torch.Tensor:
        size = self.settings.latent_size
        return torch.randn((n, self.channels, size, size), generator=self.generator).to(self.device, self.dtype)

    def _draw(self) -> tuple[int, torch.Tensor]:
        k, t = draw_timestep(self.generator, self.settings.ddim_steps, self.train_steps)
        return k, torch.tensor(t, device=self.device)

    def _encode(self, seq: torch.Tensor | None, ids: torch.Tensor | None = None) -> torch.Tensor:
        """The current text encoder's states for the adversarial prompt ``seq`` (when given), then ``ids``."""
        if seq is None:
            assert ids is not None
            return self.text_encoder(ids)[0]
        batch = self.adv_ids if ids is None else torch.cat([self.adv_ids, ids])
        with placeholder_embeddings(self.text_encoder, self.vocab, seq):
            return self.text_encoder(batch)[0]

    def _attack(self) -> float:
        """``attack_step`` Adam steps on the adversarial vectors; keeps the adversarial prompt of the last one."""
        s, p, g = self.settings, self.prompts, self.generator
        words = self.table[p.target_ids[0]].detach()
        torch.randn((1, p.k, self.table.shape[1]), generator=g)  # drawn and discarded, as the authors' init_adv
        if s.attack_init == "latest" and self.adv_seq is not None:
            init = self.adv_seq[1:1 + p.k]
        else:
            init = self.table[torch.randint(0, self.vocab, (1, p.k), generator=g)[0].to(self.device)]
        adv = init.detach().clone().requires_grad_(True)
        optimizer = torch.optim.Adam([adv], lr=s.attack_lr)
        for param in self.params:  # the text encoder is frozen during the attack
            param.requires_grad_(False)
        self.attack_losses = []
        try:
            for _ in range(s.attack_step):
                k, t = self._draw()
                z = self._noise(1)
                with autocast(self.device, s.precision):
                    x = sample_till(self.unet, self.sampler, z, p.target, p.uncond, till=k,
                                    guidance=s.start_guidance).to(self.dtype)
                    with torch.no_grad():
                        e_p = unet_eps(self.unet, x, t, p.target).to(self.dtype)
                    seq = adversarial_sequence(words, adv, p.n_words, s.attack_type)
                    cond = self._encode(seq)
                    e_n = unet_eps(self.unet, x, t, cond)
                loss = mse(e_n, e_p)
                self.attack_losses.append(float(loss.detach()))
                loss.backward()  # no zero_grad between steps: the gradients add up, as in the authors' loop
                if s.attack_method == "fast_at":
                    assert adv.grad is not None
                    adv.grad.sign_()
                optimizer.step()
                self.adv_seq = seq.detach()  # the prompt this step read (the authors return it, not the update)
        finally:
            for param in self.params:
                param.requires_grad_(True)
        return self.attack_losses[-1]

    # -- one iteration ----------------------------------------------------------------------------------------
    def step(self, i: int) -> dict[str, float]:
        s, p = self.settings, self.prompts
        out: dict[str, float] = {}
        if i >= s.warmup_iter and i % s.adv_prompt_update_step == 0:
            out["attack"] = self._attack()
        picked = torch.as_tensor(list(self.schedule[i]), device=p.retain.device)
        k, t = self._draw()
        z, z_retain = self._noise(1), self._noise(len(picked))
        original = torch.cat([p.target, p.retain[picked]])
        with torch.no_grad(), autocast(self.device, s.precision):
            x = sample_till(self.unet, self.sampler, torch.cat([z, z_retain]), original, p.uncond, till=k,
                            guidance=s.start_guidance).to(self.dtype)
            # one teacher batch: ε*_∅ and ε*_c at the target's x_t, ε*(x_r, r) for each retain prompt
            eps = unet_eps(self.unet, torch.cat([x[:1], x]), t, torch.cat([p.uncond, original])).to(self.dtype)
        e_0, e_p, retain_target = eps[:1], eps[1:2], eps[2:]
        target = e_0 - s.negative_guidance * (e_p - e_0)
        self.optimizer.zero_grad(set_to_none=True)
        adversarial = i >= s.warmup_iter and self.adv_seq is not None
        with autocast(self.device, s.precision):
            retain_ids = p.retain_ids[picked.to(p.retain_ids.device)]
            cond = (self._encode(self.adv_seq, retain_ids) if adversarial
                    else self._encode(None, torch.cat([p.target_ids, retain_ids])))
            pred = unet_eps(self.unet, x, t, cond)
        unlearn, retain = mse(pred[:1], target), mse(pred[1:], retain_target)
        loss = unlearn + s.retain_loss_w * retain
        loss.backward()
        self.optimizer.step()
        out.update({"loss": float(loss.detach()), "unlearn": float(unlearn.detach()),
                    "retain": float(retain.detach()), "k": float(k)})
        return out

    # -- checkpoints: plain tensors ---------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {"rng": self.generator.get_state().clone()}
        for idx, (name, param) in enumerate(zip(self.names, self.params, strict=True)):
            out[f"param/{name}"] = param.detach().cpu().clone()
            for key, value in self.optimizer.state.get(param, {}).items():
                out[f"adam/{idx}/{key}"] = torch.as_tensor(value).detach().cpu().clone()
        if self.adv_seq is not None:
            out["adversarial"] = self.adv_seq.detach().cpu().clone()
        return out

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(tensors["rng"])
        with torch.no_grad():
            for name, param in zip(self.names, self.params, strict=True):
                param.copy_(tensors[f"param/{name}"])
        for idx, param in enumerate(self.params):
            state = {key: tensors[f"adam/{idx}/{key}"].clone() for key in ("step", "exp_avg", "exp_avg_sq")
                     if f"adam/{idx}/{key}" in tensors}
            if state:
                state["exp_avg"] = state["exp_avg"].to(param.device, param.dtype)
                state["exp_avg_sq"] = state["exp_avg_sq"].to(param.device, param.dtype)
                self.optimizer.state[param] = state
        self.adv_seq = tensors["adversarial"].to(self.device) if "adversarial" in tensors else None

    def trained_values(self) -> dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in zip(self.names, self.params, strict=True)}

    def release(self) -> None:
        """Freeze the text encoder again and drop the optimizer state."""
        self.text_encoder.requires_grad_(False)
        self.optimizer.state.clear()
