"""AGE (``recare erase --method age``) against a naive transcription of the authors' code (train_age.py,
gen_embedding_matrix.py and the ldm DDIM sampler of tuananhbui89/Adaptive-Guided-Erasure) on the tiny model:
the sampler's x_t, the first UNet update and weight step, the concept search; bad input, resume, sample, CLI."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open

from tests.helpers import check_resume_gives_same_bytes, invoke, shell

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STEPS = 4  # DDIM steps of the tiny runs (the authors': 50)
TRAIN_METHOD = "xattn"  # of the step comparison (see its docstring)
LATENT = 16
WORDS = "person\nnaked\nnude\ncat\ndog\nnudity\nt-shirt\nsky\nperson\n"


def _bundle(tiny_sd_dir: Path) -> Any:
    from recare_cli.models.sd import load_sd

    return load_sd(str(tiny_sd_dir), device="cpu", dtype="fp32")


def _tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}, dict(fh.metadata())  # noqa: SIM118


@pytest.fixture
def words(tmp_path: Path) -> Path:
    path = tmp_path / "words.txt"
    path.write_text(WORDS)
    return path


def _args(tiny_sd_dir: Path, out: Path | str, words: Path, *extra: str) -> list[str]:
    return ["erase", "--method", "age", "--target", "nudity", "--concepts", str(words), "--model", str(tiny_sd_dir),
            "--device", "cpu", "--resolution", "32", "--iterations", "2", "--ddim-steps", "3", "-o", str(out), *extra]


# ---- a naive transcription of the authors' code ------------------------------------------------------------------


def ldm_name(name: str) -> str:
    """A diffusers UNet parameter's name with the top-level modules the authors' filters look at renamed as ldm
    names them (their filters test substrings that are the same in both namings elsewhere: attn1, attn2, to_q…)."""
    for diffusers, ldm in (("conv_norm_out.", "out.0."), ("conv_out.", "out.2."), ("time_embedding.", "time_embed."),
                           ("conv_in.", "input_blocks.0.0.")):
        if name.startswith(diffusers):
            return ldm + name[len(diffusers):]
    return name


def authors_parameters(unet: torch.nn.Module, train_method: str) -> list[str]:
    """train_age.py's parameter selection, verbatim, over every named parameter (by its ldm name)."""
    chosen = []
    for diffusers_name, _ in unet.named_parameters():
        name = ldm_name(diffusers_name)
        if train_method == "noxattn":
            if name.startswith("out.") or "attn2" in name or "time_embed" in name:
                pass
            else:
                chosen.append(diffusers_name)
        if train_method == "selfattn" and "attn1" in name:
            chosen.append(diffusers_name)
        if train_method == "xattn" and "attn2" in name:
            chosen.append(diffusers_name)
        if train_method == "xattn_matching" and "attn2" in name and ("to_q" in name or "to_k" in name
                                                                      or "to_v" in name):
            chosen.append(diffusers_name)
        if train_method == "full":
            chosen.append(diffusers_name)
        if train_method == "notime" and not (name.startswith("out.") or "time_embed" in name):
            chosen.append(diffusers_name)
    return chosen


def authors_gumbel_softmax(logits: torch.Tensor, u: torch.Tensor, temperature: float, hard: int, k: int,
                           eps: float = 1e-10) -> torch.Tensor:
    """train_age.py's gumbel_softmax with its ``torch.rand_like(logits)`` given as ``u``."""
    gumbel = -torch.log(-torch.log(u + eps) + eps)
    y = logits + gumbel
    y = torch.nn.functional.softmax(y / temperature, dim=-1)
    if hard == 1:
        y_hard = torch.zeros_like(logits)
        y_hard.scatter_(-1, torch.argmax(y, dim=-1, keepdim=True), 1.0)
        y = (y_hard - y).detach() + y
    elif hard == 0:
        top_k_values, _ = torch.topk(y, k, dim=-1)
        top_k_mask = y >= top_k_values[..., -1].unsqueeze(-1)
        y = y * top_k_mask.float()
        y = y / y.sum(dim=-1, keepdim=True)
    return y


