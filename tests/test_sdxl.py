"""SDXL: detection and loading (two text encoders, native size), the conditioning (both encoders' penultimate
states, the pooled embedding, the size ids) against the pipeline's own ``encode_prompt``, one erase iteration of
each trainer method against a naive computation, textual inversion with one vector per encoder, and every stage
end to end on a tiny SDXL model built as diffusers' own SDXL tests build theirs."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from recare_cli.errors import EXIT_MODEL_UNAVAILABLE, ModelUnavailableError
from tests.helpers import invoke, provenance_model, spy_on_learn

pytestmark = pytest.mark.usefixtures("one_torch_thread")
STEPS = 4  # sampler steps of the erase iterations


def _bundle(folder: Path) -> Any:
    from recare_cli.models.sd import load_sd

    return load_sd(str(folder), device="cpu", dtype="fp32")


# ---- detection and loading -------------------------------------------------------------------------------------


def test_tiny_sdxl_is_detected_with_both_text_encoders(tiny_sdxl_dir: Path) -> None:
    from recare_cli.models.fingerprint import module_fingerprint

    bundle = _bundle(tiny_sdxl_dir)
    assert type(bundle.pipe).__name__ == "StableDiffusionXLPipeline"
    assert (bundle.architecture.family, bundle.architecture.prediction_type) == ("sdxl", "epsilon")
    identity = bundle.identity()
    assert list(identity) == ["name", "unet", "text_encoder", "text_encoder_2", "dtype", "architecture",
                              "prediction_type"]
    assert identity["text_encoder_2"] == module_fingerprint(bundle.pipe.text_encoder_2) != identity["text_encoder"]
    assert identity["architecture"] == "sdxl"
    assert [type(e).__name__ for e in bundle.text_encoders] == ["CLIPTextModel", "CLIPTextModelWithProjection"]
    assert bundle.pipe.unet.config.addition_embed_type == "text_time"
    assert bundle.pipe.tokenizer_2.pad_token == "!"  # SD 1.x identities keep their keys: tests/test_sd2.py


def test_native_resolution_is_the_unets_size_times_the_vae_factor(tiny_sdxl_dir: Path) -> None:
    from recare_cli.models.sd import native_resolution

    assert native_resolution(_bundle(tiny_sdxl_dir).pipe) == (32, 32)
    full = SimpleNamespace(unet=SimpleNamespace(config=SimpleNamespace(sample_size=128)), vae_scale_factor=8)
    assert native_resolution(full) == (1024, 1024)  # SDXL base: 1024 px


def test_detect_needs_sdxls_text_time_embedding() -> None:
    from recare_cli.models.arch import SDXL_PIPELINE, detect

    unet = {"in_channels": 4, "out_channels": 4, "cross_attention_dim": 2048}
    found = detect({**unet, "addition_embed_type": "text_time"}, {}, "m", pipeline=SDXL_PIPELINE)
    assert (found.family, found.prediction_type) == ("sdxl", "epsilon")
    with pytest.raises(ModelUnavailableError, match="addition_embed_type None"):
        detect(unet, {}, "m", pipeline=SDXL_PIPELINE)
    with pytest.raises(ModelUnavailableError, match="addition_embed_type 'text_time'"):
        detect({**unet, "addition_embed_type": "text_time"}, {}, "m")  # an SD pipeline with an SDXL UNet


@pytest.mark.parametrize(("index", "named"), [
    ({"_class_name": "StableDiffusionXLImg2ImgPipeline", "text_encoder": [None, None]}, "SDXL refiner"),
    ({"_class_name": "StableDiffusionXLInpaintPipeline"}, "SDXL inpainting"),
    ({"_class_name": "StableDiffusionXLPipeline", "text_encoder": [None, None],
      "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"]}, "without a text_encoder"),
])
def test_sdxl_refiner_img2img_and_inpaint_are_refused(tmp_path: Path, index: dict[str, Any], named: str) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({**index, "unet": ["diffusers", "UNet2DConditionModel"]}))
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\n")
    res = invoke(["sample", str(prompts), "--out", str(tmp_path / "imgs"), "--model", str(folder),
                  "--device", "cpu"])
    assert res.code == EXIT_MODEL_UNAVAILABLE
    line = res.stderr.strip()
    assert "\n" not in line and named in line and "Traceback" not in line
    assert not (tmp_path / "imgs").exists()


# ---- the conditioning ------------------------------------------------------------------------------------------


def test_conditioning_equals_the_pipelines_encode_prompt(tiny_sdxl_dir: Path) -> None:
    """Both encoders' penultimate states concatenated and the second's pooled output, as
    ``StableDiffusionXLPipeline.encode_prompt``; the size ids as its ``_get_add_time_ids`` (which also checks their
    count against the UNet's added embedding)."""
    from recare_cli.core.conditioning import encode_sdxl
    from recare_cli.models.sd import text_encoders, tokenizers

    pipe = _bundle(tiny_sdxl_dir).pipe
    prompts = ["a photo of a cat", "", "a painting in the style of a person"]
    ours = encode_sdxl(tokenizers(pipe), text_encoders(pipe), prompts, size=(32, 48), device=torch.device("cpu"),
                       batch_size=2)
    hidden, _, pooled, _ = pipe.encode_prompt(prompt=prompts, device="cpu", do_classifier_free_guidance=False)
    assert ours.hidden.shape == (3, 77, 32 + 48) and ours.text_embeds.shape == (3, 40)
    torch.testing.assert_close(ours.hidden, hidden)
    torch.testing.assert_close(ours.text_embeds, pooled)
    expected = pipe._get_add_time_ids((32, 48), (0, 0), (32, 48), dtype=torch.float32,
                                      text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim)
    torch.testing.assert_close(ours.time_ids, expected.repeat(3, 1))
    assert (ours.hidden[0] - ours.hidden[2]).abs().max() > 1e-3  # prompts differ: the check can fail


# ---- one erase iteration per trainer method, against a naive computation ---------------------------------------


def _unet(unet: Any, x: torch.Tensor, t: Any, c: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return unet(x, t, encoder_hidden_states=c["h"],
                    added_cond_kwargs={"text_embeds": c["p"], "time_ids": c["ids"]}).sample


def _naive_ddim(unet: Any, scheduler: Any, z: torch.Tensor, cond: dict[str, torch.Tensor],
                uncond: dict[str, torch.Tensor], k: int, guidance: float) -> torch.Tensor:
    x = z
    for t in scheduler.timesteps[:k]:
        model_in = scheduler.scale_model_input(x, t)
        e_u, e_c = _unet(unet, model_in, t, uncond), _unet(unet, model_in, t, cond)
        x = scheduler.step(e_u + guidance * (e_c - e_u), t, x).prev_sample
    return x


def _pipeline_steps(pipe: Any, z: torch.Tensor, cond: dict[str, torch.Tensor], k: int, guidance: float) -> torch.Tensor:
    """The SDXL pipeline's own loop (its unconditional input: zeros) interrupted after ``k`` steps: published ESD's
    x_t on SDXL (esd_sdxl.py samples with the pipeline)."""
    if k == 0:  # no step: the pipeline's initial latents
        pipe.scheduler.set_timesteps(STEPS)
        return z * pipe.scheduler.init_noise_sigma

    def stop(p: Any, i: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        p._interrupt = i + 1 >= k
        return kwargs

    with torch.no_grad():
        return pipe(prompt_embeds=cond["h"], pooled_prompt_embeds=cond["p"], num_inference_steps=STEPS,
                    guidance_scale=guidance, latents=z, output_type="latent", callback_on_step_end=stop,
                    height=32, width=32).images


@pytest.mark.parametrize(("method", "seed"), [("recare", 0), ("recare-noretain", 1), ("stereo", 0),
                                            ("esd-recare", 1), ("esd", 0), ("esd", 3)])  # esd: k = 0 and k = 2
def test_one_erase_iteration_equals_a_naive_one(tiny_sdxl_dir: Path, method: str, seed: int,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Iteration 0 on tiny SDXL: k, t, x_t, the erase target, the retain target and the loss equal a naive
    iteration that calls the UNet with ``added_cond_kwargs`` written out (published ESD's x_t: the pipeline's own
    loop with its zero unconditional input, as esd_sdxl.py; the others: DDIM on the empty prompt's conditions).
    The tiny random encoders map every prompt to nearly the same states, so the conditions are synthetic ones."""
    import copy

    from diffusers import DDIMScheduler

    from recare_cli.core.conditioning import SDXLCondition, time_ids, zeros_like
    from recare_cli.core.diffusion import ErasePrompts, EraseSchedule, EraseTrainer
    from recare_cli.core.guidance import select_parameters
    from recare_cli.stages.erase import EraseOptions, erase_settings

    pipe = _bundle(tiny_sdxl_dir).pipe
    base = copy.deepcopy(pipe.unet).requires_grad_(False)
    g = torch.Generator().manual_seed(3)
    ids = time_ids(32, 32, 1, dtype=torch.float32, device=torch.device("cpu"))
    raw = {name: {"h": 3 * torch.randn(1, 77, 80, generator=g), "p": 3 * torch.randn(1, 40, generator=g), "ids": ids}
           for name in ("u", "h", "a", "r")}
    cond = {name: SDXLCondition(c["h"], c["p"], c["ids"]) for name, c in raw.items()}
    anchored = method in ("recare", "recare-noretain", "stereo")
    published = method == "esd"
    prompts = ErasePrompts(uncond=cond["u"], erase=cond["h"], anchors=cond["a"] if anchored else None,
                           retains=cond["r"] if method == "recare" else None,
                           sample_uncond=zeros_like(cond["u"]) if published else None)
    schedule = EraseSchedule(erase=[0], anchor=[0] if anchored else None, retain=[0] if method == "recare" else None)
    opts = EraseOptions(target="x", output="-", method=method, iterations=1, lr=1e-3, ddim_steps=STEPS)
    trainer = EraseTrainer(pipe.unet, select_parameters(pipe.unet, "xattn"), prompts, schedule,
                           erase_settings(opts, 16), pipe.scheduler.config, torch.Generator().manual_seed(seed))
    seen = spy_on_learn(trainer, monkeypatch)
    replay = torch.Generator().set_state(trainer.generator.get_state())
    out = trainer.step(0)

    k = int(torch.randint(0, STEPS, (1,), generator=replay).item() if published
            else torch.randint(1, STEPS - 1, (1,), generator=replay).item())
    z = torch.randn((1, 4, 16, 16), generator=replay)
    if published:
        pipe.unet = base
        x_t = _pipeline_steps(pipe, z, raw["h"], k, 3.0)
        pipe.scheduler.set_timesteps(STEPS)
        t = pipe.scheduler.timesteps[k]
    else:
        sampler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False)
        sampler.set_timesteps(STEPS)
        x_t = _naive_ddim(base, sampler, z * sampler.init_noise_sigma, raw["h"], raw["u"], k, 3.0)
        full = DDIMScheduler.from_config(pipe.scheduler.config)
        full.set_timesteps(1000)
        t = full.timesteps[int(k / STEPS * 1000)]
    assert seen["k"] == k and int(seen["t"]) == int(t)
    torch.testing.assert_close(seen["x_t"], x_t, rtol=1e-4, atol=1e-4)
    e = {name: _unet(base, x_t, t, c) for name, c in raw.items()}
    s = 2.0
    if method == "esd":
        target = e["h"] - s * (e["h"] - e["u"])
    elif method == "esd-recare":
        target = e["h"] - (s - 1) * (e["h"] - e["u"])
    else:
        target = e["u"] + (s - 1) * (e["a"] - e["u"]) - (s + 1) * (e["h"] - e["u"])
    torch.testing.assert_close(seen["target"], target, rtol=1e-4, atol=1e-4)
    if method == "recare":
        torch.testing.assert_close(seen["retain"], e["r"], rtol=1e-5, atol=1e-5)
    assert out["erase"] == pytest.approx(float(((e["h"] - target) ** 2).mean()), rel=1e-4)
    no_pooled = {**raw["h"], "p": torch.zeros_like(raw["h"]["p"])}  # the pooled embedding matters: can fail
    assert (_unet(base, x_t, t, no_pooled) - e["h"]).abs().max() > 1e-4


# ---- every stage end to end ------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["recare", "esd", "esd-recare", "stereo", "recare-noretain"])
def test_erase_runs_on_sdxl(tiny_sdxl_dir: Path, care_file: Path, tmp_path: Path, method: str) -> None:
    out = tmp_path / "w.safetensors"
    args = ["erase", "--target", "nudity", "--method", method, "--model", str(tiny_sdxl_dir), "--device", "cpu",
            "-o", str(out), "-q", "--iterations", "2", "--ddim-steps", str(STEPS)]
    if method in ("recare", "recare-noretain"):
        args += ["--care", str(care_file)]
    if method == "stereo":
        args += ["--anchor", "a photo of a person"]
    res = invoke(args)
    assert res.code == 0, res.stderr
    model = provenance_model(out)
    second = _bundle(tiny_sdxl_dir).identity()["text_encoder_2"]
    assert (model["architecture"], model["text_encoder_2"]) == ("sdxl", second)


@pytest.mark.parametrize("method", ["uce", "age", "advunlearn"])
def test_methods_that_do_not_run_on_sdxl_are_refused(tiny_sdxl_dir: Path, tmp_path: Path, method: str) -> None:
    out = tmp_path / "w.safetensors"
    extra = {"age": ["--concepts", str(tmp_path / "c.csv")],
             "advunlearn": ["--retain-prompts", str(tmp_path / "r.csv")]}
    (tmp_path / "c.csv").write_text("concept\ncat\n")
    (tmp_path / "r.csv").write_text("prompt\na cat\n")
    res = invoke(["erase", "--target", "nudity", "--method", method, *extra.get(method, []), "--model",
                  str(tiny_sdxl_dir), "--device", "cpu", "-o", str(out)])
    assert res.code == 2, res.stderr
    line = res.stderr.strip()
    assert "\n" not in line and f"--method {method} does not run on SDXL" in line and not out.exists()


# ---- textual inversion: one vector per text encoder ------------------------------------------------------------


def test_first_inversion_step_equals_diffusers_loaded_tokens(tiny_sdxl_dir: Path, target_images: Path) -> None:
    """The engine's first loss on SDXL, replayed from the same draws, equals the loss of a pipeline that learned the
    token the plain diffusers way (``load_textual_inversion`` into each encoder with its tokenizer), conditioned by
    ``encode_prompt`` and ``_get_add_time_ids``; and the second encoder's vector receives a gradient."""
    from recare_cli.core.diffusion import (
        InversionSettings,
        InversionTrainer,
        SecondEncoder,
        extend_tokenizer,
        latent_distributions,
        tokenize,
    )
    from recare_cli.stages.invert import OBJECT_TEMPLATES, initializer_vector, load_pixels

    token = "<x-cce>"
    pipe = _bundle(tiny_sdxl_dir).pipe
    pixels, _ = load_pixels(sorted(target_images.iterdir())[:3], strict=True, resolution=32, source="imgs")
    latents = latent_distributions(pipe.vae, pixels)
    filled = [t.format(token) for t in OBJECT_TEMPLATES]
    tok_1, first_1 = extend_tokenizer(pipe.tokenizer, [token])
    tok_2, first_2 = extend_tokenizer(pipe.tokenizer_2, [token])
    init_1, init_2 = initializer_vector(pipe, "person"), initializer_vector(pipe, "person", encoder=1)
    assert init_2.shape == (1, 48) and init_1.shape == (1, 32)
    batch = 2
    settings = InversionSettings(steps=1, lr=1e-2, precision="fp32", batch_size=batch)
    trainer = InversionTrainer(pipe.unet, pipe.text_encoder, first_1, init_1[:0], init_1, latents,
                               tokenize(tok_1, filled), pipe.scheduler.config, settings,
                               torch.Generator().manual_seed(7),
                               second=SecondEncoder(pipe.text_encoder_2, first_2, init_2[:0], init_2,
                                                    tokenize(tok_2, filled), (32, 32)))
    loss = trainer.step()
    learned_1, learned_2 = trainer.vectors()
    assert (learned_2 - init_2).abs().max() > 0 and (learned_1 - init_1).abs().max() > 0  # both trained

    g = torch.Generator().manual_seed(7)
    picks = [(int(torch.randint(0, latents.shape[0], (1,), generator=g).item()),
              int(torch.rand((1,), generator=g).item() < 0.5),
              int(torch.randint(0, len(filled), (1,), generator=g).item())) for _ in range(batch)]
    x0 = torch.stack([latents[i, f][0] + latents[i, f][1] * torch.randn(latents.shape[-3:], generator=g)
                      for i, f, _ in picks])
    noise = torch.stack([torch.randn(x0.shape[1:], generator=g) for _ in range(batch)])
    t = torch.randint(0, 1000, (batch,), generator=g)
    reference = _bundle(tiny_sdxl_dir).pipe
    reference.load_textual_inversion(init_1, token=token, text_encoder=reference.text_encoder,
                                     tokenizer=reference.tokenizer)
    reference.load_textual_inversion(init_2, token=token, text_encoder=reference.text_encoder_2,
                                     tokenizer=reference.tokenizer_2)
    with torch.no_grad():
        hidden, _, pooled, _ = reference.encode_prompt(prompt=[filled[p[2]] for p in picks], device="cpu",
                                                       do_classifier_free_guidance=False)
        ids = reference._get_add_time_ids((32, 32), (0, 0), (32, 32), dtype=torch.float32,
                                          text_encoder_projection_dim=40).repeat(batch, 1)
        noisy = trainer.noise_scheduler.add_noise(x0, noise, t)
        pred = reference.unet(noisy, t, encoder_hidden_states=hidden,
                              added_cond_kwargs={"text_embeds": pooled, "time_ids": ids}).sample
    assert loss == pytest.approx(float(torch.nn.functional.mse_loss(pred, noise)), rel=1e-5)


def _png_pixels(path: Path) -> Any:
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


def test_every_stage_runs_on_sdxl_and_its_files_load_in_plain_diffusers(
        tiny_sdxl_dir: Path, tiny_clip_dir: Path, target_images: Path, care_file: Path, tmp_path: Path) -> None:
    """invert → erase with its tokens → attack on the erased weights → sample with the weights and the attack's
    token → score. The sampled image equals plain diffusers' with the erased UNet values loaded and the attack's
    file loaded as SDXL embeddings are (``load_textual_inversion(state["clip_l"], ...)`` and ``clip_g`` into
    ``text_encoder_2``)."""
    import numpy as np
    from safetensors.torch import load_file

    model = ["--model", str(tiny_sdxl_dir), "--device", "cpu", "-q"]
    adv = tmp_path / "adv.safetensors"
    res = invoke(["invert", str(target_images), "--target", "nudity", "--rounds", "1", "--erase-iterations", "2",
                  "--ddim-steps", str(STEPS), "--steps", "2", "-o", str(adv), *model])
    assert res.code == 0, res.stderr
    state = load_file(str(adv))
    assert {k: tuple(v.shape) for k, v in state.items()} == {"clip_l": (1, 32), "clip_g": (1, 48)}
    erased = tmp_path / "erased.safetensors"
    res = invoke(["erase", "--target", "nudity", "--care", str(care_file), "--adversarial", str(adv),
                  "--iterations", "2", "--ddim-steps", str(STEPS), "-o", str(erased), *model])
    assert res.code == 0, res.stderr
    attack = tmp_path / "cce.safetensors"
    prompts = tmp_path / "cce.csv"
    res = invoke(["attack", str(target_images), "--target", "nudity", "--weights", str(erased), "--steps", "2",
                  "--batch-size", "1", "--num-images", "4", "--prompts", str(prompts), "-o", str(attack), *model])
    assert res.code == 0, res.stderr
    assert provenance_model(attack)["architecture"] == "sdxl"
    prompts.write_text("\n".join(prompts.read_text().splitlines()[:2]) + "\n")
    res = invoke(["sample", str(prompts), "--out", str(tmp_path / "imgs"), "--steps", "2", "--weights",
                  str(erased), "--embeddings", str(attack), *model])
    assert res.code == 0, res.stderr
    record = json.loads(res.stdout.splitlines()[0])
    assert record["model"]["architecture"] == "sdxl" and "<nudity-cce>" in record["prompt"]

    pipe = _bundle(tiny_sdxl_dir).pipe
    pipe.unet.load_state_dict(load_file(str(erased)), strict=False)
    token_state = load_file(str(attack))
    pipe.load_textual_inversion(token_state["clip_l"], token="<nudity-cce>", text_encoder=pipe.text_encoder,
                                tokenizer=pipe.tokenizer)
    pipe.load_textual_inversion(token_state["clip_g"], token="<nudity-cce>", text_encoder=pipe.text_encoder_2,
                                tokenizer=pipe.tokenizer_2)
    with torch.no_grad():
        image = pipe(prompt=record["prompt"], generator=torch.Generator().manual_seed(record["seed"]),
                     num_inference_steps=2, guidance_scale=record["sampling"]["guidance"], height=32, width=32,
                     output_type="np").images[0]
    assert np.array_equal(_png_pixels(Path(record["path"])), (image * 255).round().astype("uint8"))

    manifest = tmp_path / "manifest.jsonl"
    manifest.write_bytes(res.stdout)
    res = invoke(["score", str(manifest), "-m", "clip", "--clip", str(tiny_clip_dir), "--device", "cpu"])
    assert res.code == 0, res.stderr


def test_embeddings_of_the_other_architecture_are_refused(tiny_sdxl_dir: Path, tiny_sd_dir: Path,
                                                          tmp_path: Path) -> None:
    from recare_cli.models.sdxl_embeddings import save_sdxl_embeddings
    from recare_cli.models.weights import save_embeddings

    xl, sd1 = tmp_path / "xl.safetensors", tmp_path / "sd1.safetensors"
    save_sdxl_embeddings(xl, ["<t>"], [torch.zeros(1, 32), torch.zeros(1, 48)], base_text_encoder="a",
                         base_text_encoder_2="b")
    save_embeddings(sd1, {"<t>": torch.zeros(1, 32)}, base_text_encoder="a")
    prompts = tmp_path / "p.txt"
    prompts.write_text("a <t>\n")
    for model, file in ((tiny_sd_dir, xl), (tiny_sdxl_dir, sd1)):
        out = tmp_path / f"imgs-{file.stem}"
        res = invoke(["sample", str(prompts), "--out", str(out), "--steps", "1", "--embeddings", str(file),
                      "--model", str(model), "--device", "cpu"])
        assert res.code == 3, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1 and "SD" in res.stderr and not out.exists()
        res = invoke(["erase", "--target", "x", "--method", "esd", "--adversarial", str(file), "--iterations", "1",
                      "-o", str(tmp_path / "w.safetensors"), "--model", str(model), "--device", "cpu"])
        assert res.code == 3 and len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert not (tmp_path / "w.safetensors").exists()


# ---- export ----------------------------------------------------------------------------------------------------


def test_export_writes_an_sdxl_pipeline_folder_and_a_single_file(tiny_sdxl_dir: Path, tmp_path: Path) -> None:
    """--format diffusers: a StableDiffusionXLPipeline folder with the erased UNet values, and the tokens as the UIs'
    SDXL embedding files (clip_l and clip_g); --format single-file writes the SGM layout (round trip in
    tests/test_export_sdxl.py)."""
    from diffusers import StableDiffusionXLPipeline
    from safetensors.torch import load_file

    from recare_cli.models.sdxl_embeddings import save_sdxl_embeddings
    from recare_cli.models.weights import save_unet_weights

    bundle = _bundle(tiny_sdxl_dir)
    name = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    value = bundle.pipe.unet.state_dict()[name] + 1.0
    weights = tmp_path / "w.safetensors"
    save_unet_weights(weights, {name: value}, base_unet=bundle.unet_fingerprint)
    tokens = tmp_path / "t.safetensors"
    save_sdxl_embeddings(tokens, ["<t>"], [torch.ones(1, 32), 2 * torch.ones(1, 48)],
                         base_text_encoder=bundle.text_encoder_fingerprint,
                         base_text_encoder_2=str(bundle.text_encoder_2_fingerprint))
    res = invoke(["export", "--model", str(tiny_sdxl_dir), "-o", str(tmp_path / "m.safetensors")])
    assert res.code == 0 and (tmp_path / "m.safetensors").is_file(), res.stderr
    folder = tmp_path / "pipe"
    res = invoke(["export", "--model", str(tiny_sdxl_dir), "--format", "diffusers", "--weights", str(weights),
                  "--weights", str(tokens), "-o", str(folder)])
    assert res.code == 0, res.stderr
    loaded = StableDiffusionXLPipeline.from_pretrained(folder)
    torch.testing.assert_close(loaded.unet.state_dict()[name], value)
    ui = load_file(str(tmp_path / "pipe-embeddings" / "t.safetensors"))
    torch.testing.assert_close(ui["clip_g"], 2 * torch.ones(1, 48))
    assert set(ui) == {"clip_l", "clip_g"}


def test_erase_lora_on_sdxl_loads_in_diffusers(tiny_sdxl_dir: Path, tmp_path: Path) -> None:
    from diffusers import StableDiffusionXLPipeline

    out = tmp_path / "lora.safetensors"
    res = invoke(["erase", "--target", "nudity", "--method", "esd", "--lora", "2", "--iterations", "1",
                  "--ddim-steps", str(STEPS), "--model", str(tiny_sdxl_dir), "--device", "cpu", "-o", str(out), "-q"])
    assert res.code == 0, res.stderr
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_dir)
    pipe.load_lora_weights(str(out))
    assert pipe.get_active_adapters()


def test_invert_resumes_on_sdxl_with_both_encoders_vectors(tiny_sdxl_dir: Path, target_images: Path,
                                                           tmp_path: Path) -> None:
    """A run interrupted in round 2 and resumed writes the bytes of an uninterrupted one (the checkpoint keeps the
    second encoder's vectors too)."""
    from recare_cli.errors import InterruptedRunError
    from recare_cli.stages.invert import InvertOptions, run_invert

    paths = sorted(target_images.iterdir())

    def opts(resume: bool = False) -> InvertOptions:
        return InvertOptions(images="imgs", target="nudity", rounds=2, erase_iterations=1, steps=2, ddim_steps=STEPS,
                             device="cpu", model=str(tiny_sdxl_dir), output=str(out), resume=resume)

    out = tmp_path / "adv.safetensors"
    run_invert(opts(), paths)
    straight = out.read_bytes()
    out.unlink()
    rounds: list[int] = []

    def interrupt(phase: str, step: int, _: float) -> None:
        if phase == "erase":
            rounds.append(step)
            if len(rounds) == 2:
                raise KeyboardInterrupt

    with pytest.raises(InterruptedRunError):
        run_invert(opts(), paths, on_step=interrupt)
    assert Path(f"{out}.ckpt").exists() and not out.exists()
    run_invert(opts(resume=True), paths)
    assert out.read_bytes() == straight


def test_checkpoint_digests_include_the_second_text_encoder() -> None:
    """A checkpoint made with another SDXL text_encoder_2 is not resumed; SD 1.x/2.x digests keep their value."""
    from recare_cli.models.fingerprint import combine
    from recare_cli.stages.attack import AttackOptions, _digest
    from recare_cli.stages.erase import EraseOptions, config_digest
    from recare_cli.stages.invert import InvertOptions

    sd = {"name": "m", "unet": "u", "text_encoder": "t"}
    xl, other = {**sd, "text_encoder_2": "g"}, {**sd, "text_encoder_2": "h"}
    erase = EraseOptions(target="x", output="-", method="esd")
    assert config_digest(erase, 32, xl, None, None) != config_digest(erase, 32, other, None, None)
    assert config_digest(erase, 32, sd, None, None) == combine(json.dumps(erase.hyperparameters(32), sort_keys=True),
                                                               "u", "t", None, None, "x")
    invert = InvertOptions(images="i", target="x", output="-")
    assert invert.digest(32, xl, []) != invert.digest(32, other, []) != invert.digest(32, sd, [])
    attack = AttackOptions(images="i", target="x", output="-")
    assert _digest(attack, 32, xl, [], []) != _digest(attack, 32, other, [], []) != _digest(attack, 32, sd, [], [])
