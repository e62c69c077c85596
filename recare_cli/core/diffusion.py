"""Training engines on modules: ESD/ReCARE erasure (method.md §5) and textual inversion (§4).

No paths, no printing, no ``from_pretrained``: modules, tensors and generators come in. All
randomness is drawn from one CPU ``torch.Generator`` (its state goes into checkpoints) and a
``numpy`` generator used once, up front, for the balanced schedules.

Efficiency choices (each measured by ``python -m bench.bench_erase``):

* the frozen teacher is not a second UNet: only the original values of the *trained*
  parameters are kept, and the teacher forward runs the same module with those values swapped in
  through ``torch.func.functional_call`` (no copy, no module surgery). Under bf16/fp16 autocast
  the kept values are stored in that dtype, which halves them at no numerical cost (autocast
  casts Linear/Conv weights to it anyway). With LoRA (``core.lora``) nothing is kept: the teacher is the same
  module with the adapters switched off;
* all teacher predictions of a step (∅, every erase concept, anchor, retain) are one batched
  no-grad forward; the student's predictions (erase concept, retain prompt) one batched forward;
  no classifier-free "unconditional half" where guidance is 1;
* prompt embeddings are computed once (the text encoder is frozen during erasure);
* textual inversion uses VAE latent distributions computed once per image and flip.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from recare_cli.core.conditioning import Condition, SDXLCondition, cat_conditions, sdxl_states, time_ids, unet_kwargs
from recare_cli.core.guidance import (
    ANCHORED,
    compositional_target,
    ddim_step_choices,
    erase_loss,
    esd_recare_target,
    esd_step_choices,
    esd_target,
    lr_factor,
    mse,
    training_timestep_index,
)
from recare_cli.core.lora import (
    LoraSettings,
    adapters_disabled,
    add_lora,
    merged_values,
    remove_lora,
    target_modules,
)
from recare_cli.core.prediction import training_target
from recare_cli.dtypes import torch_dtype

# ---------------------------------------------------------------------------------------------
# Text side: placeholder tokens without touching the text encoder's embedding table


class ExtendedEmbedding(nn.Module):
    """A token embedding followed by extra rows: ids ``≥ first_id`` read ``extra[id − first_id]``.

    The base table is untouched (no resize, no dense gradient over 49,408 rows); only ``extra``
    can receive gradients.
    """

    def __init__(self, base: nn.Module, first_id: int, extra: torch.Tensor) -> None:
        super().__init__()
        self.base = base
        self.first_id = first_id
        self.extra = extra

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        is_extra = ids >= self.first_id
        out: torch.Tensor = self.base(torch.where(is_extra, torch.zeros_like(ids), ids))
        rows = self.extra[(ids - self.first_id).clamp(min=0, max=self.extra.shape[0] - 1)]
        return torch.where(is_extra.unsqueeze(-1), rows.to(out.dtype), out)


def extend_tokenizer(tokenizer: Any, tokens: Sequence[str]) -> tuple[Any, int]:
    """A copy of ``tokenizer`` with ``tokens`` added (consecutive ids); returns (copy, first id).

    Raises ``ValueError`` when a token already exists (it would silently reuse a real word).
    """
    extended = copy.deepcopy(tokenizer)
    vocab = extended.get_vocab()
    clash = [t for t in tokens if t in vocab]
    if clash:
        raise ValueError(f"token '{clash[0]}' is already in the tokenizer's vocabulary")
    if extended.add_tokens(list(tokens)) != len(tokens):
        raise ValueError("could not add the placeholder tokens to the tokenizer")
    ids = extended.convert_tokens_to_ids(list(tokens))
    if ids != list(range(ids[0], ids[0] + len(tokens))):
        raise ValueError("placeholder token ids are not consecutive")
    return extended, int(ids[0])


@contextlib.contextmanager
def placeholder_embeddings(text_encoder: Any, first_id: int, extra: torch.Tensor) -> Iterator[None]:
    """Within the block, ``text_encoder`` sees ids ``first_id + j`` as the vectors ``extra[j]``."""
    base = text_encoder.get_input_embeddings()
    text_encoder.set_input_embeddings(ExtendedEmbedding(base, first_id, extra))
    try:
        yield
    finally:
        text_encoder.set_input_embeddings(base)


def tokenize(tokenizer: Any, prompts: Sequence[str]) -> torch.Tensor:
    return tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids


@torch.no_grad()
def encode_prompts(tokenizer: Any, text_encoder: Any, prompts: Sequence[str], *, device: torch.device,
                   batch_size: int = 64) -> torch.Tensor:
    """(N, 77, D) last hidden states (what the UNet's cross-attention reads), batched."""
    chunks = []
    for start in range(0, len(prompts), batch_size):
        ids = tokenize(tokenizer, prompts[start:start + batch_size]).to(device)
        chunks.append(text_encoder(ids)[0])
    return torch.cat(chunks)


# ---------------------------------------------------------------------------------------------
# UNet side


def unet_eps(unet: nn.Module, x: torch.Tensor, t: torch.Tensor | int, emb: Condition,
             params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """The UNet's prediction for ``emb.shape[0]`` conditions, in the model's own prediction type (ε, or v for
    a v-prediction model: every erase target is an affine combination of predictions at one ``x_t`` and ``t``,
    the same formula in either type; docs/architectures.md); ``x`` is broadcast when it has batch 1.
    ``params`` (name → tensor) replaces those parameters for this call only (the teacher). ``emb`` is text-encoder
    states, or SDXL's conditions (``core.conditioning``)."""
    if x.shape[0] != emb.shape[0]:
        x = x.expand(emb.shape[0], *x.shape[1:])
    if params is None:
        return unet(x, t, **unet_kwargs(emb)).sample
    out = torch.func.functional_call(unet, params, (x, t), unet_kwargs(emb), strict=False)
    return out.sample


def each_sample(unet: nn.Module, x: torch.Tensor, t: torch.Tensor | int, emb: Condition,
                params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """``unet_eps`` for every pair of ``emb``'s M conditions and ``x``'s B samples, one batched call;
    returns (M, B, C, H, W). With B = 1 the call is exactly ``unet_eps(unet, x, t, emb, params)``."""
    m, b = emb.shape[0], x.shape[0]
    if b > 1:  # condition-major: [c0·x0, c0·x1, …, c1·x0, …]
        x, emb = x.repeat(m, 1, 1, 1), emb.repeat_interleave(b, dim=0)
    out = unet_eps(unet, x, t, emb, params=params)
    return out.view(m, b, *out.shape[1:])


@torch.no_grad()
def sample_partial(unet: nn.Module, scheduler: Any, latents: torch.Tensor, cond: Condition,
                   uncond: Condition, *, steps: int, guidance: float,
                   params: dict[str, torch.Tensor] | None = None, first: int = 0) -> torch.Tensor:
    """Run ``steps`` steps of ``scheduler`` (DDIM η = 0, or the model's own sampler) from its step ``first``
    (default the first) with classifier-free guidance on the UNet's own predictions, as the pipeline does (the
    scheduler carries the model's prediction type); ``scheduler`` has ``set_timesteps`` already called with the
    full step count (and, for a multistep sampler such as PNDM, no steps taken since; such a sampler only starts
    at 0). ``cond``/``uncond`` (batch 1) serve every one of ``latents``' samples, or ``cond`` holds one condition
    per sample; ``params`` as in ``unet_eps`` (the teacher)."""
    n = latents.shape[0]
    emb = cat_conditions([uncond.expand(n, *uncond.shape[1:]), cond.expand(n, *cond.shape[1:])])
    x = latents
    for t in scheduler.timesteps[first:first + steps]:
        model_in = scheduler.scale_model_input(torch.cat([x, x]), t)
        e_u, e_c = unet_eps(unet, model_in, t, emb, params=params).chunk(2)
        x = scheduler.step(e_u + guidance * (e_c - e_u), t, x).prev_sample
    return x


def model_scheduler(config: Any) -> Any:
    """A fresh scheduler of the class ``config`` names (the pipeline's own sampler, as configured)."""
    import diffusers

    name = config.get("_class_name")
    cls = getattr(diffusers, name, None) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"the scheduler config names no diffusers scheduler class ({name!r})")
    return cls.from_config(config)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch_dtype(precision))


# ---------------------------------------------------------------------------------------------
# Erasure

# Methods whose authors train with Adam (no weight decay): published ESD and AGE. The ReCARE reference: AdamW.
ADAM_METHODS = ("esd", "age")


@dataclass
class ErasePrompts:
    """Prompt embeddings, computed once. ``erase`` is (|E|, L, D); anchors/retains may be None;
    ``erase_from`` (1, L, D): published ESD's concept mapped from (None: each erase concept itself). For SDXL each
    is an ``SDXLCondition`` (``core.conditioning``), and ``sample_uncond`` is the unconditional input published
    ESD's x_t is sampled with when it differs from ``uncond`` (SDXL's pipeline: zeros; None: ``uncond``)."""

    uncond: Condition
    erase: Condition
    anchors: Condition | None = None
    retains: Condition | None = None
    erase_from: Condition | None = None
    sample_uncond: Condition | None = None


@dataclass
class EraseSettings:
    """The trainer's settings. No defaults here: the stages' options objects declare them
    (``stages.erase.EraseOptions``, ``stages.invert.InvertOptions``)."""

    method: str  # recare | esd (published) | esd-recare (ReCARE reference's ESD step) | stereo | recare-noretain
    iterations: int
    lr: float
    lr_schedule: str  # constant (reference) | linear | cosine, over ``iterations``
    guidance: float  # compositional scale s (recare, stereo, recare-noretain) or negative guidance g (esd)
    retain_weight: float
    latent_size: int
    sample_steps: int  # steps of the sampling schedule x_t is drawn from (DDIM; esd: the model's own sampler)
    precision: str  # fp32 | bf16 | fp16 (autocast)
    xt_batch: int  # x_t samples per iteration (reference: 1), one depth k, losses averaged
    sample_guidance: float = 3.0  # the guidance x_t is sampled with: the method's, not an option


@dataclass
class EraseSchedule:
    """Per-iteration indices into ``ErasePrompts`` (balanced, shuffled; drawn once from the seed).

    ``steps``: the DDIM step count ``k`` (x_t's depth) of each iteration, when the timesteps are
    stratified; ``None`` draws ``k`` uniformly at each iteration, as the reference does.
    """

    erase: list[int]
    anchor: list[int] | None = None
    retain: list[int] | None = None
    steps: list[int] | None = None


class EraseTrainer:
    """Trains ``names`` of ``unet`` in place; ``step(i)`` runs iteration ``i``.

    ``esd`` is published ESD (esd_sd.py): x_t from the frozen teacher with the model's own scheduler stopped
    after ``k ∈ [0, steps − 1]`` steps, timestep ``timesteps[k]`` of that schedule, target
    ``ε*_from − g(ε*_c − ε*_∅)``, Adam. The others draw x_t with the model being trained (DDIM,
    ``k ∈ [1, steps − 2]``, timestep ``int(k / steps · 1000)`` of the 1000-step schedule), AdamW.
    """

    def __init__(self, unet: nn.Module, names: Sequence[str], prompts: ErasePrompts, schedule: EraseSchedule,
                 settings: EraseSettings, scheduler_config: Any, generator: torch.Generator,
                 lora: LoraSettings | None = None) -> None:
        from diffusers import DDIMScheduler

        self.unet, self.names, self.prompts, self.schedule = unet, list(names), prompts, schedule
        self.settings, self.generator = settings, generator
        self.device = next(unet.parameters()).device
        if settings.method in ANCHORED and prompts.anchors is None:
            raise ValueError(f"method '{settings.method}' needs anchor prompts")
        if settings.method == "recare" and prompts.retains is None and settings.retain_weight != 0:
            raise ValueError("method 'recare' needs retain prompts")
        unet.requires_grad_(False)
        # With ``lora``, the trained parameters are LoRA adapters beside the modules of ``names`` and the teacher
        # is the base model with the adapters switched off (``core.lora``): ``self.teacher`` stays empty.
        self.lora = lora
        if lora is not None:
            self.names = add_lora(unet, target_modules(self.names), lora)
        params = dict(unet.named_parameters())
        self.params = [params[n] for n in self.names]
        for p in self.params:
            p.requires_grad_(True)
        keep_dtype = None if settings.precision == "fp32" else torch_dtype(settings.precision)
        # The teacher: original values of the trained parameters only (see the module docstring).
        self.teacher = {} if lora is not None else {
            n: p.detach().clone().to(keep_dtype or p.dtype) for n, p in zip(self.names, self.params, strict=True)}
        # Adam(W) has no cross-parameter coupling here (no gradient clipping), so each parameter is updated
        # as soon as its gradient is complete and the gradient is freed at once: gradients of all trained
        # parameters never coexist (saves one copy of the trained parameters at the peak). fp16 needs the
        # GradScaler's global inf check, so it keeps the usual one-optimizer step. Published ESD uses Adam (no
        # weight decay), as does AGE; the ReCARE reference AdamW (weight decay 0.01).
        self.scaler = torch.amp.GradScaler(self.device.type) if settings.precision == "fp16" else None
        self.fused = self.scaler is None
        self.published_esd = settings.method == "esd"
        optimizer: Any = torch.optim.Adam if settings.method in ADAM_METHODS else torch.optim.AdamW
        self.optimizers = ([optimizer([p], lr=settings.lr) for p in self.params] if self.fused
                           else [optimizer(self.params, lr=settings.lr)])
        self.hooks = [p.register_post_accumulate_grad_hook(self._step_in_backward(opt))
                      for p, opt in zip(self.params, self.optimizers, strict=True)] if self.fused else []
        # clip_sample=False: the reference's DDIM sampler never clips the predicted x0, and latents are not
        # bounded to [-1, 1]. DDIMScheduler clips by default, so a model config that does not say otherwise
        # (SD v1.4's does) would draw x_t from a broken sampler (the toy world's: 20% of samples right vs 97%).
        # Published ESD samples with the pipeline's own scheduler as configured (PNDM for SD v1.4).
        self.sampler = (model_scheduler(scheduler_config) if self.published_esd
                        else DDIMScheduler.from_config(scheduler_config, clip_sample=False))
        self.sampler.set_timesteps(settings.sample_steps, device=self.device)
        full = DDIMScheduler.from_config(scheduler_config, clip_sample=False)
        full.set_timesteps(full.config.num_train_timesteps, device=self.device)
        self.train_timesteps = full.timesteps
        self.channels = int(getattr(unet, "config").in_channels)  # noqa: B009 (diffusers config)

    @contextlib.contextmanager
    def _as_teacher(self) -> Iterator[dict[str, torch.Tensor] | None]:
        """Within the block the UNet calls given the yielded ``params`` compute the frozen teacher."""
        if self.lora is None:
            yield self.teacher
        else:
            with adapters_disabled(self.unet):
                yield None

    @staticmethod
    def _step_in_backward(optimizer: torch.optim.Optimizer) -> Any:
        def hook(_: torch.Tensor) -> None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return hook

    def _optimizer_state(self, idx: int) -> dict[str, Any]:
        opt = self.optimizers[idx] if self.fused else self.optimizers[0]
        return opt.state.get(self.params[idx], {})

    def _draw(self, i: int) -> tuple[int, torch.Tensor]:
        if self.schedule.steps is not None:
            k = self.schedule.steps[i]
        else:
            choices = (esd_step_choices if self.published_esd else ddim_step_choices)(self.settings.sample_steps)
            k = int(torch.randint(choices.start, choices.stop, (1,), generator=self.generator).item())
        shape = (self.settings.xt_batch, self.channels, self.settings.latent_size, self.settings.latent_size)
        z = torch.randn(shape, generator=self.generator).to(self.device)
        return k, z * self.sampler.init_noise_sigma

    def _published_esd(self, i: int) -> tuple[int, torch.Tensor, torch.Tensor, torch.Tensor, Condition]:
        """(k, x_t, t, target, student condition) of a published-ESD iteration (esd_sd.py's step, with the
        teacher predictions batched)."""
        s, p = self.settings, self.prompts
        h = self.schedule.erase[i]
        k, z = self._draw(i)
        cond_h = p.erase[h:h + 1]
        cond_from = p.erase_from if p.erase_from is not None else cond_h
        self.sampler.set_timesteps(s.sample_steps, device=self.device)  # a fresh multistep state (PNDM)
        with autocast(self.device, s.precision), self._as_teacher() as teacher:
            x_t = sample_partial(self.unet, self.sampler, z, cond_from,
                                 p.uncond if p.sample_uncond is None else p.sample_uncond, steps=k,
                                 guidance=s.sample_guidance, params=teacher).float()
        t = self.sampler.timesteps[k]
        teacher_emb = [p.uncond, cond_h] if p.erase_from is None else [p.uncond, cond_h, p.erase_from]
        with torch.no_grad(), autocast(self.device, s.precision), self._as_teacher() as teacher:
            eps = each_sample(self.unet, x_t, t, cat_conditions(teacher_emb), params=teacher).float()
        target = esd_target(eps[-1] if p.erase_from is not None else eps[1], eps[1], eps[0], s.guidance)
        return k, x_t, t, target, cond_from

    def step(self, i: int) -> dict[str, float]:
        s, p = self.settings, self.prompts
        if self.published_esd:
            k, x_t, t, target, student_emb = self._published_esd(i)
            return self._learn(i, k, x_t, t, student_emb, target)
        h = self.schedule.erase[i]
        k, z = self._draw(i)
        cond_h = p.erase[h:h + 1]
        with autocast(self.device, s.precision):
            x_t = sample_partial(self.unet, self.sampler, z, cond_h, p.uncond, steps=k,
                                 guidance=s.sample_guidance).float()
        t = self.train_timesteps[training_timestep_index(k, s.sample_steps, len(self.train_timesteps))]

        # One batched teacher forward: [∅, E..., anchor?, retain?]
        use_retain = s.method == "recare" and s.retain_weight != 0
        teacher_emb: list[Condition] = [p.uncond, cond_h] if s.method == "esd-recare" else [p.uncond, p.erase]
        if s.method != "esd-recare":
            assert p.anchors is not None and self.schedule.anchor is not None
            a = self.schedule.anchor[i]
            teacher_emb.append(p.anchors[a:a + 1])
        if use_retain:
            assert p.retains is not None and self.schedule.retain is not None
            r = self.schedule.retain[i]
            retain_emb = p.retains[r:r + 1]
            teacher_emb.append(retain_emb)
        with torch.no_grad(), autocast(self.device, s.precision), self._as_teacher() as teacher:
            eps = each_sample(self.unet, x_t, t, cat_conditions(teacher_emb), params=teacher).float()
        # eps: (conditions, samples, C, H, W)
        n_e = p.erase.shape[0]
        if s.method == "esd-recare":
            target = esd_recare_target(eps[1], eps[0], s.guidance)
        else:
            target = compositional_target(eps[0], eps[1:1 + n_e], eps[1 + n_e], s.guidance)
        student_emb = cat_conditions([cond_h, retain_emb]) if use_retain else cond_h
        return self._learn(i, k, x_t, t, student_emb, target, eps[-1] if use_retain else None)

    def _learn(self, i: int, k: int, x_t: torch.Tensor, t: torch.Tensor, student_emb: Condition,
               target: torch.Tensor, retain_target: torch.Tensor | None = None) -> dict[str, float]:
        """The student forward (erase condition, retain prompt when ``retain_target``), loss, optimizer step."""
        s = self.settings
        use_retain = retain_target is not None
        self._schedule_lr(i)
        with autocast(self.device, s.precision):
            pred = each_sample(self.unet, x_t, t, student_emb)
        loss, e_loss, r_loss = erase_loss(pred[0], target, pred[1] if use_retain else None,
                                          retain_target, s.retain_weight)
        self._backward_and_step(loss)
        out = {"loss": float(loss.detach()), "erase": float(e_loss.detach()), "k": float(k)}
        if r_loss is not None:
            out["retain"] = float(r_loss.detach())
        return out

    def _schedule_lr(self, i: int) -> None:
        """Set iteration ``i``'s rate of the schedule (nothing to do at a constant rate)."""
        s = self.settings
        if s.lr_schedule != "constant":
            lr = s.lr * lr_factor(s.lr_schedule, i, s.iterations)
            for optimizer in self.optimizers:
                for group in optimizer.param_groups:
                    group["lr"] = lr

    def _backward_and_step(self, loss: torch.Tensor) -> None:
        """Backpropagate ``loss`` and update: through the grad scaler (fp16) with one optimizer, else the hooks
        step each parameter's optimizer inside backward."""
        if self.scaler is not None:
            optimizer = self.optimizers[0]
            optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            loss.backward()

    # -- checkpoints: plain tensors (safetensors-friendly, no pickle) -----------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {"rng": self.generator.get_state().clone()}
        for idx, (name, param) in enumerate(zip(self.names, self.params, strict=True)):
            out[f"param/{name}"] = param.detach().cpu().clone()
            state = self._optimizer_state(idx)
            for key in ("step", "exp_avg", "exp_avg_sq"):
                if key in state:
                    out[f"adam/{idx}/{key}"] = torch.as_tensor(state[key]).detach().cpu().clone()
        if self.scaler is not None:
            sd = self.scaler.state_dict()
            out["scaler"] = torch.tensor([sd.get("scale", 1.0), sd.get("_growth_tracker", 0)], dtype=torch.float64)
        return out

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(tensors["rng"])
        with torch.no_grad():
            for name, param in zip(self.names, self.params, strict=True):
                param.copy_(tensors[f"param/{name}"])
        states: dict[int, dict[str, torch.Tensor]] = {}
        for idx, param in enumerate(self.params):
            if f"adam/{idx}/step" in tensors:
                states[idx] = {
                    "step": tensors[f"adam/{idx}/step"].clone(),
                    "exp_avg": tensors[f"adam/{idx}/exp_avg"].to(param.device, param.dtype).clone(),
                    "exp_avg_sq": tensors[f"adam/{idx}/exp_avg_sq"].to(param.device, param.dtype).clone(),
                }
        if self.fused:
            for idx, opt in enumerate(self.optimizers):
                opt.load_state_dict({"state": {0: states[idx]} if idx in states else {},
                                     "param_groups": opt.state_dict()["param_groups"]})
        else:
            opt = self.optimizers[0]
            opt.load_state_dict({"state": states, "param_groups": opt.state_dict()["param_groups"]})
        if self.scaler is not None and "scaler" in tensors:
            scale, tracker = tensors["scaler"].tolist()
            self.scaler.load_state_dict({**self.scaler.state_dict(), "scale": scale, "_growth_tracker": int(tracker)})

    def trained_values(self) -> dict[str, torch.Tensor]:
        """The trained UNet parameters' values, named as in the UNet (with LoRA: each adapted module's weight with
        the adapter's update merged in)."""
        if self.lora is not None:
            return merged_values(self.unet)
        return {n: p.detach() for n, p in zip(self.names, self.params, strict=True)}

    def release(self) -> None:
        """Freeze the UNet again and drop the teacher copy and optimizer state. With LoRA the adapters' updates
        are merged into the UNet's weights and the adapters removed: either way the UNet is left erased."""
        for handle in self.hooks:
            handle.remove()
        self.hooks.clear()
        if self.lora is not None:
            remove_lora(self.unet, merge=True)
        self.unet.requires_grad_(False)
        self.teacher.clear()
        self.optimizers.clear()


# ---------------------------------------------------------------------------------------------
# Textual inversion


@dataclass
class InversionSettings:
    """No defaults: the stages' options objects declare them (``stages.invert.InvertOptions``,
    ``stages.attack.AttackOptions``). An optimizer step averages ``accumulation`` micro-batches of
    ``batch_size`` samples (the textual-inversion reference's gradient accumulation)."""

    steps: int
    lr: float
    precision: str
    batch_size: int = 1
    accumulation: int = 1


@dataclass
class SecondEncoder:
    """SDXL's second text encoder in textual inversion: its placeholder ids from ``first_id``, earlier rounds'
    vectors ``fixed`` (n, D₂), the new token's start ``init`` (1, D₂), the templates as its tokenizer reads them
    ``template_ids`` (T, 77), and the image size (H, W) of the size ids."""

    text_encoder: Any
    first_id: int
    fixed: torch.Tensor
    init: torch.Tensor
    template_ids: torch.Tensor
    size: tuple[int, int]


class InversionTrainer:
    """Learns one new placeholder vector on cached latent distributions (for SDXL, with ``second``, one per text
    encoder, trained together as diffusers' SDXL textual-inversion example does, on SDXL's conditions).

    Token ids ``first_id + j`` read ``fixed[j]`` (earlier rounds' vectors, frozen) and the trained
    token is ``first_id + len(fixed)``, initialised from ``init`` (1, D). ``latents`` is
    (N, 2, 2, C, H, W): per image, (plain, flipped) × (mean, std) of the VAE's latent distribution,
    already multiplied by the VAE scaling factor. ``template_ids`` is (T, 77) token ids of the prompt
    templates filled with the trained token. The loss is the MSE against the target in the model's own
    prediction type (``core.prediction.training_target``: the noise, or v for a v-prediction model).
    """

    def __init__(self, unet: nn.Module, text_encoder: Any, first_id: int, fixed: torch.Tensor, init: torch.Tensor,
                 latents: torch.Tensor, template_ids: torch.Tensor, scheduler_config: Any,
                 settings: InversionSettings, generator: torch.Generator, flip_p: float = 0.5,
                 second: SecondEncoder | None = None) -> None:
        from diffusers import DDPMScheduler

        self.unet, self.text_encoder, self.first_id = unet, text_encoder, first_id
        self.fixed = fixed.detach().float()
        self.param = nn.Parameter(init.detach().clone().float().reshape(1, -1))
        self.second = second
        self.param_2 = None if second is None else nn.Parameter(second.init.detach().clone().float().reshape(1, -1))
        self.latents, self.template_ids = latents, template_ids
        self.settings, self.generator, self.flip_p = settings, generator, flip_p
        self.device = latents.device
        self.noise_scheduler = DDPMScheduler.from_config(scheduler_config)
        self.prediction_type = str(self.noise_scheduler.config.prediction_type)
        self.num_train_timesteps = int(self.noise_scheduler.config.num_train_timesteps)
        # Reference: AdamW (default weight decay) at lr × batch size, batch size 1.
        self.optimizer = torch.optim.AdamW(self.params(), lr=settings.lr)

    def params(self) -> list[nn.Parameter]:
        return [self.param] if self.param_2 is None else [self.param, self.param_2]

    def vector(self) -> torch.Tensor:
        return self.param.detach().clone()

    def vectors(self) -> list[torch.Tensor]:
        """The learned vector of each text encoder (one; SDXL: two)."""
        return [p.detach().clone() for p in self.params()]

    def _micro_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
        """One micro-batch's (noisy latents, target, timesteps, template numbers); the target is the noise for an
        ε-model, v for a v-model. The draws come from the run's
        generator in a fixed order (per sample: image, flip, template; then the latent samples, the noises,
        the timesteps), so a batch of one draws exactly as a plain loop over single samples does."""
        g, b = self.generator, self.settings.batch_size
        n = self.latents.shape[0]
        picks = []
        for _ in range(b):
            index = int(torch.randint(0, n, (1,), generator=g).item())
            flip = int(torch.rand((1,), generator=g).item() < self.flip_p)
            template = int(torch.randint(0, self.template_ids.shape[0], (1,), generator=g).item())
            picks.append((index, flip, template))
        samples = []
        for index, flip, _ in picks:
            mean, std = self.latents[index, flip]
            samples.append(mean + std * torch.randn(mean.shape, generator=g).to(self.device))
        sample = torch.stack(samples)
        noise = torch.stack([torch.randn(sample.shape[1:], generator=g) for _ in range(b)]).to(self.device)
        t = torch.randint(0, self.num_train_timesteps, (b,), generator=g).to(self.device)
        noisy = self.noise_scheduler.add_noise(sample, noise, t)
        target = training_target(self.prediction_type, sample, noise, self.noise_scheduler.alphas_cumprod, t)
        return noisy, target, t, [template for _, _, template in picks]

    def _predict(self, noisy: torch.Tensor, t: torch.Tensor, rows: list[int]) -> torch.Tensor:
        """The UNet's prediction for the templates ``rows`` with the current vectors."""
        ids = self.template_ids[rows].to(self.device)
        extra = torch.cat([self.fixed, self.param])
        second = self.second
        if second is None:
            with placeholder_embeddings(self.text_encoder, self.first_id, extra), \
                    autocast(self.device, self.settings.precision):
                enc = self.text_encoder(ids)[0]
                return self.unet(noisy, t, encoder_hidden_states=enc).sample
        assert self.param_2 is not None
        extra_2 = torch.cat([second.fixed.float(), self.param_2])
        ids_2 = second.template_ids[rows].to(self.device)
        with placeholder_embeddings(self.text_encoder, self.first_id, extra), \
                placeholder_embeddings(second.text_encoder, second.first_id, extra_2), \
                autocast(self.device, self.settings.precision):
            hidden, pooled = sdxl_states([self.text_encoder, second.text_encoder], [ids, ids_2])
            cond = SDXLCondition(hidden, pooled, time_ids(*second.size, len(rows), dtype=hidden.dtype,
                                                          device=self.device))
            return self.unet(noisy, t, **unet_kwargs(cond)).sample

    def step(self) -> float:
        """One optimizer step over ``accumulation`` micro-batches; returns their mean loss."""
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for _ in range(self.settings.accumulation):
            noisy, target, t, rows = self._micro_batch()
            loss = mse(self._predict(noisy, t, rows), target)
            (loss / self.settings.accumulation).backward()
            total += float(loss.detach())
        self.optimizer.step()
        return total / self.settings.accumulation

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The vector, AdamW's state and the generator: what a resumed run needs to continue exactly."""
        out = {"vector": self.param.detach().cpu().clone(), "rng": self.generator.get_state().clone()}
        for key, value in self.optimizer.state.get(self.param, {}).items():
            out[f"adam/{key}"] = torch.as_tensor(value).detach().cpu().clone()
        if self.param_2 is not None:
            out["vector_2"] = self.param_2.detach().cpu().clone()
            for key, value in self.optimizer.state.get(self.param_2, {}).items():
                out[f"adam_2/{key}"] = torch.as_tensor(value).detach().cpu().clone()
        return out

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(tensors["rng"])
        for param, key in ((self.param, ""), (self.param_2, "_2")):
            if param is None:
                continue
            with torch.no_grad():
                param.copy_(tensors[f"vector{key}"].to(param.device))
            prefix = f"adam{key}/"
            state = {k[len(prefix):]: v.clone().to(param.device) if v.dim() else v.clone()
                     for k, v in tensors.items() if k.startswith(prefix)}
            if state:
                self.optimizer.state[param] = state


@torch.no_grad()
def latent_distributions(vae: Any, pixels: torch.Tensor, *, batch_size: int = 1) -> torch.Tensor:
    """(N, 3, H, W) pixels in [-1, 1] → (N, 2, 2, C, h, w): (plain, flipped) × (mean, std), scaled
    by the VAE's scaling factor (a sample is ``mean + std · noise``). One image (and its flip) per VAE call
    by default: encoding is a one-off, and larger batches only raise the peak memory."""
    scale = float(vae.config.scaling_factor)
    out = []
    for start in range(0, pixels.shape[0], batch_size):
        chunk = pixels[start:start + batch_size]
        both = torch.cat([chunk, torch.flip(chunk, dims=[-1])])
        dist = vae.encode(both.to(vae.device, vae.dtype)).latent_dist
        mean, std = dist.mean.float() * scale, dist.std.float() * scale
        b = chunk.shape[0]
        views = torch.stack([torch.stack([mean[:b], std[:b]], 1), torch.stack([mean[b:], std[b:]], 1)], 1)
        out.append(views)
    return torch.cat(out)