class LdmSampler:
    """ldm's DDIMSampler as the authors call it (``sample(S, …, t_start=-1, till_T)``, η = 0), on a diffusers UNet
    and the model's ᾱ: make_ddim_timesteps('uniform'), make_ddim_sampling_parameters, ddim_sampling's loop and
    break rule, p_sample_ddim's update."""

    def __init__(self, alphas_cumprod: torch.Tensor, steps: int) -> None:
        total = alphas_cumprod.shape[0]
        c = total // steps
        self.ddim_timesteps = np.asarray(list(range(0, total, c))) + 1
        self.ddim_alphas = alphas_cumprod[self.ddim_timesteps]
        self.ddim_alphas_prev = np.asarray([alphas_cumprod[0]] + alphas_cumprod[self.ddim_timesteps[:-1]].tolist())  # noqa: RUF005
        self.ddim_sqrt_one_minus_alphas = np.sqrt(1.0 - self.ddim_alphas.numpy())

    @torch.no_grad()
    def sample(self, unet: Any, cond: torch.Tensor, uc: torch.Tensor, x_t: torch.Tensor, scale: float,
               till_t: int, t_start: int = -1) -> torch.Tensor:
        img = x_t
        timesteps = self.ddim_timesteps[:t_start]
        time_range = np.flip(timesteps)
        total_steps = timesteps.shape[0]
        till = till_t
        for i, step in enumerate(time_range):
            index = total_steps - i - 1
            ts = torch.full((1,), int(step), dtype=torch.long)
            x_in, t_in, c_in = torch.cat([img] * 2), torch.cat([ts] * 2), torch.cat([uc, cond])
            e_t_uncond, e_t = unet(x_in, t_in, encoder_hidden_states=c_in).sample.chunk(2)
            e_t = e_t_uncond + scale * (e_t - e_t_uncond)
            a_t = torch.full((1, 1, 1, 1), float(self.ddim_alphas[index]))
            a_prev = torch.full((1, 1, 1, 1), float(self.ddim_alphas_prev[index]))
            sqrt_one_minus_at = torch.full((1, 1, 1, 1), float(self.ddim_sqrt_one_minus_alphas[index]))
            pred_x0 = (img - sqrt_one_minus_at * e_t) / a_t.sqrt()
            dir_xt = (1.0 - a_prev - 0.0 ** 2).sqrt() * e_t
            img = a_prev.sqrt() * pred_x0 + dir_xt
            if index + 1 == till:
                break
        return img


