"""Published STEREO (Srivatsan et al., koushiksrivats/robust-concept-erasing) on the tiny model.

"Robustly erase once" is ``recare erase --method stereo``: one pass of the authors' loop (utils/stereo.py
``robustly_erase_once`` with utils/apg.py ``normalized_compositional_guidance`` and utils/utils.py
``StableDiffuser``/``FineTunedModel``), written out naively below, gives the engine's target, loss and AdamW update
for the same draws; their anchor file and schedules; bad input; resume; the output applied by ``recare sample``.
"Search thoroughly enough" is ``recare invert`` with the flags docs/erase.md gives: its first erase step
(``train_erasing``) and its first inversion step (``train_concept_inversion``) against naive transcriptions.
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from recare_cli.errors import BadInputError
from tests.helpers import check_resume_gives_same_bytes, invoke, sample_with_and_without

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NSTEPS = 50  # the authors' nsteps, hard-coded in train_erasing and robustly_erase_once
ROOT = Path(__file__).resolve().parent.parent


def _bundle(tiny_sd_dir: Path) -> Any:
    from recare_cli.models.sd import load_sd

    return load_sd(str(tiny_sd_dir), device="cpu", dtype="fp32")


def _tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}, dict(fh.metadata())  # noqa: SIM118


# ---- a naive transcription of the authors' code ---------------------------------------------------------------


def their_scheduler(config: Any) -> Any:
    """StableDiffuser(scheduler='DDIM'): ``DDIMScheduler.from_pretrained`` of SD v1.4's scheduler folder, whose
    config says ``clip_sample: false`` (the tiny model's config, written by PNDM, has no such key)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config({**dict(config), "clip_sample": False})


def their_trained_names(unet: torch.nn.Module, train_method: str) -> list[str]:
    """FineTunedModel: modules picked by class name, then by their train-method filter on the module name."""
    names = []
    for module_name, module in unet.named_modules():
        if module.__class__.__name__ in ["Linear", "Conv2d", "LoRACompatibleLinear", "LoRACompatibleConv"]:
            if train_method == "xattn" and "attn2" not in module_name:
                continue
            if train_method == "noxattn" and "attn2" in module_name:
                continue
            names += [f"{module_name}.{n}" for n, _ in module.named_parameters()]
    return names


def predict_noise(unet: Any, scheduler: Any, iteration: int, latents: torch.Tensor, text_embeddings: torch.Tensor,
                  guidance_scale: float) -> torch.Tensor:
    """StableDiffuser.predict_noise: a classifier-free-guidance batch [uncond; text] at timesteps[iteration]."""
    latents = torch.cat([latents] * 2)
    latents = scheduler.scale_model_input(latents, scheduler.timesteps[iteration])
    noise_prediction = unet(latents, scheduler.timesteps[iteration], encoder_hidden_states=text_embeddings).sample
    noise_prediction_uncond, noise_prediction_text = noise_prediction.chunk(2)
    return noise_prediction_uncond + guidance_scale * (noise_prediction_text - noise_prediction_uncond)


@torch.no_grad()
def diffusion(unet: Any, scheduler: Any, latents: torch.Tensor, text_embeddings: torch.Tensor,
              end_iteration: int) -> torch.Tensor:
    """StableDiffuser.diffusion from iteration 0 to ``end_iteration`` at guidance 3; the last latents."""
    for iteration in range(0, end_iteration):
        noise_pred = predict_noise(unet, scheduler, iteration, latents, text_embeddings, 3)
        latents = scheduler.step(noise_pred, scheduler.timesteps[iteration], latents).prev_sample
    return latents


def project(v0: torch.Tensor, v1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    dtype = v0.dtype
    v0, v1 = v0.double(), v1.double()
    v1 = F.normalize(v1, dim=[-1, -2, -3])
    v0_parallel = (v0 * v1).sum(dim=[-1, -2, -3], keepdim=True) * v1
    v0_orthogonal = v0 - v0_parallel
    return v0_parallel.to(dtype), v0_orthogonal.to(dtype)


def normalized_guidance(pred_cond: torch.Tensor, pred_uncond: torch.Tensor, guidance_scale: float,
                        eta: float = 1.0) -> torch.Tensor:
    diff = pred_cond - pred_uncond
    diff_parallel, diff_orthogonal = project(diff, pred_cond)
    return pred_cond - (guidance_scale - 1) * (diff_orthogonal + eta * diff_parallel)


def normalized_compositional_guidance(pred_conds: list[torch.Tensor], pred_uncond: torch.Tensor,
                                      guidance_scales: list[float], eta: float = 1.0) -> torch.Tensor:
    positive_update, negative_update = torch.zeros_like(pred_uncond), torch.zeros_like(pred_uncond)
    pos_count, neg_count = 0, 0
    for pred_cond, guidance_scale in zip(pred_conds, guidance_scales, strict=True):
        diff = pred_cond - pred_uncond
        diff_parallel, diff_orthogonal = project(diff, pred_cond)
        normalized_update = diff_orthogonal + eta * diff_parallel
        if guidance_scale > 0:
            positive_update += (guidance_scale - 1) * normalized_update
            pos_count += 1
        else:
            negative_update += (guidance_scale - 1) * normalized_update
            neg_count += 1
    if pos_count > 0:
        positive_update /= pos_count
    if neg_count > 0:
        negative_update /= neg_count
    return pred_uncond + positive_update + negative_update


def their_reo_iteration(base: Any, finetuned: Any, scheduler: Any, optimizer: torch.optim.Optimizer, *,
                        uncond: torch.Tensor, erase_concepts: list[torch.Tensor], sampled: int, anchor: torch.Tensor,
                        k: int, noise: torch.Tensor, scale: float = 2.0,
                        sample_with: Any = None) -> tuple[float, torch.Tensor]:
    """One pass of robustly_erase_once's loop. ``finetuned`` is the UNet as ``with finetuner:`` makes it, ``base``
    the original modules; text states come in as tensors (each prompt's get_text_embeddings is [uncond; text]).
    ``sample_with`` replaces the UNet x_t is drawn with (to show the test tells them apart). Returns (loss,
    target)."""
    with torch.no_grad():
        neutral_text_embeddings = torch.cat([uncond, uncond])
        target_text_embeddings = torch.cat([uncond, erase_concepts[sampled]])
        negative_word_embs = [torch.cat([uncond, e]) for e in erase_concepts]
        anchor_word_embs = [torch.cat([uncond, anchor])]
        scheduler.set_timesteps(NSTEPS)
        optimizer.zero_grad()
        latents = noise * scheduler.init_noise_sigma
        latents_step = diffusion(sample_with or finetuned, scheduler, latents, target_text_embeddings, k)
        scheduler.set_timesteps(1000)
        iteration = int(k / NSTEPS * 1000)
        neutral_latents = predict_noise(base, scheduler, iteration, latents_step, neutral_text_embeddings, 1)
        e_negatives_latents = [predict_noise(base, scheduler, iteration, latents_step, emb, 1)
                               for emb in negative_word_embs]
        e_anchor_latents = [predict_noise(base, scheduler, iteration, latents_step, emb, 1) for emb in anchor_word_embs]
    negative_latents = predict_noise(finetuned, scheduler, iteration, latents_step, target_text_embeddings, 1)
    scales = [-float(scale)] * len(e_negatives_latents) + [float(scale)] * len(e_anchor_latents)
    estimate = normalized_compositional_guidance(e_negatives_latents + e_anchor_latents, neutral_latents, scales)
    loss = torch.nn.MSELoss()(negative_latents, estimate)
    loss.backward()
    optimizer.step()
    return float(loss.detach()), estimate


def their_ste_erase_iteration(base: Any, finetuned: Any, scheduler: Any, optimizer: torch.optim.Optimizer, *,
                              uncond: torch.Tensor, concept: torch.Tensor, k: int, noise: torch.Tensor,
                              negative_guidance: float) -> tuple[float, torch.Tensor]:
    """One pass of train_erasing's loop (erase_from = the concept itself, as search_thoroughly_enough calls it)."""
    with torch.no_grad():
        neutral_text_embeddings = torch.cat([uncond, uncond])
        positive_text_embeddings = torch.cat([uncond, concept])
        target_text_embeddings = positive_text_embeddings
        scheduler.set_timesteps(NSTEPS)
        optimizer.zero_grad()
        latents = noise * scheduler.init_noise_sigma
        latents_step = diffusion(finetuned, scheduler, latents, positive_text_embeddings, k)
        scheduler.set_timesteps(1000)
        iteration = int(k / NSTEPS * 1000)
        positive_latents = predict_noise(base, scheduler, iteration, latents_step, positive_text_embeddings, 1)
        neutral_latents = predict_noise(base, scheduler, iteration, latents_step, neutral_text_embeddings, 1)
    negative_latents = predict_noise(finetuned, scheduler, iteration, latents_step, target_text_embeddings, 1)
    pred_neg_guidance = normalized_guidance(positive_latents, neutral_latents, negative_guidance)
    loss = torch.nn.MSELoss()(negative_latents, pred_neg_guidance)
    loss.backward()
    optimizer.step()
    return float(loss.detach()), pred_neg_guidance


def _finetuned(unet: torch.nn.Module, names: list[str], lr: float) -> tuple[Any, Any, torch.optim.Optimizer]:
    """(base, finetuned, AdamW over the finetuned copies) as FineTunedModel and their optimizer set them up."""
    base = copy.deepcopy(unet).requires_grad_(False)
    finetuned = copy.deepcopy(unet).requires_grad_(False)
    params = dict(finetuned.named_parameters())
    for n in names:
        params[n].requires_grad_(True)
    return base, finetuned, torch.optim.AdamW([params[n] for n in names], lr=lr)


def _replay(trainer: Any, latent: int = 16) -> tuple[int, torch.Tensor]:
    """The engine's next (k, noise) draw, read from a copy of its generator."""
    replay = torch.Generator().set_state(trainer.generator.get_state())
    k = int(torch.randint(1, NSTEPS - 1, (1,), generator=replay).item())
    return k, torch.randn((1, 4, latent, latent), generator=replay)


def _states(n: int, seed: int) -> list[torch.Tensor]:
    """Well-separated synthetic text states: the tiny model's random CLIP maps every prompt to nearly the same
    states (targets would differ from ε*_∅ by almost nothing); the property under test is the engine's."""
    g = torch.Generator().manual_seed(seed)
    return [3 * torch.randn(1, 77, 32, generator=g) for _ in range(n)]


# ---- robustly erase once: recare erase --method stereo --------------------------------------------------------


def _step_equals_theirs(trainer: Any, i: int, k: int, targets: list[torch.Tensor], target: torch.Tensor,
                        loss: float, finetuned: torch.nn.Module, lr: float) -> None:
    """Step ``trainer`` once and check it against the authors' iteration: the same x_t depth ``k``, target (the
    last of ``targets``, which the engine's target function records) and loss, and weights where theirs went.
    AdamW's first steps move each weight by about ±lr: a wrong rate, gradient or sign is off by ~lr, while
    batched-vs-separate summation noise, amplified where a gradient is near 0, stays below a tenth of it."""
    out = trainer.step(i)
    assert out["k"] == k
    torch.testing.assert_close(targets[-1], target, rtol=1e-4, atol=1e-5)
    assert out["loss"] == pytest.approx(loss, rel=1e-5)
    theirs = dict(finetuned.named_parameters())
    for name, param in zip(trainer.names, trainer.params, strict=True):
        torch.testing.assert_close(param.detach(), theirs[name].detach(), rtol=0, atol=0.1 * lr)


def test_steps_equal_the_authors_loop(tiny_sd_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three iterations (erase concepts target + two tokens, two anchors): the engine's draws replayed into the
    authors' loop give the same target, loss and AdamW-updated weights. After the first update x_t drawn with the
    frozen model instead of the one being trained would give another loss: the comparison tells them apart."""
    import recare_cli.core.diffusion as diffusion_module
    from recare_cli.core.diffusion import ErasePrompts, EraseSchedule, EraseTrainer
    from recare_cli.core.guidance import select_parameters
    from recare_cli.stages.erase import EraseOptions, erase_settings

    bundle = _bundle(tiny_sd_dir)
    unet, lr, iterations = bundle.pipe.unet, 1e-3, 3  # an lr at which the trained model moves in three steps
    opts = EraseOptions(target="nudity", output="-", method="stereo", anchor=("a",), iterations=iterations, lr=lr,
                        ddim_steps=NSTEPS).resolved()
    assert opts.train_method == "noxattn" and opts.guidance == 2.0  # their README's --train_method, their scale
    names = select_parameters(unet, opts.train_method)
    assert names == their_trained_names(unet, "noxattn")
    base, finetuned, optimizer = _finetuned(unet, names, lr)
    uncond, *states = _states(6, seed=5)
    erase, anchors = states[:3], states[3:]
    schedule = EraseSchedule(erase=[0, 2, 1], anchor=[1, 0, 1])
    prompts = ErasePrompts(uncond=uncond, erase=torch.cat(erase), anchors=torch.cat(anchors))
    trainer = EraseTrainer(unet, names, prompts, schedule, erase_settings(opts, 16), bundle.pipe.scheduler.config,
                           torch.Generator().manual_seed(0))
    assert all(type(o) is torch.optim.AdamW and o.defaults["weight_decay"] == 0.01 for o in trainer.optimizers)
    assert trainer.settings.sample_guidance == 3.0
    scheduler = their_scheduler(bundle.pipe.scheduler.config)

    targets: list[torch.Tensor] = []
    real = diffusion_module.compositional_target
    monkeypatch.setattr(diffusion_module, "compositional_target",
                        lambda *a: targets.append(real(*a)) or targets[-1])
    gaps = []
    for i in range(iterations):
        k, noise = _replay(trainer)
        common = dict(uncond=uncond, erase_concepts=erase, sampled=schedule.erase[i],
                      anchor=anchors[schedule.anchor[i]], k=k, noise=noise)
        if i > 0:  # the same iteration with x_t from the frozen model
            other = their_reo_iteration(base, copy.deepcopy(finetuned), scheduler, torch.optim.AdamW([torch.zeros(1)]),
                                        sample_with=base, **common)[0]
        loss, target = their_reo_iteration(base, finetuned, scheduler, optimizer, **common)
        _step_equals_theirs(trainer, i, k, targets, target, loss, finetuned, lr)
        if i > 0:
            gaps.append(abs(other - loss) / loss)
    assert max(gaps) > 1e-3


def test_their_compositional_guidance_groups_terms_by_sign() -> None:
    """Where recare's target and theirs part: with --guidance ≤ 0 their helper files the anchor among the erase
    terms (it groups by the sign of each term's scale); at their default and any s > 0 the two agree."""
    from recare_cli.core.guidance import compositional_target

    g = torch.Generator().manual_seed(1)
    u, a, *e = (torch.randn(1, 4, 8, 8, generator=g) for _ in range(4))
    for s, same in ((2.0, True), (0.5, True), (0.0, False)):
        theirs = normalized_compositional_guidance([*e, a], u, [-s] * len(e) + [s])
        assert torch.allclose(compositional_target(u, torch.stack(e), a, s), theirs, atol=1e-5) is same


def _anchor_file(tmp_path: Path, doc: Any, name: str = "anchors.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return path


def their_balanced(items: list[str], iterations: int) -> list[str]:
    """robustly_erase_once's stratified sampling of anchors (and of erase concepts), on numpy's global state."""
    appearances = iterations // len(items)
    balanced = items * appearances
    np.random.shuffle(balanced)
    remainder = iterations - len(balanced)
    if remainder > 0:
        balanced.extend(np.random.choice(items, remainder, replace=False))
    return balanced


@pytest.mark.parametrize("iterations", [10, 2])
def test_anchor_prompts_come_from_the_file_entry_of_the_target(tiny_sd_dir: Path, tmp_path: Path,
                                                               iterations: int) -> None:
    """The file's list for the target (their json.load(f)[erase_concepts[0]]), in order, encoded by the text
    encoder, on their balanced schedule: each anchor iterations // n times, the remainder on distinct anchors."""
    from recare_cli.core.diffusion import encode_prompts
    from recare_cli.stages.erase import EraseOptions, prepare_prompts
    from recare_cli.stages.stereo import read_anchors

    doc = {"nudity": ["A nude figure in a field", "A nude form by a lake", "A nude figure in a barn"],
           "van gogh": ["Irises by Vincent van Gogh"]}
    opts = EraseOptions(target="nudity", output="-", method="stereo", anchors=str(_anchor_file(tmp_path, doc)),
                        iterations=iterations)
    anchors, digest = read_anchors(opts)
    assert anchors == doc["nudity"] and digest.startswith("sha256:")
    bundle = _bundle(tiny_sd_dir)
    prompts, schedule, erase_set = prepare_prompts(bundle, opts, None, {}, anchors)
    pipe = bundle.pipe
    assert torch.equal(prompts.anchors, encode_prompts(pipe.tokenizer, pipe.text_encoder, doc["nudity"],
                                                       device=bundle.device))
    assert prompts.retains is None and schedule.retain is None and erase_set == ["nudity"]
    ours = Counter(anchors[i] for i in schedule.anchor)
    np.random.seed(42)
    theirs = Counter(their_balanced(doc["nudity"], iterations))
    assert sorted(ours.values()) == sorted(theirs.values()) == sorted(
        [iterations // 3 + 1] * (iterations % 3) + [iterations // 3] * (3 - iterations % 3) if iterations >= 3
        else [1] * iterations)


def test_anchor_lookup_repeats_and_extra_prompts(tmp_path: Path) -> None:
    """An exact key first (theirs), else the key CLIP reads alike; a repeated prompt counts twice (their list is
    sampled by position); --anchor prompts follow the file's; the digest follows the prompts."""
    from recare_cli.stages.erase import EraseOptions
    from recare_cli.stages.stereo import read_anchors

    path = _anchor_file(tmp_path, {"van gogh": ["Irises", "Sunflowers", "Irises"], "Nudity": ["x"], "nudity": ["y"]})

    def read(target: str, *extra: str) -> tuple[list[str], str]:
        return read_anchors(EraseOptions(target=target, output="-", method="stereo", anchors=str(path),
                                         anchor=tuple(extra)))

    assert read("Van  Gogh")[0] == ["Irises", "Sunflowers", "Irises"]
    assert read("nudity")[0] == ["y"] and read("Nudity")[0] == ["x"]
    with pytest.raises(BadInputError, match="several keys name 'NUDITY'"):
        read("NUDITY")
    both, digest = read("van gogh", "Starry Night")
    assert both == ["Irises", "Sunflowers", "Irises", "Starry Night"] and digest != read("van gogh")[1]
    alone = read_anchors(EraseOptions(target="tench", output="-", method="stereo", anchor=("a tench",)))
    assert alone[0] == ["a tench"]


def _stereo_args(tiny_sd_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["erase", "--target", "nudity", "--method", "stereo", "--model", str(tiny_sd_dir), "--device", "cpu",
            "--resolution", "32", "--iterations", "2", "--ddim-steps", "4", "-o", str(out), *extra]


@pytest.mark.parametrize(("doc", "code", "message"), [
    ({"tench": ["A tench"], "van gogh": ["Irises"]}, 3, "no anchor prompts for 'nudity' (the file has 'tench', "
                                                        "'van gogh')"),
    ({"nudity": []}, 3, "no anchor prompts for 'nudity' (its list is empty)"),
    ({"nudity": "A nude figure"}, 3, "field 'nudity': expected a list of anchor prompts"),
    ({"nudity": ["A nude figure", 3]}, 3, "anchor prompt 2 for 'nudity' is not a non-empty string"),
    ("not json", 3, "not valid JSON"),
    (None, 2, "--method stereo needs anchor prompts: --anchors FILE"),
])
def test_bad_anchors_are_one_line(tiny_sd_dir: Path, tmp_path: Path, doc: Any, code: int, message: str) -> None:
    out = tmp_path / "s.safetensors"
    extra: list[str] = []
    if doc == "not json":
        (tmp_path / "anchors.json").write_text("{nudity: [")
        extra = ["--anchors", str(tmp_path / "anchors.json")]
    elif doc is not None:
        extra = ["--anchors", str(_anchor_file(tmp_path, doc))]
    res = invoke(_stereo_args(tiny_sd_dir, out, *extra))
    assert res.code == code, res.stderr
    assert message in res.stderr and res.stderr.count("\n") == 1
    assert not out.exists() and not Path(f"{out}.ckpt").exists()


@pytest.mark.parametrize("method", ["recare", "recare-noretain", "esd"])
def test_anchors_with_another_method_are_a_usage_error(tiny_sd_dir: Path, tmp_path: Path, method: str) -> None:
    out = tmp_path / "e.safetensors"
    res = invoke(["erase", "--target", "nudity", "--method", method, "--care", str(tmp_path / "care.json"),
                  "--anchor", "A nude figure", "--model", str(tiny_sd_dir), "-o", str(out)])
    assert res.code == 2 and "only --method stereo takes anchor prompts" in res.stderr
    assert res.stderr.count("\n") == 1 and not out.exists()


def test_stereo_options_are_recorded_in_stereo_files_only() -> None:
    """The files of the other methods keep their provenance bytes: no anchor option appears in them."""
    from recare_cli.stages.erase import ERASE_METHODS, EraseOptions
    from recare_cli.stages.options import recorded

    for method in ERASE_METHODS:
        keys = set(recorded(EraseOptions(target="t", output="o", method=method)))
        assert ({"anchors", "anchor"} <= keys) is (method == "stereo"), method


def test_stereo_ignores_the_careset_and_resume_gives_the_same_bytes(tiny_sd_dir: Path, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """--care is ignored with a warning; an interrupted run resumed gives the bytes of a straight one; a checkpoint
    made with other anchor prompts is refused; the output records the anchors and erases target + tokens."""
    from recare_cli.models.fingerprint import module_fingerprint
    from recare_cli.models.weights import save_embeddings
    from recare_cli.stages.erase import EraseOptions, run_erase

    anchors = _anchor_file(tmp_path, {"nudity": ["A nude figure in a field", "A nude form by a lake"]})
    adv = tmp_path / "adv.safetensors"
    save_embeddings(adv, {"<a0>": torch.randn(1, 32), "<a1>": torch.randn(1, 32)},
                    base_text_encoder=module_fingerprint(_bundle(tiny_sd_dir).pipe.text_encoder))
    out = tmp_path / "stereo.safetensors"

    def opts(resume: bool) -> EraseOptions:
        return EraseOptions(target="nudity", method="stereo", anchors=str(anchors), anchor=("A nude figure",),
                            adversarial=str(adv), care=str(tmp_path / "no-such-care.json"), iterations=4,
                            ddim_steps=5, resolution=32, device="cpu", model=str(tiny_sd_dir), output=str(out),
                            checkpoint_every=2, resume=resume)

    def other_anchors_are_refused(_: Path) -> None:
        saved = anchors.read_text()
        anchors.write_text(json.dumps({"nudity": ["A nude form by a lake"]}))
        with pytest.raises(BadInputError, match="checkpoint made with other settings"):
            run_erase(opts(True))
        anchors.write_text(saved)

    check_resume_gives_same_bytes(opts, stop_at=2, between=other_anchors_are_refused)
    assert "does not use the CARE-set; ignoring --care" in capsys.readouterr().err
    tensors, meta = _tensors(out)
    assert meta["method"] == "stereo" and json.loads(meta["erase_set"]) == ["nudity", "<a0>", "<a1>"]
    assert tensors and not any("attn2" in k for k in tensors)  # noxattn, their README's
    record = json.loads(meta["anchors"])
    assert record["prompts"] == 3 and record["given"] == 1 and record["sha256"].startswith("sha256:")
    params = json.loads(meta["provenance"])["params"]
    assert params["anchors"] == str(anchors) and params["anchor"] == ["A nude figure"]
    assert json.loads(meta["hyperparameters"])["lr"] == 2e-5  # their --reo_lr


def test_sample_applies_stereo_weights(tiny_sd_dir: Path, tmp_path: Path) -> None:
    weights = tmp_path / "stereo.safetensors"
    res = invoke(_stereo_args(tiny_sd_dir, weights, "--anchor", "a photo of a field", "--lr", "1e-2",
                              "--target", "a photo"))
    assert res.code == 0, res.stderr
    record, erased, base = sample_with_and_without(weights, tiny_sd_dir, tmp_path, "a photo")
    assert record["weights"][0]["fingerprint"].startswith("sha256:")
    assert erased.read_bytes() != base.read_bytes()


def test_recare_noretain_anchors_on_the_careset_without_retain(tiny_sd_dir: Path, tmp_path: Path) -> None:
    """ReCARE's erase without the retain loss (the demo's "ReCARE without retain" row, --with noretain): CARE-set
    anchors, no retain prompts."""
    from recare_cli.stages.erase import EraseOptions, prepare_prompts, read_care

    care_path = tmp_path / "care.json"
    care_path.write_text(json.dumps({"nudity_care_word": ["A person", "A man"],
                                     "nudity_care_word_photo": ["A photo of person", "A photo of man"]}))
    care, _ = read_care(str(care_path), "nudity")
    opts = EraseOptions(target="nudity", output="-", method="recare-noretain", care=str(care_path), iterations=4)
    assert opts.resolved().lr == 2e-5 and opts.resolved().train_method == "noxattn"
    prompts, schedule, _ = prepare_prompts(_bundle(tiny_sd_dir), opts, care, {})
    assert prompts.anchors is not None and prompts.anchors.shape[0] == 2 and sorted(schedule.anchor) == [0, 0, 1, 1]
    assert prompts.retains is None and schedule.retain is None
    res = invoke(["erase", "--target", "nudity", "--method", "recare-noretain", "--model", str(tiny_sd_dir),
                  "-o", str(tmp_path / "e.safetensors")])
    assert res.code == 2 and "--method recare-noretain needs --care" in res.stderr


# ---- search thoroughly enough: recare invert ---------------------------------------------------------------------

# Their values (train.py's defaults and its README's command for nudity) as recare invert's flags.
STEREO_SEARCH = ("--initializer person --property object --rounds 2 --erase-iterations 200 --erase-lr 5e-6 "
                 "--negative-guidance 2 --ddim-steps 50 --train-method noxattn --steps 3000 --lr 5e-3 --flip 0.5")
THEIR_VALUES = {
    "initializer": "person",  # --initializer_token person
    "property": "object",  # --learnable_property object
    "rounds": 2,  # --n_iterations 2 (README; argparse default 4)
    "erase_iterations": 200,  # --iterations
    "erase_lr": 5e-6,  # --ste_lr 0.5e-5
    "negative_guidance": 2.0,  # --negative_guidance
    "ddim_steps": 50,  # nsteps
    "train_method": "noxattn",  # README --train_method
    "steps": 3000,  # --ti_max_train_steps
    "lr": 5e-3,  # --ci_lr, × batch size 1 (scale_lr=True)
    "flip": 0.5,  # TextualInversionDataset flip_p
}


def test_stereo_search_flags_are_the_authors_values(tiny_sd_dir: Path, target_images: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/erase.md's command for STEREO's search parses to their values, which are also invert's defaults."""
    import recare_cli.stages.invert as stage

    command = f"recare invert IMAGES --target nudity {STEREO_SEARCH} -o adv.safetensors"
    assert command in " ".join((ROOT / "docs" / "erase.md").read_text().split())
    seen: list[Any] = []
    monkeypatch.setattr(stage, "run_invert",
                        lambda opts, paths: seen.append(opts) or {"tokens": [], "images": len(paths), "losses": {}})
    res = invoke(["invert", str(target_images), "--target", "nudity", *STEREO_SEARCH.split(), "--model",
                  str(tiny_sd_dir), "-o", str(tmp_path / "adv.safetensors")])
    assert res.code == 0, res.stderr
    (opts,) = seen
    assert {k: getattr(opts, k) for k in THEIR_VALUES} == THEIR_VALUES
    defaults = stage.InvertOptions(images="i", target="nudity", output="o")
    assert {k: getattr(defaults, k) for k in THEIR_VALUES} == THEIR_VALUES


def test_stereo_search_erase_steps_equal_train_erasing(tiny_sd_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two iterations of a round's erasure, as invert sets it up from their values, against train_erasing: the same
    target (normalized_guidance, a no-op projection at eta = 1), loss and AdamW update."""
    import recare_cli.core.diffusion as diffusion_module
    from recare_cli.core.diffusion import ErasePrompts, EraseSchedule, EraseTrainer
    from recare_cli.core.guidance import select_parameters
    from recare_cli.stages.invert import InvertOptions, round_erase_settings

    opts = InvertOptions(images="i", target="nudity", output="o")
    bundle = _bundle(tiny_sd_dir)
    unet = bundle.pipe.unet
    names = select_parameters(unet, opts.train_method)
    assert names == their_trained_names(unet, "noxattn")
    base, finetuned, optimizer = _finetuned(unet, names, opts.erase_lr)
    uncond, concept = _states(2, seed=7)
    trainer = EraseTrainer(unet, names, ErasePrompts(uncond=uncond, erase=concept), EraseSchedule(erase=[0, 0]),
                           round_erase_settings(opts, 16), bundle.pipe.scheduler.config,
                           torch.Generator().manual_seed(opts.seed))
    assert all(type(o) is torch.optim.AdamW and o.defaults["lr"] == 5e-6 for o in trainer.optimizers)
    scheduler = their_scheduler(bundle.pipe.scheduler.config)
    targets: list[torch.Tensor] = []
    real = diffusion_module.esd_recare_target
    monkeypatch.setattr(diffusion_module, "esd_recare_target", lambda *a: targets.append(real(*a)) or targets[-1])
    for i in range(2):
        k, noise = _replay(trainer)
        loss, target = their_ste_erase_iteration(base, finetuned, scheduler, optimizer, uncond=uncond,
                                                 concept=concept, k=k, noise=noise,
                                                 negative_guidance=opts.negative_guidance)
        _step_equals_theirs(trainer, i, k, targets, target, loss, finetuned, opts.erase_lr)


def test_stereo_search_inversion_step_equals_train_concept_inversion(tiny_sd_dir: Path, target_images: Path) -> None:
    """A round's first textual-inversion step, as invert sets it up from their values, against
    train_concept_inversion: their dataset's image (bicubic resize, flip, scaling) and template, the VAE sample,
    add_noise, ε-MSE, AdamW over the whole embedding table with every other row restored. Same loss, same
    gradient and update of the new vector. The initial row is recare's (the word's own token ``person</w>``);
    theirs is ``convert_tokens_to_ids('person')``, another row (docs/erase.md)."""
    from PIL import Image

    from recare_cli.core.diffusion import InversionTrainer, extend_tokenizer, latent_distributions, tokenize
    from recare_cli.stages.invert import (
        TEMPLATES,
        InvertOptions,
        initializer_vector,
        load_pixels,
        round_inversion_settings,
        round_slices,
    )

    opts = InvertOptions(images="i", target="nudity", output="o")
    bundle = _bundle(tiny_sd_dir)
    pipe = bundle.pipe
    paths = sorted(target_images.iterdir())
    pixels, used = load_pixels(paths, strict=False, resolution=32, source="images")
    first = round_slices(len(used), opts.rounds)[0]
    init = initializer_vector(pipe, opts.initializer)
    token = "<nudity-adv0>"
    tokenizer, first_id = extend_tokenizer(pipe.tokenizer, [token])
    templates = TEMPLATES[opts.property]
    ids = tokenize(tokenizer, [t.format(token) for t in templates])
    latents = latent_distributions(pipe.vae, pixels)[first.start:first.stop]
    trainer = InversionTrainer(pipe.unet, pipe.text_encoder, first_id, init[:0], init, latents, ids,
                               pipe.scheduler.config, round_inversion_settings(opts),
                               torch.Generator().manual_seed(opts.seed), flip_p=opts.flip)
    replay = torch.Generator().set_state(trainer.generator.get_state())
    index = int(torch.randint(0, len(first), (1,), generator=replay).item())
    flip = bool(torch.rand((1,), generator=replay).item() < opts.flip)
    template = int(torch.randint(0, len(templates), (1,), generator=replay).item())
    sample_noise = torch.randn((4, 16, 16), generator=replay)
    noise = torch.randn((4, 16, 16), generator=replay).unsqueeze(0)
    timesteps = torch.randint(0, 1000, (1,), generator=replay)
    loss = trainer.step()

    # theirs: a copy of the tokenizer and text encoder with the placeholder added and the table resized
    their_tokenizer = copy.deepcopy(pipe.tokenizer)
    placeholder = "token_1a2b3c4d"
    assert their_tokenizer.add_tokens([placeholder]) == 1
    their_id = their_tokenizer.convert_tokens_to_ids([placeholder])[0]
    assert their_tokenizer.convert_tokens_to_ids(["person"])[0] != pipe.tokenizer("person").input_ids[1]
    text_encoder = copy.deepcopy(pipe.text_encoder)
    for param in text_encoder.get_input_embeddings().parameters():  # their text_model.embeddings.token_embedding
        param.requires_grad = True
    text_encoder.resize_token_embeddings(len(their_tokenizer))
    with torch.no_grad():
        text_encoder.get_input_embeddings().weight.data[their_id] = init[0]
    org_token_embeds = text_encoder.get_input_embeddings().weight.data.clone()
    optimizer = torch.optim.AdamW(text_encoder.get_input_embeddings().parameters(), lr=5e-3 * 1)
    text_encoder.train()
    # their TextualInversionDataset item (no center crop, bicubic resize, flip, score-sde scaling)
    image = Image.open(paths[first.start + index]).convert("RGB")
    image = Image.fromarray(np.array(image).astype(np.uint8)).resize((32, 32), resample=Image.Resampling.BICUBIC)
    if flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    array = (np.array(image).astype(np.uint8) / 127.5 - 1.0).astype(np.float32)
    pixel_values = torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0)
    input_ids = their_tokenizer(templates[template].format(placeholder), padding="max_length", truncation=True,
                                max_length=their_tokenizer.model_max_length, return_tensors="pt").input_ids
    optimizer.zero_grad()
    with torch.no_grad():
        dist = pipe.vae.encode(pixel_values).latent_dist
        latent = (dist.mean + dist.std * sample_noise) * 0.18215  # DiagonalGaussianDistribution.sample, our draw
    noisy_latents = their_scheduler(pipe.scheduler.config).add_noise(latent, noise, timesteps)
    encoder_hidden_states = text_encoder(input_ids).last_hidden_state
    model_pred = pipe.unet(noisy_latents, timesteps, encoder_hidden_states)["sample"]
    their_loss = F.mse_loss(model_pred.float(), noise.float(), reduction="mean")
    their_loss.backward()
    grad = text_encoder.get_input_embeddings().weight.grad[their_id].clone()
    optimizer.step()
    index_no_updates = torch.ones(len(their_tokenizer), dtype=torch.bool)
    index_no_updates[their_id] = False
    with torch.no_grad():
        weight = text_encoder.get_input_embeddings().weight
        weight.data[index_no_updates] = org_token_embeds[index_no_updates]

    assert loss == pytest.approx(float(their_loss.detach()), rel=1e-4)
    assert trainer.param.grad is not None
    torch.testing.assert_close(trainer.param.grad[0], grad, rtol=1e-3, atol=1e-7)
    torch.testing.assert_close(trainer.vector()[0], weight[their_id].detach(), rtol=0, atol=0.02 * opts.lr)
    assert not torch.equal(trainer.vector()[0], init[0])
