"""AdvUnlearn (``recare erase --method advunlearn``) against a naive transcription of the authors'
train-scripts/AdvUnlearn.py and what it imports (OPTML-Group/AdvUnlearn: utils/attack_util.py soft_prompt_attack,
utils/get_loss.py get_train_loss_retain, utils/text_encoder.py CustomTextEncoder, utils/util.py param_choices,
ldm's DDIMSampler) on the tiny model; the text-encoder weights format applied by ``recare sample``; bad inputs;
resume."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open

from tests.helpers import check_resume_gives_same_bytes, invoke, recare_exe, shell

pytestmark = pytest.mark.usefixtures("one_torch_thread")

S = 10  # DDIM steps of the tiny runs (the authors': 50); divides 1000, as ldm's uniform schedule needs
RETAIN = ["a photo of chair", "a photo of fridge", "a photo of banana", "a photo of street sign"]


def _bundle(tiny_sd_dir: Path) -> Any:
    from recare_cli.models.sd import load_sd

    return load_sd(str(tiny_sd_dir), device="cpu", dtype="fp32")


def _tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}, dict(fh.metadata())  # noqa: SIM118


# ---- a naive transcription of the authors' code ------------------------------------------------------------------


def ldm_alphas_cumprod(config: Any) -> np.ndarray:
    """ldm's make_beta_schedule('linear'): linspace of square roots, squared, in float64; then cumprod."""
    betas = np.linspace(config["beta_start"] ** 0.5, config["beta_end"] ** 0.5, config["num_train_timesteps"],
                        dtype=np.float64) ** 2
    return np.cumprod(1.0 - betas, axis=0)


def ldm_sample(unet: Any, alphacums: np.ndarray, x_T: torch.Tensor, c: torch.Tensor, uc: torch.Tensor, *,
               scale: float, ddim_steps: int, till_T: int) -> torch.Tensor:
    """ldm DDIMSampler.sample(S, x_T=..., till_T=...) with the authors' defaults (t_start=-1, eta=0):
    make_ddim_timesteps('uniform'), make_ddim_sampling_parameters, ddim_sampling, p_sample_ddim."""
    c_ = 1000 // ddim_steps
    ddim_timesteps = np.asarray(list(range(0, 1000, c_))) + 1
    alphas = alphacums[ddim_timesteps]
    alphas_prev = np.asarray([alphacums[0], *alphacums[ddim_timesteps[:-1]].tolist()])
    timesteps = ddim_timesteps[:-1]  # timesteps[:t_start], t_start = -1
    time_range = np.flip(timesteps)
    total_steps = timesteps.shape[0]
    till = till_T if till_T is not None else 0
    img, b = x_T, x_T.shape[0]
    with torch.no_grad():
        for i, step in enumerate(time_range):
            index = total_steps - i - 1
            ts = torch.full((b,), int(step), dtype=torch.long)
            x_in, t_in, c_in = torch.cat([img] * 2), torch.cat([ts] * 2), torch.cat([uc, c])
            e_t_uncond, e_t = unet(x_in, t_in, encoder_hidden_states=c_in).sample.chunk(2)
            e_t = e_t_uncond + scale * (e_t - e_t_uncond)
            a_t, a_prev = float(alphas[index]), float(alphas_prev[index])
            pred_x0 = (img - math.sqrt(1 - a_t) * e_t) / math.sqrt(a_t)
            dir_xt = math.sqrt(1.0 - a_prev) * e_t
            img = math.sqrt(a_prev) * pred_x0 + dir_xt
            if index + 1 == till:
                break
    return img


def custom_text_encoder(te: Any, input_ids: torch.Tensor, inputs_embeds: torch.Tensor) -> torch.Tensor:
    """CustomTextEncoder.forward: position embeddings added to the given word embeddings, _make_causal_mask, the
    encoder, the final layer norm."""
    model = getattr(te, "text_model", te)
    hidden = model.embeddings(inputs_embeds=inputs_embeds)
    bsz, tgt_len = input_ids.shape
    mask = torch.full((tgt_len, tgt_len), torch.finfo(hidden.dtype).min, dtype=hidden.dtype)
    cond = torch.arange(tgt_len)
    mask.masked_fill_(cond < (cond + 1).view(tgt_len, 1), 0)
    mask = mask[None, None].expand(bsz, 1, tgt_len, tgt_len)
    out = model.encoder(inputs_embeds=hidden, attention_mask=mask)
    return model.final_layer_norm(out[0])  # type: ignore[no-any-return]