class AuthorsLoop:
    """train_age.py's training loop, one loop index at a time, call by call: two full UNets (the trained one and
    the frozen original), Adam over the selected parameters, the weights ``weight_pi`` (zeros + 1/n) with their own
    Adam, x_t from the trained model, separate UNet calls, x0 predictions, ``MSELoss``. The random draws are given
    (they replay the engine's: the authors draw them from torch's global generator in the same order)."""

    def __init__(self, unet: Any, scheduler: Any, names: list[str], emb_c_e: torch.Tensor, uc: torch.Tensor,
                 preserved: torch.Tensor, *, lr: float, gumbel_lr: float, temp: float, hard: int, topk: int,
                 negative_guidance: float, lamda: float, pgd_num_steps: int = 2, start_guidance: float = 3.0) -> None:
        self.model_orig = copy.deepcopy(unet).requires_grad_(False)
        self.model = copy.deepcopy(unet).requires_grad_(False)
        params = dict(self.model.named_parameters())
        parameters = [params[n].requires_grad_(True) for n in names]
        self.params = params
        self.opt = torch.optim.Adam(parameters, lr=lr)
        self.criteria = torch.nn.MSELoss()
        self.sampler = LdmSampler(scheduler.alphas_cumprod, STEPS)
        self.emb_c_e, self.uc = emb_c_e, uc
        self.preserved_matrix = preserved.flatten(start_dim=1)
        n = self.preserved_matrix.shape[0]
        weight_pi = torch.zeros((1, n), dtype=self.preserved_matrix.dtype) + 1 / n
        self.weight_pi = torch.autograd.Variable(weight_pi, requires_grad=True)
        self.opt_weight_pi = torch.optim.Adam([self.weight_pi], lr=gumbel_lr)
        self.temp, self.hard, self.topk = temp, hard, topk
        self.negative_guidance, self.lamda, self.pgd_num_steps = negative_guidance, lamda, pgd_num_steps
        self.start_guidance = start_guidance

    def run(self, i: int, u: torch.Tensor, t_enc: int, t_enc_ddpm: torch.Tensor, start_code: torch.Tensor,
            first_step: int = 1) -> float:
        """Loop index ``i``; returns its loss. ``first_step`` 0 would sample with the whole DDIM schedule (to show the
        comparison sees the authors' t_start = -1)."""
        model, model_orig, criteria = self.model, self.model_orig, self.criteria
        self.opt.zero_grad()
        model.zero_grad()
        model_orig.zero_grad()
        self.opt_weight_pi.zero_grad()
        emb_c_e = self.emb_c_e
        shape = emb_c_e.shape
        emb_c_t = torch.reshape(torch.matmul(authors_gumbel_softmax(self.weight_pi, u, self.temp, self.hard, self.topk),
                                             self.preserved_matrix).unsqueeze(0), shape)
        emb_0 = emb_c_t.clone().detach()
        og_num = round((int(t_enc) / STEPS) * 1000)
        og_num_lim = round((int(t_enc + 1) / STEPS) * 1000)
        assert og_num <= int(t_enc_ddpm) < og_num_lim
        with torch.no_grad():
            z_c_e = self.sampler.sample(model, emb_c_e, self.uc, start_code, self.start_guidance, int(t_enc),
                                        t_start=-1 if first_step else 50)
            z_c_t = self.sampler.sample(model, emb_c_t, self.uc, start_code, self.start_guidance, int(t_enc),
                                        t_start=-1 if first_step else 50)
            eps_0_org = model_orig(z_c_e, t_enc_ddpm, encoder_hidden_states=emb_0).sample
            eps_e_org = model_orig(z_c_e, t_enc_ddpm, encoder_hidden_states=emb_c_e).sample
            eps_t_org = model_orig(z_c_t, t_enc_ddpm, encoder_hidden_states=emb_c_t).sample
        eps_e = model(z_c_e, t_enc_ddpm, encoder_hidden_states=emb_c_e).sample
        eps_t = model(z_c_t, t_enc_ddpm, encoder_hidden_states=emb_c_t).sample
        assert torch.all(self.sampler.ddim_alphas[:-1] >= self.sampler.ddim_alphas[1:])
        alpha_bar_t = self.sampler.ddim_alphas[int(t_enc)]
        eps_e_pred = (z_c_e - torch.sqrt(1 - alpha_bar_t) * eps_e) / torch.sqrt(alpha_bar_t)
        eps_t_pred = (z_c_t - torch.sqrt(1 - alpha_bar_t) * eps_t) / torch.sqrt(alpha_bar_t)
        eps_e_org_pred = (z_c_e - torch.sqrt(1 - alpha_bar_t) * eps_e_org) / torch.sqrt(alpha_bar_t)
        eps_0_org_pred = (z_c_e - torch.sqrt(1 - alpha_bar_t) * eps_0_org) / torch.sqrt(alpha_bar_t)
        eps_t_org_pred = (z_c_t - torch.sqrt(1 - alpha_bar_t) * eps_t_org) / torch.sqrt(alpha_bar_t)
        loss: Any = 0
        if i % self.pgd_num_steps == 0:
            loss += criteria(eps_e_pred, eps_0_org_pred - (self.negative_guidance * (eps_e_org_pred - eps_0_org_pred)))
            loss += self.lamda * criteria(eps_t_pred, eps_t_org_pred)
            loss.backward()
            self.opt.step()
        else:
            self.opt.zero_grad()
            self.opt_weight_pi.zero_grad()
            model.zero_grad()
            model_orig.zero_grad()
            loss -= criteria(eps_e_pred, eps_0_org_pred)
            loss -= self.lamda * criteria(eps_t_pred, eps_t_org_pred)
            loss.backward()
            self.opt_weight_pi.step()
        return float(loss.detach())


def replay(trainer: Any, n: int) -> tuple[torch.Tensor, int, torch.Tensor, torch.Tensor]:
    """The next loop index's draws from a copy of the engine's generator (u, t_enc, timestep, start code), in the
    authors' order: rand_like for the Gumbel noise, randint for t_enc, randint for the timestep, randn."""
    g = torch.Generator().set_state(trainer.generator.get_state())
    u = torch.rand((1, n), generator=g)
    t_enc = int(torch.randint(STEPS, (1,), generator=g).item())
    lo, hi = round(t_enc / STEPS * 1000), round((t_enc + 1) / STEPS * 1000)
    t = torch.randint(lo, hi, (1,), generator=g)
    z = torch.randn((1, 4, LATENT, LATENT), generator=g)
    return u, t_enc, t, z


def _age_trainer(bundle: Any, states: dict[str, torch.Tensor], *, lr: float, gumbel_lr: float, hard: int,
                 negative_guidance: float, lamda: float, train_method: str = "noxattn") -> Any:
    from recare_cli.core.age import age_parameters
    from recare_cli.core.age_trainer import AgeSettings, AgeTrainer
    from recare_cli.core.diffusion import ErasePrompts
    from recare_cli.stages.erase import EraseOptions, erase_settings

    opts = EraseOptions(target="nudity", output="-", method="age", lr=lr, ddim_steps=STEPS, iterations=2)
    settings = erase_settings(opts, LATENT)
    settings.guidance, settings.retain_weight = negative_guidance, lamda
    unet = bundle.pipe.unet
    return AgeTrainer(unet, age_parameters(unet, train_method), ErasePrompts(uncond=states["uc"], erase=states["c_e"]),
                      states["concepts"], settings, AgeSettings(gumbel_lr=gumbel_lr, gumbel_temp=2.0, gumbel_hard=hard,
                                                                gumbel_topk=2, pgd_num_steps=2),
                      bundle.pipe.scheduler.config, torch.Generator().manual_seed(0))


