"""SD 2.x and v-prediction: architecture detection, the prediction-type conversions, one erase iteration of
every trainer method and the first textual-inversion step against naive ε-space / reference re-implementations
on a tiny v-prediction model, every stage end to end on it, and unsupported architectures refused."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from recare_cli.errors import EXIT_MODEL_UNAVAILABLE, ModelUnavailableError
from tests.helpers import invoke, provenance_model, spy_on_learn

pytestmark = pytest.mark.usefixtures("one_torch_thread")
STEPS = 6  # sampler steps of the erase iterations


def _bundle(folder: Path) -> Any:
    from recare_cli.models.sd import load_sd

    return load_sd(str(folder), device="cpu", dtype="fp32")


# ---- architecture detection ----------------------------------------------------------------------------------


def test_tiny_models_are_detected_and_sd1_identity_keeps_its_keys(tiny_sd_dir: Path, tiny_sd2_dir: Path) -> None:
    sd1, sd2 = _bundle(tiny_sd_dir), _bundle(tiny_sd2_dir)
    assert (sd1.architecture.family, sd1.architecture.prediction_type) == ("sd1", "epsilon")
    assert list(sd1.identity()) == ["name", "unet", "text_encoder", "dtype"]  # SD 1.x provenance bytes unchanged
    assert (sd2.architecture.family, sd2.architecture.prediction_type) == ("sd2", "v_prediction")
    assert sd2.identity()["architecture"] == "sd2" and sd2.identity()["prediction_type"] == "v_prediction"
    unet = sd2.pipe.unet.config
    assert unet.use_linear_projection and list(unet.attention_head_dim) == [2, 4]
    text = sd2.pipe.text_encoder.config
    assert (text.hidden_act, text.bos_token_id, text.eos_token_id, text.pad_token_id) == ("gelu", 0, 2, 1)
    assert sd2.pipe.tokenizer.pad_token == "!"


@pytest.mark.parametrize(("unet", "scheduler", "expected"), [
    ({"cross_attention_dim": 768}, {}, ("sd1", "epsilon")),
    ({"cross_attention_dim": 1024}, {"prediction_type": "v_prediction"}, ("sd2", "v_prediction")),
    ({"cross_attention_dim": 1024}, {"prediction_type": "epsilon"}, ("sd2", "epsilon")),  # SD 2.x-base
    ({"cross_attention_dim": 32, "use_linear_projection": True}, {}, ("sd2", "epsilon")),
    ({"cross_attention_dim": 64, "use_linear_projection": False}, {"prediction_type": None}, ("sd1", "epsilon")),
])
def test_detect_reads_width_layout_and_prediction(unet: dict[str, Any], scheduler: dict[str, Any],
                                                  expected: tuple[str, str]) -> None:
    from recare_cli.models.arch import detect

    found = detect({"in_channels": 4, "out_channels": 4, **unet}, scheduler, "m")
    assert (found.family, found.prediction_type) == expected


@pytest.mark.parametrize(("unet", "scheduler", "named"), [
    ({"cross_attention_dim": 2048, "addition_embed_type": "text_time"}, {}, "addition_embed_type 'text_time'"),
    ({"cross_attention_dim": 1024, "in_channels": 9}, {}, "in_channels 9"),
    ({"cross_attention_dim": [768, 1024]}, {}, "cross_attention_dim [768, 1024]"),
    ({"cross_attention_dim": 1024, "class_embed_type": "timestep"}, {}, "class_embed_type 'timestep'"),
    ({"cross_attention_dim": 768}, {"prediction_type": "sample"}, "prediction_type is 'sample'"),
])
def test_detect_refuses_other_unets_and_predictions(unet: dict[str, Any], scheduler: dict[str, Any],
                                                    named: str) -> None:
    from recare_cli.models.arch import detect

    with pytest.raises(ModelUnavailableError) as err:
        detect({"in_channels": 4, "out_channels": 4, **unet}, scheduler, "m")
    assert named in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(("pipeline", "family"), [("StableDiffusionXLInpaintPipeline", "an SDXL inpainting model"),
                                                  ("FluxPipeline", "Flux"),
                                                  ("StableDiffusion3Pipeline", "Stable Diffusion 3"),
                                                  ("WuerstchenPipeline", None)])
@pytest.mark.parametrize("command", ["sample", "erase"])
def test_unsupported_pipeline_is_one_line_exit_4(tmp_path: Path, pipeline: str, family: str | None,
                                                 command: str) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": pipeline, "unet": ["diffusers", "x"]}))
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\n")
    args = (["sample", str(prompts), "--out", str(tmp_path / "imgs")] if command == "sample"
            else ["erase", "--target", "cat", "--method", "esd", "-o", str(tmp_path / "w.safetensors")])
    res = invoke([*args, "--model", str(folder), "--device", "cpu"])
    assert res.code == EXIT_MODEL_UNAVAILABLE
    line = res.stderr.strip()
    assert "\n" not in line and pipeline in line and "Traceback" not in line
    assert family is None or f"({family})" in line
    assert not (tmp_path / "imgs").exists() and not (tmp_path / "w.safetensors").exists()


def test_folder_without_model_index_is_exit_4(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    res = invoke(["erase", "--target", "cat", "--method", "esd", "-o", str(tmp_path / "w.safetensors"),
                  "--model", str(tmp_path / "model"), "--device", "cpu"])
    assert res.code == EXIT_MODEL_UNAVAILABLE and "model_index.json" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


# ---- the conversions -----------------------------------------------------------------------------------------


def test_conversions_against_diffusers_and_the_forward_process() -> None:
    from diffusers import DDPMScheduler

    from recare_cli.core.prediction import PREDICTION_TYPES, eps_from_v, training_target, v_from_eps, velocity
    from recare_cli.models.arch import PREDICTION_TYPES as DETECTED

    assert PREDICTION_TYPES == DETECTED
    sched = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          prediction_type="v_prediction")
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([0, 500, 999])
    v = velocity(x0, eps, sched.alphas_cumprod, t)
    torch.testing.assert_close(v, sched.get_velocity(x0, eps, t))
    x_t = sched.add_noise(x0, eps, t)
    for i in range(3):  # naive: α, σ of one timestep written out
        abar = float(sched.alphas_cumprod[t[i]])
        torch.testing.assert_close(eps_from_v(v[i:i + 1], x_t[i:i + 1], sched.alphas_cumprod, int(t[i])),
                                   abar ** 0.5 * v[i:i + 1] + (1 - abar) ** 0.5 * x_t[i:i + 1])
    torch.testing.assert_close(eps_from_v(v, x_t, sched.alphas_cumprod, t), eps, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(v_from_eps(eps, x_t, sched.alphas_cumprod, t), v, rtol=1e-4, atol=1e-4)
    assert training_target("epsilon", x0, eps, sched.alphas_cumprod, t) is eps  # ε-models: the noise itself
    torch.testing.assert_close(training_target("v_prediction", x0, eps, sched.alphas_cumprod, t), v)
    with pytest.raises(ValueError, match="sample"):
        training_target("sample", x0, eps, sched.alphas_cumprod, t)


def _eps(v: torch.Tensor, x: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """Naive ε = √ᾱ v + √(1 − ᾱ) x."""
    return abar.sqrt() * v + (1 - abar).sqrt() * x


def _naive_sample(unet: Any, scheduler: Any, z: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor, k: int,
                  guidance: float, convert: bool = True) -> torch.Tensor:
    """k guided steps of an ε-predicting copy of ``scheduler``, each v converted to ε first."""
    x = z
    for t in scheduler.timesteps[:k]:
        model_in = scheduler.scale_model_input(x, t)
        with torch.no_grad():
            v_u = unet(model_in, t, encoder_hidden_states=uncond).sample
            v_c = unet(model_in, t, encoder_hidden_states=cond).sample
        abar = scheduler.alphas_cumprod[int(t)]
        e_u, e_c = (_eps(v_u, model_in, abar), _eps(v_c, model_in, abar)) if convert else (v_u, v_c)
        x = scheduler.step(e_u + guidance * (e_c - e_u), t, x).prev_sample
    return x


def _pipeline_steps(pipe: Any, z: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor, k: int,
                    guidance: float) -> torch.Tensor:
    """The diffusers pipeline's own loop, interrupted after ``k`` steps: its latents."""
    def stop(p: Any, i: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        p._interrupt = i + 1 >= k
        return kwargs

    with torch.no_grad():
        return pipe(prompt_embeds=cond, negative_prompt_embeds=uncond, num_inference_steps=STEPS,
                    guidance_scale=guidance, latents=z, output_type="latent", callback_on_step_end=stop,
                    height=128, width=128).images


@pytest.mark.parametrize("sampler", ["DDIMScheduler", "PNDMScheduler", "EulerDiscreteScheduler"])
def test_sample_partial_on_a_v_model_runs_the_pipelines_sampler(tiny_sd2_dir: Path, sampler: str) -> None:
    """x_t after k steps equals the diffusers pipeline's latents after k steps (the scheduler carries the model's
    prediction type). For the one-step samplers (DDIM, Euler) it also equals an ε-predicting sampler fed each v
    converted to ε; PNDM's linear multistep combines the raw outputs of several steps before converting, so
    there the pipeline is the reference."""
    import diffusers

    from recare_cli.core.diffusion import sample_partial

    pipe = _bundle(tiny_sd2_dir).pipe
    cls = getattr(diffusers, sampler)
    pipe.scheduler = cls.from_config(pipe.scheduler.config)
    ours = cls.from_config(pipe.scheduler.config)
    assert ours.config.prediction_type == "v_prediction"
    g = torch.Generator().manual_seed(1)
    uncond, cond = 3 * torch.randn(1, 77, 32, generator=g), 3 * torch.randn(1, 77, 32, generator=g)
    z = torch.randn(1, 4, 16, 16, generator=g)
    ours.set_timesteps(STEPS)
    x = sample_partial(pipe.unet, ours, z * ours.init_noise_sigma, cond, uncond, steps=3, guidance=3.0)
    torch.testing.assert_close(x, _pipeline_steps(pipe, z, cond, uncond, 3, 3.0), rtol=1e-4, atol=1e-4)
    if sampler == "PNDMScheduler":
        return
    naive = cls.from_config(pipe.scheduler.config, prediction_type="epsilon")
    naive.set_timesteps(STEPS)
    expected = _naive_sample(pipe.unet, naive, z * naive.init_noise_sigma, cond, uncond, 3, 3.0)
    torch.testing.assert_close(x, expected, rtol=1e-4, atol=1e-4)
    naive.set_timesteps(STEPS)  # v fed as if it were ε: another x_t (the test tells them apart)
    unconverted = _naive_sample(pipe.unet, naive, z * naive.init_noise_sigma, cond, uncond, 3, 3.0, convert=False)
    assert (x - unconverted).abs().max() > 1e-2


# ---- one erase iteration per trainer method, against a naive ε-space iteration ---------------------------------


def _naive_eps_target(method: str, e: dict[str, torch.Tensor], s: float) -> torch.Tensor:
    """The published formulas in ε (docs/erase.md), written out."""
    if method == "esd":
        return e["h"] - s * (e["h"] - e["u"])
    if method == "esd-recare":
        return e["h"] - (s - 1) * (e["h"] - e["u"])
    return e["u"] + (s - 1) * (e["a"] - e["u"]) - (s + 1) * (e["h"] - e["u"])


@pytest.mark.parametrize("method", ["recare", "recare-noretain", "stereo", "esd-recare", "esd"])
def test_erase_target_in_v_equals_the_eps_target_converted(tiny_sd2_dir: Path, method: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Iteration 0 on the v-model: x_t, the timestep, the erase target and the retain target the engine
    computes on the UNet's own (v) outputs equal a naive iteration in ε-space (each prediction converted to ε,
    an ε-predicting sampler, the ε formula) with its targets converted back to v; the loss is the ε-space loss
    divided by ᾱ_t. The tiny random CLIP maps every prompt to nearly the same states, so the conditions are
    well-separated synthetic ones."""
    from diffusers import DDIMScheduler

    from recare_cli.core.diffusion import ErasePrompts, EraseSchedule, EraseTrainer, model_scheduler
    from recare_cli.core.guidance import select_parameters
    from recare_cli.stages.erase import EraseOptions, erase_settings

    pipe = _bundle(tiny_sd2_dir).pipe
    base = copy.deepcopy(pipe.unet).requires_grad_(False)
    g = torch.Generator().manual_seed(3)
    u, h, a, r = (3 * torch.randn(1, 77, 32, generator=g) for _ in range(4))
    anchored = method in ("recare", "recare-noretain", "stereo")
    prompts = ErasePrompts(uncond=u, erase=h, anchors=a if anchored else None,
                           retains=r if method == "recare" else None)
    schedule = EraseSchedule(erase=[0], anchor=[0] if anchored else None, retain=[0] if method == "recare" else None)
    opts = EraseOptions(target="x", output="-", method=method, iterations=1, lr=1e-3, ddim_steps=STEPS)
    trainer = EraseTrainer(pipe.unet, select_parameters(pipe.unet, "xattn"), prompts, schedule,
                           erase_settings(opts, 16), pipe.scheduler.config, torch.Generator().manual_seed(0))
    seen = spy_on_learn(trainer, monkeypatch)
    replay = torch.Generator().set_state(trainer.generator.get_state())
    out = trainer.step(0)

    # the naive ε-space iteration from the same draws
    published = method == "esd"
    k = int(torch.randint(0, STEPS, (1,), generator=replay).item() if published
            else torch.randint(1, STEPS - 1, (1,), generator=replay).item())
    z = torch.randn((1, 4, 16, 16), generator=replay)
    cfg = {**pipe.scheduler.config, "prediction_type": "epsilon"}
    sampler = model_scheduler(cfg) if published else DDIMScheduler.from_config(cfg, clip_sample=False)
    sampler.set_timesteps(STEPS)
    x_t = _naive_sample(base, sampler, z * sampler.init_noise_sigma, h, u, k, 3.0)
    full = DDIMScheduler.from_config(cfg)
    full.set_timesteps(1000)  # the reference's 1000-step schedule: entry int(k / steps · 1000)
    t = sampler.timesteps[k] if published else full.timesteps[int(k / STEPS * 1000)]
    assert seen["k"] == k and int(seen["t"]) == int(t)
    torch.testing.assert_close(seen["x_t"], x_t, rtol=1e-4, atol=1e-4)
    abar = sampler.alphas_cumprod[int(t)]
    with torch.no_grad():
        v = {name: base(x_t, t, encoder_hidden_states=c).sample for name, c in (("u", u), ("h", h), ("a", a), ("r", r))}
    e = {name: _eps(value, x_t, abar) for name, value in v.items()}
    eps_target = _naive_eps_target(method, e, 2.0)
    converted = (eps_target - (1 - abar).sqrt() * x_t) / abar.sqrt()
    torch.testing.assert_close(seen["target"], converted, rtol=1e-4, atol=1e-4)
    assert (seen["target"] - eps_target).abs().max() > 1e-2  # v and ε targets differ: the check can fail
    if method == "recare":
        torch.testing.assert_close(seen["retain"], v["r"], rtol=1e-5, atol=1e-5)
    # the loss is in the model's own type: MSE_v = MSE_ε / ᾱ_t (the student is the teacher before the update)
    student = v["h"]
    assert out["erase"] == pytest.approx(float(((student - converted) ** 2).mean()), rel=1e-4)
    assert out["erase"] == pytest.approx(float(((e["h"] - eps_target) ** 2).mean() / abar), rel=1e-3)


# ---- textual inversion: the reference's v target ---------------------------------------------------------------


def test_first_inversion_step_equals_the_references_v_loss(tiny_sd2_dir: Path, target_images: Path) -> None:
    """CCE's concept_inversion.py (diffusers' textual-inversion example): for a v-prediction scheduler the
    target is ``noise_scheduler.get_velocity(latents, noise, timesteps)``. The engine's first loss, replayed
    from the same draws, equals that MSE and not the ε-MSE."""
    from recare_cli.core.diffusion import (
        InversionSettings,
        InversionTrainer,
        extend_tokenizer,
        latent_distributions,
        placeholder_embeddings,
        tokenize,
    )
    from recare_cli.stages.invert import OBJECT_TEMPLATES, initializer_vector, load_pixels

    pipe = _bundle(tiny_sd2_dir).pipe
    pixels, _ = load_pixels(sorted(target_images.iterdir())[:3], strict=True, resolution=32, source="imgs")
    latents = latent_distributions(pipe.vae, pixels)
    tokenizer, first_id = extend_tokenizer(pipe.tokenizer, ["<x-cce>"])
    ids = tokenize(tokenizer, [t.format("<x-cce>") for t in OBJECT_TEMPLATES])
    init = initializer_vector(pipe, "person")
    batch = 2
    trainer = InversionTrainer(pipe.unet, pipe.text_encoder, first_id, init[:0], init, latents, ids,
                               pipe.scheduler.config, InversionSettings(steps=1, lr=1e-2, precision="fp32",
                                                                        batch_size=batch),
                               torch.Generator().manual_seed(7))
    assert trainer.noise_scheduler.config.prediction_type == "v_prediction"
    loss = trainer.step()

    g = torch.Generator().manual_seed(7)
    picks = [(int(torch.randint(0, latents.shape[0], (1,), generator=g).item()),
              int(torch.rand((1,), generator=g).item() < 0.5),
              int(torch.randint(0, ids.shape[0], (1,), generator=g).item())) for _ in range(batch)]
    x0 = torch.stack([latents[i, f][0] + latents[i, f][1] * torch.randn(latents.shape[-3:], generator=g)
                      for i, f, _ in picks])
    noise = torch.stack([torch.randn(x0.shape[1:], generator=g) for _ in range(batch)])
    t = torch.randint(0, 1000, (batch,), generator=g)
    scheduler = trainer.noise_scheduler
    with torch.no_grad(), placeholder_embeddings(pipe.text_encoder, first_id, init):
        hidden = pipe.text_encoder(ids[[p[2] for p in picks]])[0]
        pred = pipe.unet(scheduler.add_noise(x0, noise, t), t, encoder_hidden_states=hidden).sample
    target = scheduler.get_velocity(x0, noise, t)
    assert loss == pytest.approx(float(torch.nn.functional.mse_loss(pred, target)), rel=1e-5)
    assert loss != pytest.approx(float(torch.nn.functional.mse_loss(pred, noise)), rel=1e-2)


# ---- samplers and export ---------------------------------------------------------------------------------------


def test_every_sampler_choice_keeps_the_prediction_type(tiny_sd2_dir: Path) -> None:
    from recare_cli.models.scheduler import SCHEDULERS, set_scheduler

    pipe = _bundle(tiny_sd2_dir).pipe
    for name in SCHEDULERS:
        set_scheduler(pipe, name)
        assert pipe.scheduler.config.prediction_type == "v_prediction", name


def test_export_writes_sd2_as_a_single_file_and_a_folder(tiny_sd2_dir: Path, tmp_path: Path) -> None:
    """The single file's round trip is in tests/test_export_sdxl.py; here: it is written, and so is the folder."""
    res = invoke(["export", "--model", str(tiny_sd2_dir), "-o", str(tmp_path / "m.safetensors")])
    assert res.code == 0 and (tmp_path / "m.safetensors").is_file(), res.stderr
    folder = tmp_path / "pipe"
    assert invoke(["export", "--model", str(tiny_sd2_dir), "--format", "diffusers", "-o", str(folder)]).code == 0
    assert json.loads((folder / "scheduler" / "scheduler_config.json").read_text())["prediction_type"] == "v_prediction"