def id2embedding(all_embeddings: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    one_hot = torch.nn.functional.one_hot(input_ids.view(-1), num_classes=all_embeddings.shape[1])
    return one_hot.to(all_embeddings.dtype).unsqueeze(0) @ all_embeddings


def param_choices(te: Any, train_method: str) -> list[str]:
    """utils/util.py param_choices with component 'all', final_layer_norm False (their defaults)."""
    layers = None if train_method == "text_encoder_full" else train_method.removeprefix("text_encoder_layer")
    out = []
    model = getattr(te, "text_model", te)
    prefix = "text_model." if model is not te else ""
    for name, _ in model.named_parameters():
        if layers is None:
            if name.startswith("final_layer_norm") or name.startswith("encoder"):
                out.append(prefix + name)
        elif layers == "0_11":
            if name.startswith("encoder.layers.0") or name.startswith("encoder.layers.11"):
                out.append(prefix + name)
        elif any(name.startswith(f"encoder.layers.{d}") for d in layers):
            out.append(prefix + name)
    return out


def construct_embd(k: int, adv: torch.Tensor, where: str, sot: torch.Tensor, mid: torch.Tensor,
                   eot: torch.Tensor) -> torch.Tensor:
    if where == "prefix_k":
        return torch.cat([sot, adv, mid, eot], dim=1)
    if where == "replace_k":
        return torch.cat([sot, adv, eot[:, 0, :].repeat(1, mid.shape[1], 1), eot], dim=1)
    if where == "add":
        return torch.cat([sot, adv + mid, eot[:, 0, :].repeat(1, k, 1), eot], dim=1)
    assert where == "suffix_k"
    return torch.cat([sot, mid, adv, eot], dim=1)


class Authors:
    """AdvUnlearn() of AdvUnlearn.py, iteration by iteration, with retain_train 'reg', drawing from ``g``."""

    def __init__(self, unet: Any, te: Any, tokenizer: Any, alphacums: np.ndarray, word: str, *, lr: float,
                 latent: int, settings: dict[str, Any]) -> None:
        from recare_cli.core.diffusion import encode_prompts, tokenize

        self.unet, self.te, self.tok, self.alphacums, self.word, self.s = unet, te, tokenizer, alphacums, word, settings
        self.orig = copy.deepcopy(te)  # model_orig.get_learned_conditioning: the frozen original encoder
        self.latent = latent
        self.dtype = te.dtype  # the latents are drawn in float32 and cast to the models' dtype
        self.names = param_choices(te, settings["train_method"])
        params = dict(te.named_parameters())
        te.requires_grad_(False)
        self.opt = torch.optim.Adam([params[n] for n in self.names], lr=lr)
        self.all_embeddings = te.get_input_embeddings().weight.detach().unsqueeze(0)
        self.emb_0 = encode_prompts(tokenizer, self.orig, [""], device=torch.device("cpu"))
        self.emb_p = encode_prompts(tokenizer, self.orig, [word], device=torch.device("cpu"))
        self.input_ids = tokenize(tokenizer, [word])
        self.adv_word_embd: torch.Tensor | None = None
        self.adv_input_ids: torch.Tensor | None = None
        self.attack_round = 0

    def _quick_sample(self, c: torch.Tensor, code: torch.Tensor, t: int) -> torch.Tensor:
        uc = self.emb_0.repeat(code.shape[0], 1, 1)
        return ldm_sample(self.unet, self.alphacums, code, c, uc, scale=3.0, ddim_steps=S, till_T=t)

    def _draw(self, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        t_enc = torch.randint(S, (1,), generator=g)
        og_num = round((int(t_enc) / S) * 1000)
        og_num_lim = round((int(t_enc + 1) / S) * 1000)
        return t_enc, torch.randint(og_num, og_num_lim, (1,), generator=g)

    def attack(self, g: torch.Generator, *, zero_grad: bool = False) -> tuple[list[float], torch.Tensor]:
        """soft_prompt_attack (word_embd); ``zero_grad`` clears the gradient between steps (not the authors')."""
        s = self.s
        orig_prompt_len = len(self.word.split())
        k = orig_prompt_len if s["attack_type"] == "add" else s["adv_prompt_num"]
        dim = self.all_embeddings.shape[-1]
        adv_embedding = torch.randn([1, k, dim], generator=g)  # init_adv: nn.Parameter(torch.randn(...)), replaced
        if s["attack_init"] == "latest" and self.attack_round > 0:
            assert self.adv_word_embd is not None
            adv_embedding = self.adv_word_embd[:, 1:1 + k].detach().clone()
        else:
            tmp_ids = torch.randint(0, self.all_embeddings.shape[1], (1, k), generator=g)
            adv_embedding = id2embedding(self.all_embeddings, tmp_ids).reshape(1, k, dim).detach()
        adv_embedding = adv_embedding.detach().requires_grad_(True)
        attack_opt = torch.optim.Adam([adv_embedding], lr=s["attack_lr"])
        sot_id, mid_id, replace_id, eot_id = torch.split(self.input_ids, [1, orig_prompt_len, k,
                                                                          76 - orig_prompt_len - k], dim=1)
        text_embeddings = id2embedding(self.all_embeddings, self.input_ids)
        sot, mid, _, eot = torch.split(text_embeddings, [1, orig_prompt_len, k, 76 - orig_prompt_len - k], dim=1)
        losses = []
        for _ in range(s["attack_step"]):
            t_enc, t_enc_ddpm = self._draw(g)
            start_code = torch.randn((1, 4, self.latent, self.latent), generator=g).to(self.dtype)
            with torch.no_grad():
                z = self._quick_sample(self.emb_p, start_code, int(t_enc))
                _ = self.unet(z, t_enc_ddpm, encoder_hidden_states=self.emb_0).sample  # e_0 (unused)
                e_p = self.unet(z, t_enc_ddpm, encoder_hidden_states=self.emb_p).sample
            word_embedding = construct_embd(k, adv_embedding, s["attack_type"], sot, mid, eot)
            ids = torch.cat([sot_id, replace_id, mid_id, eot_id], dim=1)  # the ids only size the causal mask
            condition = custom_text_encoder(self.te, ids, word_embedding)
            e_n = self.unet(z, t_enc_ddpm, encoder_hidden_states=condition).sample
            loss = torch.nn.MSELoss()(e_n, e_p)
            loss.backward()
            if s["attack_method"] == "fast_at":
                assert adv_embedding.grad is not None
                adv_embedding.grad.sign_()
            attack_opt.step()
            if zero_grad:
                attack_opt.zero_grad()
            losses.append(float(loss.detach()))
        # (the authors keep the tensor with its graph back to the vectors; the text encoder's update is the same)
        self.adv_word_embd, self.adv_input_ids = word_embedding.detach(), ids
        return losses, adv_embedding.detach()

    def iteration(self, i: int, g: torch.Generator, retain_words: list[str]) -> dict[str, Any]:
        s, out = self.s, {}
        if i % s["adv_prompt_update_step"] == 0 and i >= s["warmup_iter"]:
            self.te.requires_grad_(False)
            out["attack"], out["adv_after"] = self.attack(g)
            self.attack_round += 1
        for n, p in self.te.named_parameters():
            p.requires_grad_(n in self.names)
        self.opt.zero_grad()
        from recare_cli.core.diffusion import encode_prompts, tokenize

        retain_ids = tokenize(self.tok, retain_words)
        retain_emb_p = encode_prompts(self.tok, self.orig, retain_words, device=torch.device("cpu"))
        retain_text = id2embedding(self.all_embeddings, retain_ids).reshape(len(retain_words), -1,
                                                                            self.all_embeddings.shape[-1])
        retain_emb_n = custom_text_encoder(self.te, retain_ids, retain_text)
        # get_train_loss_retain
        t_enc, t_enc_ddpm = self._draw(g)
        start_code = torch.randn((1, 4, self.latent, self.latent), generator=g).to(self.dtype)
        retain_start_code = torch.randn((len(retain_words), 4, self.latent, self.latent), generator=g).to(self.dtype)
        with torch.no_grad():
            z = self._quick_sample(self.emb_p, start_code, int(t_enc))
            e_0 = self.unet(z, t_enc_ddpm, encoder_hidden_states=self.emb_0).sample
            e_p = self.unet(z, t_enc_ddpm, encoder_hidden_states=self.emb_p).sample
            retain_z = self._quick_sample(retain_emb_p, retain_start_code, int(t_enc))
            retain_e_p = self.unet(retain_z, t_enc_ddpm, encoder_hidden_states=retain_emb_p).sample
        if i < s["warmup_iter"]:
            emb_n = custom_text_encoder(self.te, self.input_ids, id2embedding(self.all_embeddings, self.input_ids))
        else:
            assert self.adv_word_embd is not None and self.adv_input_ids is not None
            emb_n = custom_text_encoder(self.te, self.adv_input_ids, self.adv_word_embd)
        e_n = self.unet(z, t_enc_ddpm, encoder_hidden_states=emb_n).sample
        unlearn = torch.nn.MSELoss()(e_n, e_0 - s["negative_guidance"] * (e_p - e_0))
        retain_e_n = self.unet(retain_z, t_enc_ddpm, encoder_hidden_states=retain_emb_n).sample
        retain = torch.nn.MSELoss()(retain_e_n, retain_e_p)
        loss = unlearn + s["retain_loss_w"] * retain
        loss.backward()
        self.opt.step()
        out.update(loss=float(loss.detach()), unlearn=float(unlearn.detach()), retain=float(retain.detach()),
                   k=int(t_enc))
        return out


def _engine(bundle: Any, settings: dict[str, Any], *, lr: float, iterations: int, word: str) -> Any:
    from recare_cli.core.advunlearn import (
        AdvUnlearnPrompts,
        AdvUnlearnSettings,
        AdvUnlearnTrainer,
        adversarial_count,
        retain_schedule,
        trained_parameters,
    )
    from recare_cli.core.diffusion import encode_prompts, tokenize

    pipe, dev = bundle.pipe, torch.device("cpu")
    n_words = len(word.split())
    prompts = AdvUnlearnPrompts(
        uncond=encode_prompts(pipe.tokenizer, pipe.text_encoder, [""], device=dev),
        target=encode_prompts(pipe.tokenizer, pipe.text_encoder, [word], device=dev),
        target_ids=tokenize(pipe.tokenizer, [word]), retain=encode_prompts(pipe.tokenizer, pipe.text_encoder, RETAIN,
                                                                            device=dev),
        retain_ids=tokenize(pipe.tokenizer, RETAIN),
        k=adversarial_count(settings["attack_type"], settings["adv_prompt_num"], n_words), n_words=n_words)
    names = trained_parameters(pipe.text_encoder, settings["train_method"])
    keys = ("warmup_iter", "attack_step", "attack_lr", "attack_init", "attack_type", "attack_method",
            "adv_prompt_update_step", "negative_guidance", "retain_loss_w")
    run = AdvUnlearnSettings(iterations=iterations, lr=lr, ddim_steps=S, latent_size=16, precision="fp32",
                             **{k: settings[k] for k in keys})
    schedule = retain_schedule(len(RETAIN), 2, iterations, np.random.default_rng(0))
    return AdvUnlearnTrainer(pipe.unet, pipe.text_encoder, names, prompts, schedule, run, pipe.scheduler.config,
                             torch.Generator().manual_seed(3))


CONFIGS = {
    # the defaults' kind (pgd, random init, prefix_k) after one warm-up iteration
    "warmup-pgd-random-prefix": dict(warmup_iter=1, attack_step=3, attack_init="random", attack_type="prefix_k",
                                     attack_method="pgd", adv_prompt_num=1),
    # fast_at, the second attack starting from the first's vectors, two vectors replacing the prompt
    "fastat-latest-replace": dict(warmup_iter=0, attack_step=3, attack_init="latest", attack_type="replace_k",
                                  attack_method="fast_at", adv_prompt_num=2),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_steps_equal_the_authors_loop(tiny_sd_dir: Path, name: str) -> None:
    """Two outer iterations: the engine's draws replayed into the transcription give the same attack losses at
    every attack step, the same adversarial prompt, the same training losses and the same Adam-updated weights.
    Both run in float64, so any difference beyond rounding is a difference of computation: float32 would round
    the small gaps the losses measure (ε for two prompts of the random tiny CLIP) to 1e-5 relative."""
    bundle = _bundle(tiny_sd_dir)
    bundle.pipe.unet.double()
    bundle.pipe.text_encoder.double()
    lr = 1e-3  # large enough that the text encoder moves visibly in two steps
    settings = {**CONFIGS[name], "attack_lr": 1e-2, "negative_guidance": 1.0, "retain_loss_w": 0.3,
                "adv_prompt_update_step": 1, "train_method": "text_encoder_full"}
    word = "a naked person"  # three words, three tokens: the authors' word split is the token split here
    naive_te = copy.deepcopy(bundle.pipe.text_encoder)
    alphacums = ldm_alphas_cumprod(bundle.pipe.scheduler.config)
    authors = Authors(bundle.pipe.unet, naive_te, bundle.pipe.tokenizer, alphacums, word, lr=lr, latent=16,
                      settings=settings)
    trainer = _engine(bundle, settings, lr=lr, iterations=2, word=word)
    assert trainer.names == authors.names
    # their CustomTextEncoder on the prompt's word embeddings is the text encoder on its ids (their own check)
    torch.testing.assert_close(custom_text_encoder(naive_te, authors.input_ids,
                                                   id2embedding(authors.all_embeddings, authors.input_ids)),
                               authors.emb_p, rtol=1e-5, atol=1e-6)
    attacked = False
    for i in range(2):
        replay = torch.Generator().set_state(trainer.generator.get_state())
        before = torch.Generator().set_state(trainer.generator.get_state())
        snapshot = copy.deepcopy(authors) if i >= settings["warmup_iter"] else None  # the state before an attack
        naive = authors.iteration(i, replay, [RETAIN[j] for j in trainer.schedule[i]])
        out = trainer.step(i)
        assert out["k"] == naive["k"]
        assert out["unlearn"] == pytest.approx(naive["unlearn"], rel=1e-9)
        assert out["retain"] == pytest.approx(naive["retain"], rel=1e-9)
        assert out["loss"] == pytest.approx(naive["loss"], rel=1e-9)
        for n, p in zip(trainer.names, trainer.params, strict=True):  # Adam moves each weight by about ±lr
            torch.testing.assert_close(p.detach(), dict(naive_te.named_parameters())[n].detach(), rtol=0,
                                       atol=1e-6 * lr)
        if "attack" in naive:
            attacked = True
            assert trainer.attack_losses == pytest.approx(naive["attack"], rel=1e-9)
            assert len(set(naive["attack"])) == len(naive["attack"])  # the steps differ: each one is compared
            assert trainer.adv_seq is not None and authors.adv_word_embd is not None
            torch.testing.assert_close(trainer.adv_seq, authors.adv_word_embd[0], rtol=0, atol=1e-9)
            # what the comparison tells apart: the final update (the authors keep the prompt from before it) and
            # gradients cleared between attack steps (theirs add up) both move the vectors by ~attack_lr
            assert (naive["adv_after"] - authors.adv_word_embd[0, 1:1 + naive["adv_after"].shape[1]]).abs().max() \
                > 1e-3
            assert snapshot is not None
            snapshot.attack(before, zero_grad=True)
            assert (snapshot.adv_word_embd - authors.adv_word_embd).abs().max() > 1e-3
    assert attacked


@pytest.mark.parametrize("attack_type", ["prefix_k", "suffix_k", "replace_k", "add"])
@pytest.mark.parametrize("word", ["a naked person", "nudity"])
def test_adversarial_prompt_is_the_authors_construction(tiny_sd_dir: Path, attack_type: str, word: str) -> None:
    """split_embd by the prompt's *word* count, then construct_embd. "nudity" is one word and two tokens
    (nu, dity): as in the authors' code, the token after the first word is dropped for the k vectors."""
    from transformers import CLIPTokenizer

    from recare_cli.core.advunlearn import adversarial_count, adversarial_sequence
    from recare_cli.core.diffusion import tokenize

    tok = CLIPTokenizer.from_pretrained(tiny_sd_dir / "tokenizer")
    ids = tokenize(tok, [word])
    table = torch.randn(49408, 8, generator=torch.Generator().manual_seed(0))
    words = table[ids[0]]
    n = len(word.split())
    k = adversarial_count(attack_type, 2, n)
    adv = torch.randn(k, 8, generator=torch.Generator().manual_seed(1))
    sot, mid, _, eot = torch.split(words[None], [1, n, k, 76 - n - k], dim=1)
    expected = construct_embd(k, adv[None], attack_type, sot, mid, eot)[0]
    got = adversarial_sequence(words, adv, n, attack_type)
    assert got.shape == (77, 8)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    if word == "nudity" and attack_type == "prefix_k":  # [start, adv, adv, nu, end, …]: dity is gone
        assert torch.equal(got[3], table[ids[0, 1]])
        assert not any(torch.equal(got[j], table[ids[0, 2]]) for j in range(77))


def test_train_methods_select_the_authors_parameters() -> None:
    """param_choices on a 12-layer text encoder; their prefix test makes text_encoder_layer01 train layers 0, 1,
    10 and 11."""
    from transformers import CLIPTextConfig, CLIPTextModel

    from recare_cli.core.advunlearn import TRAIN_METHODS, trained_parameters

    te = CLIPTextModel(CLIPTextConfig(vocab_size=100, hidden_size=8, intermediate_size=16, num_hidden_layers=12,
                                      num_attention_heads=2, max_position_embeddings=77))
    for method in TRAIN_METHODS:
        assert trained_parameters(te, method) == param_choices(te, method), method
    layers = {n.split(".")[2] for n in trained_parameters(te, "text_encoder_layer01")}
    assert layers == {"0", "1", "10", "11"}
    full = trained_parameters(te, "text_encoder_full")
    assert any(n.startswith("final_layer_norm") for n in full) and not any("embeddings" in n for n in full)


def test_retain_schedule_draws_without_replacement_until_a_batch_is_left() -> None:
    from recare_cli.core.advunlearn import retain_schedule

    schedule = retain_schedule(7, 3, 6, np.random.default_rng(0))
    for epoch in (schedule[0:2], schedule[2:4], schedule[4:6]):  # 7 prompts: two batches of 3, then all again
        flat = [j for batch in epoch for j in batch]
        assert len(flat) == len(set(flat)) == 6
    assert schedule != retain_schedule(7, 3, 6, np.random.default_rng(1))
    with pytest.raises(ValueError):
        retain_schedule(2, 3, 1, np.random.default_rng(0))


def test_sample_till_is_ldm_ddim(tiny_sd_dir: Path) -> None:
    """The x_t sampler against the ldm transcription for every depth, including 0 and 1 (both run to the end)."""
    from recare_cli.core.advunlearn import ldm_ddim, sample_till

    bundle = _bundle(tiny_sd_dir)
    unet, config = bundle.pipe.unet, bundle.pipe.scheduler.config
    scheduler = ldm_ddim(config)
    scheduler.set_timesteps(S)
    g = torch.Generator().manual_seed(0)
    c, uc, x = torch.randn(2, 77, 32, generator=g), torch.randn(1, 77, 32, generator=g), torch.randn(2, 4, 16, 16,
                                                                                                    generator=g)
    outs = []
    for till in range(S):
        ours = sample_till(unet, scheduler, x, c, uc, till=till, guidance=3.0)
        theirs = ldm_sample(unet, ldm_alphas_cumprod(config), x, c, uc.expand(2, -1, -1), scale=3.0, ddim_steps=S,
                            till_T=till)
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
        outs.append(ours)
    torch.testing.assert_close(outs[0], outs[1])  # till 0 and 1 both run all S - 1 steps
    assert not torch.allclose(outs[1], outs[2])


# ---- options -----------------------------------------------------------------------------------------------------


def test_advunlearn_defaults_are_the_authors() -> None:
    from recare_cli.stages.erase import EraseOptions

    opts = EraseOptions(target="nudity", output="-", method="advunlearn").resolved()
    assert (opts.lr, opts.train_method, opts.iterations) == (1e-5, "text_encoder_full", 1000)
    assert (opts.retain_batch, opts.retain_loss_w, opts.negative_guidance, opts.warmup_iter) == (5, 0.3, 1.0, 200)
    assert (opts.attack_step, opts.attack_lr, opts.attack_init, opts.attack_type, opts.attack_method) == (
        30, 1e-3, "random", "prefix_k", "pgd")
    assert (opts.adv_prompt_num, opts.adv_prompt_update_step, opts.ddim_steps) == (1, 1, 50)
    for method in ("recare", "esd", "uce"):  # the other methods keep their 200
        assert EraseOptions(target="x", output="-", method=method).resolved().iterations == 200


def _retain_file(tmp_path: Path) -> Path:
    path = tmp_path / "retain.csv"
    path.write_text("case_num,source,prompt\n" + "".join(f"{i},coco_object,{p}\n" for i, p in enumerate(RETAIN)))
    return path


def _run(tiny_sd_dir: Path, out: Path, retain: Path, *extra: str) -> Any:
    return invoke(["erase", "--method", "advunlearn", "--target", "a naked person", "--retain-prompts", str(retain),
                   "--model", str(tiny_sd_dir), "--device", "cpu", "--resolution", "32", "--ddim-steps", "4",
                   "--iterations", "2", "--warmup-iter", "1", "--attack-step", "1", "--retain-batch", "2",
                   "-o", str(out), *extra])


@pytest.mark.parametrize(("extra", "message"), [
    ([], "--method advunlearn needs --retain-prompts FILE"),
    (["--retain-prompts", "r.csv", "--train-method", "noxattn"], "--train-method: unknown advunlearn train method"),
    (["--retain-prompts", "r.csv", "--attack-type", "mid_k"], "--attack-type: unknown attack type 'mid_k'"),
    (["--retain-prompts", "r.csv", "--precision", "fp16"], "--precision fp16"),
])
def test_usage_errors_write_nothing(tiny_sd_dir: Path, tmp_path: Path, extra: list[str], message: str) -> None:
    out = tmp_path / "te.safetensors"
    res = invoke(["erase", "--method", "advunlearn", "--target", "nudity", "--model", str(tiny_sd_dir),
                  "--device", "cpu", "-o", str(out), *extra])
    assert res.code == 2 and message in res.stderr and res.stderr.count("\n") == 1, res.stderr
    assert not out.exists() and not list(tmp_path.iterdir())


def test_too_few_retain_prompts_is_bad_input(tiny_sd_dir: Path, tmp_path: Path) -> None:
    """(and recare's UNet-training options are ignored with a warning that names AdvUnlearn's own)"""
    retain = tmp_path / "one.txt"
    retain.write_text("a photo of chair\n")
    res = _run(tiny_sd_dir, tmp_path / "te.safetensors", retain, "--retain-weight", "2")
    assert res.code == 3 and "1 retain prompts, fewer than --retain-batch 2" in res.stderr.splitlines()[-1]
    assert "does not use --retain-weight; ignoring it (its own is --retain-loss-w)" in res.stderr
    assert not (tmp_path / "te.safetensors").exists()


# ---- output, sample, resume -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def te_file(tiny_sd_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("advunlearn")
    out = folder / "te.safetensors"
    res = _run(tiny_sd_dir, out, _retain_file(folder), "--lr", "1e-2")
    assert res.code == 0, res.stderr
    return out


def test_output_is_text_encoder_weights_with_metadata(tiny_sd_dir: Path, te_file: Path) -> None:
    from recare_cli.models.weights import text_encoder_state

    tensors, meta = _tensors(te_file)
    bundle = _bundle(tiny_sd_dir)
    assert meta["format"] == "recare.text-encoder-weights" and meta["method"] == "advunlearn"
    assert meta["base_text_encoder"] == bundle.text_encoder_fingerprint and meta["base_unet"] == bundle.unet_fingerprint
    assert meta["train_method"] == "text_encoder_full" and meta["target"] == "a naked person"
    hyper = json.loads(meta["hyperparameters"])
    assert (hyper["iterations"], hyper["lr"], hyper["warmup_iter"], hyper["resolution"]) == (2, 1e-2, 1, 32)
    assert json.loads(meta["retain_prompts"])["count"] == len(RETAIN)
    params = json.loads(meta["provenance"])["params"]
    assert params["retain_loss_w"] == 0.3 and params["attack_type"] == "prefix_k" and "lamb" not in params
    assert all(k.startswith("text_model.encoder.") or k.startswith("text_model.final_layer_norm.") for k in tensors)
    state = text_encoder_state(bundle.pipe.text_encoder, tensors, str(te_file))
    base = bundle.pipe.text_encoder.state_dict()
    assert len(state) == len(tensors) and any(not torch.equal(v, base[k]) for k, v in state.items())


def test_sample_applies_text_encoder_weights_with_unet_weights(tiny_sd_dir: Path, te_file: Path,
                                                               tmp_path: Path) -> None:
    unet_file = tmp_path / "uce.safetensors"
    res = invoke(["erase", "--method", "uce", "--target", "a naked person", "--model", str(tiny_sd_dir), "--device",
                  "cpu", "-o", str(unet_file)])
    assert res.code == 0, res.stderr
    prompts = tmp_path / "p.txt"
    prompts.write_text("a naked person\n")
    fast = ["--model", str(tiny_sd_dir), "--steps", "2", "--height", "32", "--width", "32", "--device", "cpu"]
    runs = {"base": [], "te": ["--weights", str(te_file)], "unet": ["--weights", str(unet_file)],
            "both": ["--weights", str(unet_file), "--weights", str(te_file)]}
    images = {}
    for name, extra in runs.items():
        res = invoke(["sample", str(prompts), "--out", str(tmp_path / name), *fast, *extra])
        assert res.code == 0, res.stderr
        images[name] = (tmp_path / name / "prompt-000000_0000.png").read_bytes()
        if name == "both":
            record = json.loads(res.text.splitlines()[0])
            kinds = [sorted(k for k in w if k.startswith("base_")) for w in record["weights"]]
            assert kinds == [["base_unet"], ["base_text_encoder"]]
    assert len(set(images.values())) == 4  # each file changes the images, and both together differ from either


def test_text_encoder_weights_for_another_model_are_refused(tiny_sd_dir: Path, te_file: Path,
                                                            tmp_path: Path) -> None:
    from recare_cli.models.weights import write_safetensors

    tensors, meta = _tensors(te_file)
    other = tmp_path / "other.safetensors"
    write_safetensors(other, tensors, {**meta, "base_text_encoder": "sha256:0123456789abcdef"})
    prompts = tmp_path / "p.txt"
    prompts.write_text("a naked person\n")
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "note.txt").write_text("mine")
    fast = ["--model", str(tiny_sd_dir), "--steps", "2", "--height", "32", "--width", "32", "--device", "cpu"]
    for out in (tmp_path / "new", kept):
        res = invoke(["sample", str(prompts), "--out", str(out), *fast, "--weights", str(other)])
        assert res.code == 3 and res.stderr.count("\n") == 1, res.stderr
        assert "made for base text encoder sha256:0123456789abcdef" in res.stderr
    assert not (tmp_path / "new").exists() and [p.name for p in kept.iterdir()] == ["note.txt"]
    res = invoke(["sample", str(prompts), "--out", str(tmp_path / "e"), *fast, "--embeddings", str(te_file)])
    assert res.code == 3 and "recare.text-encoder-weights" in res.stderr and "--weights" in res.stderr


def test_resume_gives_the_same_bytes(tiny_sd_dir: Path, tmp_path: Path) -> None:
    from recare_cli.stages.erase import EraseOptions

    out = tmp_path / "te.safetensors"
    retain = _retain_file(tmp_path)

    def opts(resume: bool) -> EraseOptions:
        return EraseOptions(target="a naked person", method="advunlearn", retain_prompts=str(retain), iterations=4,
                            warmup_iter=1, attack_step=1, attack_init="latest", retain_batch=2, ddim_steps=4,
                            resolution=32, device="cpu", model=str(tiny_sd_dir), output=str(out), checkpoint_every=2,
                            resume=resume, lr=1e-3)

    def the_attack_is_kept(ckpt: Path) -> None:
        assert "adversarial" in _tensors(ckpt)[0]  # the latest attack's prompt: the next attack starts from it

    check_resume_gives_same_bytes(opts, stop_at=2, between=the_attack_is_kept)


def test_cli_subprocess_writes_weights_sample_applies(tiny_sd_dir: Path, tmp_path: Path) -> None:
    _retain_file(tmp_path)
    (tmp_path / "p.txt").write_text("a naked person\n")
    exe = recare_exe()
    res = shell(f"{exe} erase --method advunlearn --target 'a naked person' --retain-prompts retain.csv "
                f"--model {tiny_sd_dir} --device cpu --resolution 32 --ddim-steps 3 --iterations 1 --warmup-iter 0 "
                f"--attack-step 1 --retain-batch 2 -o te.safetensors -q && "
                f"{exe} sample p.txt --model {tiny_sd_dir} --steps 2 --height 32 --width 32 --device cpu "
                f"--weights te.safetensors --out imgs -q | wc -l", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "1" and res.stderr == ""
    assert _tensors(tmp_path / "te.safetensors")[1]["format"] == "recare.text-encoder-weights"


def test_attack_learns_its_token_against_the_text_encoder_weights(tiny_sd_dir: Path, te_file: Path,
                                                                  target_images: Path, tmp_path: Path) -> None:
    """recare attack (CCE) takes the text-encoder weights through the same --weights and learns its token with
    the trained text encoder: another token than against the base model from the same draws."""
    tokens = {}
    for name, extra in (("base", []), ("erased", ["--weights", str(te_file)])):
        out = tmp_path / f"{name}.safetensors"
        res = invoke(["attack", str(target_images), "--target", "nudity", "--model", str(tiny_sd_dir), "--device",
                      "cpu", "--steps", "2", "--batch-size", "1", "--accumulation", "1", "--num-images", "2",
                      "-o", str(out), *extra])
        assert res.code == 0, res.stderr
        tensors, meta = _tensors(out)
        tokens[name] = tensors["<nudity-cce>"]
    assert [w["path"] for w in json.loads(meta["attacked_weights"])] == [str(te_file)]
    assert not torch.equal(tokens["base"], tokens["erased"])