def _states(n: int = 6) -> dict[str, torch.Tensor]:
    """Well-separated synthetic text states: the tiny model's random CLIP maps every prompt to nearly the same
    states, and the property under test is the engine's, not CLIP's."""
    g = torch.Generator().manual_seed(5)
    return {"uc": 3 * torch.randn(1, 77, 32, generator=g), "c_e": 3 * torch.randn(1, 77, 32, generator=g),
            "concepts": 3 * torch.randn(n, 77, 32, generator=g)}


# ---- the sampler, the first steps --------------------------------------------------------------------------------


def test_x_t_is_the_authors_ldm_sample(tiny_sd_dir: Path) -> None:
    """For every t_enc, the engine's x_t (diffusers' DDIM from its second step, core.age.sampler_steps steps) is the
    authors' ldm DDIM sample with t_start = -1 and till_T = t_enc; with the whole schedule it would not be."""
    from diffusers import DDIMScheduler

    from recare_cli.core.age import sampler_steps
    from recare_cli.core.diffusion import sample_partial

    bundle = _bundle(tiny_sd_dir)
    unet, states = bundle.pipe.unet, _states()
    scheduler = DDIMScheduler.from_config(bundle.pipe.scheduler.config, clip_sample=False)
    scheduler.set_timesteps(STEPS)
    ldm = LdmSampler(scheduler.alphas_cumprod, STEPS)
    z = torch.randn((1, 4, LATENT, LATENT), generator=torch.Generator().manual_seed(1))
    gaps = []
    for t_enc in range(STEPS):
        theirs = ldm.sample(unet, states["c_e"], states["uc"], z, 3.0, t_enc)
        ours = sample_partial(unet, scheduler, z, states["c_e"], states["uc"], steps=sampler_steps(t_enc, STEPS),
                              guidance=3.0, first=1)
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
        whole = sample_partial(unet, scheduler, z, states["c_e"], states["uc"],
                               steps=sampler_steps(t_enc, STEPS) + 1, guidance=3.0)
        gaps.append(float((whole - theirs).abs().max()))
    assert [sampler_steps(t, 50) for t in (0, 1, 2, 49)] == [49, 49, 48, 1]
    assert min(gaps) > 1e-3


def test_alpha_schedules_agree() -> None:
    """ldm builds ᾱ in float64 (then float32), diffusers in float32: SD's schedules agree to 1e-6 relative."""
    from diffusers import DDIMScheduler

    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    ldm = torch.tensor(np.cumprod(1.0 - betas.numpy(), axis=0), dtype=torch.float32)
    ours = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear").alphas_cumprod
    assert float(((ours - ldm).abs() / ldm).max()) < 1e-6