# ---- every stage on the tiny v-model --------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["recare", "esd", "esd-recare", "stereo", "recare-noretain", "uce"])
def test_erase_runs_on_a_v_model(tiny_sd2_dir: Path, care_file: Path, tmp_path: Path, method: str) -> None:
    out = tmp_path / "w.safetensors"
    args = ["erase", "--target", "nudity", "--method", method, "--model", str(tiny_sd2_dir), "--device", "cpu",
            "-o", str(out), "-q"]
    if method != "uce":
        args += ["--iterations", "2", "--ddim-steps", str(STEPS), "--resolution", "32"]
    if method in ("recare", "recare-noretain"):
        args += ["--care", str(care_file)]
    if method == "stereo":
        args += ["--anchor", "a photo of a person"]
    res = invoke(args)
    assert res.code == 0, res.stderr
    model = provenance_model(out)
    assert (model["architecture"], model["prediction_type"]) == ("sd2", "v_prediction")


def test_invert_attack_sample_and_score_run_on_a_v_model(tiny_sd2_dir: Path, tiny_clip_dir: Path,
                                                         target_images: Path, care_file: Path,
                                                         tmp_path: Path) -> None:
    model = ["--model", str(tiny_sd2_dir), "--device", "cpu", "-q"]
    adv = tmp_path / "adv.safetensors"
    res = invoke(["invert", str(target_images), "--target", "nudity", "--rounds", "1", "--erase-iterations", "2",
                  "--ddim-steps", str(STEPS), "--steps", "2", "--resolution", "32", "-o", str(adv), *model])
    assert res.code == 0, res.stderr
    erased = tmp_path / "erased.safetensors"
    res = invoke(["erase", "--target", "nudity", "--care", str(care_file), "--adversarial", str(adv),
                  "--iterations", "2", "--ddim-steps", str(STEPS), "--resolution", "32", "-o", str(erased), *model])
    assert res.code == 0, res.stderr
    attack = tmp_path / "cce.safetensors"
    prompts = tmp_path / "cce.csv"
    res = invoke(["attack", str(target_images), "--target", "nudity", "--weights", str(erased), "--steps", "2",
                  "--batch-size", "1", "--num-images", "4", "--resolution", "32", "--prompts", str(prompts),
                  "-o", str(attack), *model])
    assert res.code == 0, res.stderr
    for path in (adv, attack):
        assert provenance_model(path)["prediction_type"] == "v_prediction"
    rows = prompts.read_text().splitlines()[:3]
    prompts.write_text("\n".join(rows) + "\n")
    res = invoke(["sample", str(prompts), "--out", str(tmp_path / "imgs"), "--steps", "3", "--weights",
                  str(erased), "--embeddings", str(attack), *model])
    assert res.code == 0, res.stderr
    records = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(records) == 2 and all(r["model"]["prediction_type"] == "v_prediction" for r in records)
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_bytes(res.stdout)
    res = invoke(["score", str(manifest), "-m", "clip", "--clip", str(tiny_clip_dir), "--device", "cpu"])
    assert res.code == 0, res.stderr
    assert json.loads(res.stdout)["results"][0]["count"] == 2