@pytest.mark.parametrize(("hard", "negative_guidance", "lamda"), [(1, 1.0, 1.0), (0, 2.0, 0.5)])
def test_first_steps_equal_the_authors_loop(tiny_sd_dir: Path, hard: int, negative_guidance: float,
                                            lamda: float) -> None:
    """Two of the engine's iterations (UNet update, weight step, twice) against the authors' loop on the same draws:
    the same losses, gradients (Adam's first moments), Adam-updated UNet weights and weights π (and their moments).

    Adam's first step turns any gradient into about ±lr, also one that is zero but for rounding: the weights are
    compared where the authors' gradient stands above 1e-4 of the largest, the moments everywhere. The comparison
    trains the cross-attention: the nudity setting's noxattn also trains biases that feed a group norm of one channel
    per group on the tiny UNet, whose gradients are all rounding (1e-9 against 1e-2); that selection is checked
    against the authors' filter in test_age_train_methods_select_the_authors_parameters."""
    bundle = _bundle(tiny_sd_dir)
    states = _states()
    lr, gumbel_lr = 1e-3, 1e-2
    kw = {"hard": hard, "negative_guidance": negative_guidance, "lamda": lamda}
    trainer = _age_trainer(bundle, states, lr=lr, gumbel_lr=gumbel_lr, train_method=TRAIN_METHOD, **kw)
    naive_names = authors_parameters(bundle.pipe.unet, TRAIN_METHOD)
    assert trainer.names == naive_names
    naive = AuthorsLoop(bundle.pipe.unet, trainer.sampler, naive_names, states["c_e"], states["uc"],
                        states["concepts"], lr=lr, gumbel_lr=gumbel_lr, temp=2.0, topk=2, **kw)
    n = states["concepts"].shape[0]
    masks = {name: torch.ones_like(naive.params[name], dtype=torch.bool) for name in naive_names}
    pi_moved, checked = [], []
    for i in range(2):
        u, t_enc, t, z = replay(trainer, n)
        loss = naive.run(2 * i, u, t_enc, t, z)
        out = trainer.unet_step(i, trainer.draw())
        assert out["k"] == t_enc
        assert out["loss"] == pytest.approx(loss, rel=1e-5)
        grads = {name: naive.params[name].grad for name in naive_names}
        scale = max(float(g.abs().max()) for g in grads.values())
        moments = [naive.opt.state[naive.params[name]]["exp_avg"] for name in naive_names]
        m_scale = max(float(m.abs().max()) for m in moments)
        for idx, name in enumerate(trainer.names):
            torch.testing.assert_close(trainer._optimizer_state(idx)["exp_avg"], moments[idx], rtol=0,
                                       atol=1e-4 * m_scale)
            masks[name] &= grads[name].abs() > 1e-4 * scale
            # Adam's first steps move each weight by about ±lr: a wrong rate, gradient or sign is off by ~lr
            mine, authors = trainer.params[idx].detach()[masks[name]], naive.params[name].detach()[masks[name]]
            torch.testing.assert_close(mine, authors, rtol=0, atol=0.02 * lr)
            checked.append(int(masks[name].sum()))
        u, t_enc, t, z = replay(trainer, n)
        before = trainer.pi.detach().clone()
        naive.run(2 * i + 1, u, t_enc, t, z)
        trainer.search_step(trainer.draw())
        torch.testing.assert_close(trainer.pi.detach(), naive.weight_pi.detach(), rtol=0, atol=0.02 * gumbel_lr)
        ours_m = trainer.pi_optimizer.state[trainer.pi]["exp_avg"]
        theirs_m = naive.opt_weight_pi.state[naive.weight_pi]["exp_avg"]
        torch.testing.assert_close(ours_m, theirs_m, rtol=1e-3, atol=1e-4 * float(theirs_m.abs().max()))
        pi_moved.append(float((trainer.pi.detach() - before).abs().max()))
    assert max(pi_moved) > 0.5 * gumbel_lr  # the weights did move, so the comparison saw their step
    assert sum(checked) > 0.9 * sum(m.numel() for m in masks.values())  # most weights were compared


def test_the_step_uses_the_authors_schedule(tiny_sd_dir: Path) -> None:
    """The same UNet update with x_t sampled over the whole DDIM schedule would give another loss: the comparison
    above tells the authors' t_start = -1 apart."""
    bundle = _bundle(tiny_sd_dir)
    states = _states()
    trainer = _age_trainer(bundle, states, lr=1e-3, gumbel_lr=1e-2, hard=1, negative_guidance=1.0, lamda=1.0)
    naive = AuthorsLoop(bundle.pipe.unet, trainer.sampler, trainer.names, states["c_e"], states["uc"],
                        states["concepts"], lr=1e-3, gumbel_lr=1e-2, temp=2.0, hard=1, topk=2, negative_guidance=1.0,
                        lamda=1.0)
    other = copy.deepcopy(naive)
    u, t_enc, t, z = replay(trainer, states["concepts"].shape[0])
    loss = trainer.unet_step(0, trainer.draw())["loss"]
    assert loss == pytest.approx(naive.run(0, u, t_enc, t, z), rel=1e-5)
    assert abs(other.run(0, u, t_enc, t, z, first_step=0) - loss) > 1e-3 * loss


@pytest.mark.parametrize("checkpointing", [False, True])
def test_search_step_leaves_the_unet_alone(tiny_sd_dir: Path, checkpointing: bool) -> None:
    """The weights' step moves π and no UNet parameter (the Adam hooks on the UNet's parameters must not fire),
    also with gradient checkpointing."""
    bundle = _bundle(tiny_sd_dir)
    if checkpointing:
        bundle.pipe.unet.enable_gradient_checkpointing()
        bundle.pipe.unet.train()
    trainer = _age_trainer(bundle, _states(), lr=1e-3, gumbel_lr=1e-2, hard=1, negative_guidance=1.0, lamda=1.0)
    trainer.unet_step(0, trainer.draw())
    before = [p.detach().clone() for p in trainer.params]
    pi = trainer.pi.detach().clone()
    trainer.search_step(trainer.draw())
    assert all(torch.equal(a, p.detach()) for a, p in zip(before, trainer.params, strict=True))
    assert not torch.equal(pi, trainer.pi.detach())


# ---- the pure pieces ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("hard", "topk"), [(1, 2), (0, 2), (0, 5)])
def test_gumbel_softmax_is_the_authors(hard: int, topk: int) -> None:
    from recare_cli.core.age import gumbel_softmax

    g = torch.Generator().manual_seed(3)
    logits = torch.randn(1, 9, generator=g).requires_grad_(True)
    u = torch.rand(1, 9, generator=g)
    weights = torch.randn(1, 9, generator=g)
    ours = gumbel_softmax(logits, u, 2.0, hard, topk)
    theirs = authors_gumbel_softmax(logits, u, 2.0, hard, topk)
    assert torch.equal(ours, theirs)
    (g_ours,) = torch.autograd.grad((ours * weights).sum(), logits)
    (g_theirs,) = torch.autograd.grad((theirs * weights).sum(), logits)
    assert torch.equal(g_ours, g_theirs) and float(g_ours.abs().max()) > 0
    assert int((ours.detach() > 0).sum()) == (1 if hard else topk)


def test_predicted_x0_loss_is_the_eps_loss_times_the_snr_weight() -> None:
    """x0-space MSE = ε-space MSE · (1 − ᾱ)/ᾱ, computed naively."""
    from recare_cli.core.age import unet_loss

    g = torch.Generator().manual_seed(0)
    x_e, x_c, *eps = (torch.randn(1, 4, 3, 3, generator=g, dtype=torch.float64) for _ in range(7))
    alpha = torch.tensor(0.3, dtype=torch.float64)
    total, erase, preserve = unet_loss(x_e, eps[0], eps[1], eps[2], x_c, eps[3], eps[4], alpha, 2.0, 0.5)
    w = (1 - 0.3) / 0.3
    naive_erase = float(((eps[0] - (eps[2] - 2.0 * (eps[1] - eps[2]))) ** 2).mean()) * w
    naive_preserve = float(((eps[3] - eps[4]) ** 2).mean()) * w
    assert float(erase) == pytest.approx(naive_erase, rel=1e-6)
    assert float(preserve) == pytest.approx(naive_preserve, rel=1e-6)
    assert float(total) == pytest.approx(naive_erase + 0.5 * naive_preserve, rel=1e-6)


def authors_my_kmean(sorted_sim_dict: dict[str, float], num_centers: int) -> list[str]:
    """gen_embedding_matrix.my_kmean (numpy mode), verbatim but for sklearn's n_init stated (its default since 1.4)."""
    from sklearn.cluster import KMeans

    similarities = np.array([sorted_sim_dict[token] for token in sorted_sim_dict]).reshape(-1, 1)
    kmeans = KMeans(n_clusters=num_centers, random_state=0, n_init="auto").fit(similarities)
    cluster_dict = {}
    for i, center in enumerate(kmeans.cluster_centers_):
        closest_token, closest_similarity = None, -float("inf")
        for token in sorted_sim_dict:
            similarity = sorted_sim_dict[token]
            if abs(similarity - center) < abs(closest_similarity - center):
                closest_similarity, closest_token = similarity, token
        cluster_dict[closest_token] = (closest_token, closest_similarity, i)
    return list(cluster_dict)


def test_kmeans_representatives_are_the_authors() -> None:
    from recare_cli.core.age import kmeans_representatives

    sims = sorted((-abs(float(v)) for v in np.random.default_rng(0).normal(size=60)), reverse=True)
    table = {f"w{i}": s for i, s in enumerate(sims)}
    ours = kmeans_representatives(sims, 12)
    assert [f"w{i}" for i in ours] == authors_my_kmean(table, 12)
    assert 1 < len(ours) <= 12
    assert kmeans_representatives(sims, 60) == list(range(60)) == kmeans_representatives(sims, 0)


def test_concept_search_is_the_authors(tiny_sd_dir: Path) -> None:
    """search_closest_tokens (sim 'l2', special tokens ignored): the whole (77, D) states, one word at a time,
    sorted by -distance; recare's nearest() on the dictionary left after is_special gives the same list."""
    import torch.nn.functional as F

    from recare_cli.core.age import concept_similarities, is_special, nearest
    from recare_cli.core.diffusion import encode_prompts

    pipe = _bundle(tiny_sd_dir).pipe
    words = ["person", "naked", "t-shirt", "cat", "o'clock", "dog", "sky", "blue", "e-mail", "house"]

    def enc(p: str) -> torch.Tensor:
        return encode_prompts(pipe.tokenizer, pipe.text_encoder, [p], device=torch.device("cpu"))

    concept = enc("nudity").view(1, -1)
    matrix = torch.cat([enc(w) for w in words]).view(len(words), -1)
    sims, order = torch.sort(-F.pairwise_distance(concept, matrix, p=2), descending=True)
    theirs = [words[i] for i in order.tolist() if not any(c not in "abcdefghijklmnopqrstuvwxyz</>"
                                                        for c in words[i].lower())][:4]
    kept = [w for w in words if not is_special(w)]
    ours_sims = concept_similarities(pipe.tokenizer, pipe.text_encoder, enc("nudity"), kept, device=torch.device("cpu"),
                                     batch_size=3)
    assert [kept[i] for i in nearest(ours_sims, 4)] == theirs
    assert len(kept) == 7
    torch.testing.assert_close(torch.sort(ours_sims, descending=True).values, sims[[words[i] in kept
                                                                                    for i in order.tolist()]])


@pytest.mark.parametrize("train_method", ["noxattn", "xattn", "selfattn", "xattn_matching", "full", "notime"])
def test_age_train_methods_select_the_authors_parameters(tiny_sd_dir: Path, train_method: str) -> None:
    from diffusers import UNet2DConditionModel

    from recare_cli.core.age import age_parameters
    from recare_cli.core.guidance import select_parameters

    unet = UNet2DConditionModel.from_pretrained(tiny_sd_dir / "unet")
    naive = authors_parameters(unet, train_method)
    assert naive and age_parameters(unet, train_method) == naive
    if train_method == "noxattn":  # not recare's noxattn: norms and biases in, time embedding and output out
        assert set(naive) != set(select_parameters(unet, "noxattn"))


def test_dictionary_refusals_and_reading(tmp_path: Path) -> None:
    from recare_cli.errors import BadInputError
    from recare_cli.stages.age import dictionary, read_concepts

    csv_bytes = b"word\nperson\nNudity\nt-shirt\nperson\nsky\n"
    entries = read_concepts(csv_bytes, "english_3000.csv")
    assert entries[0] == ("english_3000.csv:2", "person")
    found = dictionary(entries, "nudity", False, "english_3000.csv")
    assert (found.words, found.target, found.special, found.repeated) == (["person", "sky"], 1, 1, 1)
    assert dictionary(entries, "nudity", True, "x").words == ["person", "t-shirt", "sky"]
    with pytest.raises(BadInputError, match="no concept other than the target"):
        dictionary(read_concepts(b" nudity \n", "w.txt"), "Nudity", False, "w.txt")
    with pytest.raises(BadInputError, match="the concept dictionary is empty"):
        read_concepts(b"# nothing\n\n", "w.txt")
    with pytest.raises(BadInputError, match="no 'word' column"):
        read_concepts(b"name\nperson\n", "x.csv")


# ---- options, CLI, files -----------------------------------------------------------------------------------------


def test_age_defaults_are_the_authors_nudity_script() -> None:
    from recare_cli.stages.erase import EraseOptions

    opts = EraseOptions(target="nudity", output="-", method="age").resolved()
    assert (opts.lr, opts.train_method, opts.iterations) == (1e-5, "noxattn", 1000)
    assert (opts.negative_guidance, opts.lamda, opts.gumbel_lr, opts.gumbel_temp, opts.gumbel_hard, opts.gumbel_topk,
            opts.gumbel_num_centers, opts.gumbel_k_closest, opts.pgd_num_steps, opts.keep_special_tokens) == (
        1.0, 1.0, 1e-2, 2.0, 1, 2, 100, 100, 2, False)
    assert EraseOptions(target="x", output="-").resolved().iterations == 200  # the other methods keep theirs


def test_cli_writes_weights_that_sample_applies(tiny_sd_dir: Path, tmp_path: Path, words: Path) -> None:
    out = tmp_path / "age.safetensors"
    res = invoke(_args(tiny_sd_dir, out, words, "--lr", "1e-2", "--gumbel-num-centers", "3"))
    assert res.code == 0, res.stderr
    tensors, meta = _tensors(out)
    hyper, params = json.loads(meta["hyperparameters"]), json.loads(meta["provenance"])["params"]
    assert meta["method"] == "age" and meta["train_method"] == "noxattn" and meta["erase_set"] == '["nudity"]'
    assert hyper["gumbel_num_centers"] == params["gumbel_num_centers"] == 3
    assert (hyper["iterations"], hyper["lr"], params["concepts"]) == (2, 1e-2, str(words))
    concepts = json.loads(meta["age_concepts"])
    assert len(concepts) == 3 and set(concepts) <= {"person", "naked", "nude", "cat", "dog", "sky"}
    assert meta["age_target"] in concepts and len(json.loads(meta["age_weights"])) == 3
    assert any(".norm" in k for k in tensors) and not any(k.startswith(("time_embedding", "conv_out")) for k in tensors)
    prompts = tmp_path / "p.txt"
    prompts.write_text("nudity\n")
    fast = ["--model", str(tiny_sd_dir), "--steps", "2", "--height", "32", "--width", "32", "--device", "cpu"]
    erased = invoke(["sample", str(prompts), "--out", str(tmp_path / "erased"), *fast, "--weights", str(out)])
    base = invoke(["sample", str(prompts), "--out", str(tmp_path / "base"), *fast])
    assert erased.code == 0 and base.code == 0, erased.stderr + base.stderr
    image = "prompt-000000_0000.png"
    assert (tmp_path / "erased" / image).read_bytes() != (tmp_path / "base" / image).read_bytes()


def test_other_methods_do_not_record_age_options(tiny_sd_dir: Path) -> None:
    from recare_cli.stages.erase import EraseOptions
    from recare_cli.stages.options import recorded

    other = recorded(EraseOptions(target="x", output="-", method="esd").resolved())
    assert "gumbel_lr" not in other and "concepts" not in other and other["iterations"] == 200
    mine = recorded(EraseOptions(target="x", output="-", method="age", concepts="c.txt").resolved())
    assert mine["gumbel_lr"] == 1e-2 and mine["concepts"] == "c.txt" and "lamb" not in mine


def test_resume_gives_the_same_bytes(tiny_sd_dir: Path, tmp_path: Path, words: Path) -> None:
    from recare_cli.stages.erase import EraseOptions

    out = tmp_path / "age.safetensors"

    def opts(resume: bool) -> EraseOptions:
        return EraseOptions(target="nudity", method="age", concepts=str(words), iterations=4, ddim_steps=3,
                            resolution=32, device="cpu", model=str(tiny_sd_dir), output=str(out), checkpoint_every=2,
                            lr=1e-2, resume=resume)

    check_resume_gives_same_bytes(opts, stop_at=2)


@pytest.mark.parametrize(("content", "message"), [
    ("", "the concept dictionary is empty"),
    ("# only a comment\n", "the concept dictionary is empty"),
    ("Nudity\n nudity \n", "no concept other than the target to search in (the target itself: 2)"),
    ("nudity\n3d\n", "(the target itself: 1; characters other than letters: 1, --keep-special-tokens keeps them)"),
])
def test_bad_dictionaries_are_bad_input(tiny_sd_dir: Path, tmp_path: Path, content: str, message: str) -> None:
    bad = tmp_path / "words.txt"
    bad.write_text(content)
    out = tmp_path / "age.safetensors"
    res = invoke(_args(tiny_sd_dir, out, bad))
    assert res.code == 3 and message in res.stderr and res.stderr.count("\n") == 1, res.stderr
    assert str(bad) in res.stderr and not out.exists()


def test_missing_dictionary_is_bad_input(tiny_sd_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "age.safetensors"
    res = invoke(_args(tiny_sd_dir, out, tmp_path / "nope.csv"))
    assert res.code == 3 and "no such file" in res.stderr and res.stderr.count("\n") == 1
    assert not out.exists()


@pytest.mark.parametrize(("extra", "message"), [
    (["--concepts", ""], None),
    (["--train-method", "xattn-kv"], "--train-method: unknown train method for --method age 'xattn-kv'"),
    (["--gumbel-hard", "2"], "--gumbel-hard: 0 (soft top-k) or 1"),
    (["--guidance", "3"], "--guidance: --method age uses --negative-guidance"),
    (["--retain-weight", "0.5"], "--method age weights its preservation loss with --lamda"),
    (["--xt-batch", "2"], "--xt-batch"),
    (["--gumbel-k-closest", "0"], "--gumbel-k-closest: must be at least 1"),
])
def test_bad_age_settings_are_usage_errors(tiny_sd_dir: Path, tmp_path: Path, words: Path, extra: list[str],
                                           message: str | None) -> None:
    out = tmp_path / "age.safetensors"
    args = _args(tiny_sd_dir, out, words, *extra)
    if message is None:  # no --concepts at all
        args = [a for a in args if a not in ("--concepts", str(words), "")]
        message = "--method age needs --concepts FILE"
    res = invoke(args)
    assert res.code == 2 and message in res.stderr and res.stderr.count("\n") == 1, res.stderr
    assert not out.exists()


def test_subprocess_reads_the_dictionary_from_stdin(tiny_sd_dir: Path, tmp_path: Path) -> None:
    """A real process with the dictionary on stdin: the output is written, messages go to stderr, stdout stays
    empty."""
    (tmp_path / "en.txt").write_text("person\ncat\nsky\n")
    done = shell(f"cat en.txt | recare erase --method age --target nudity --concepts - --model {tiny_sd_dir} "
                 "--device cpu --resolution 32 --iterations 1 --ddim-steps 3 -o out.safetensors", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and "age searches 3 of 3 concepts" in done.stderr
    _, meta = _tensors(tmp_path / "out.safetensors")
    assert sorted(json.loads(meta["age_concepts"])) == ["cat", "person", "sky"]
