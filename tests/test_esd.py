"""Published ESD (``recare erase --method esd``) against a naive transcription of the authors' esd_sd.py
(rohitgandikota/erasing) on the tiny model: target, loss and Adam step, parameter selection, defaults,
--erase-from, resume, and the output applied by ``recare sample``."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open

from tests.helpers import check_resume_gives_same_bytes, invoke, sample_with_and_without

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STEPS = 10  # sampler steps of the tiny runs (esd_sd.py: 50)


def _bundle(tiny_sd_dir: Path) -> Any:
    from recare_cli.models.sd import load_sd

    return load_sd(str(tiny_sd_dir), device="cpu", dtype="fp32")


def _tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}, dict(fh.metadata())  # noqa: SIM118


# ---- a naive transcription of esd_sd.py ------------------------------------------------------------------------


def authors_parameters(unet: torch.nn.Module, train_method: str) -> list[str]:
    """get_esd_trainable_parameters: modules picked by class name, then by a filter on the module name."""
    names = []
    for name, module in unet.named_modules():
        if module.__class__.__name__ in ["Linear", "Conv2d", "LoRACompatibleLinear", "LoRACompatibleConv"]:
            if train_method == "esd-x" and "attn2" in name:
                names += [name + "." + n for n, _ in module.named_parameters()]
            if train_method == "esd-u" and ("attn2" not in name):
                names += [name + "." + n for n, _ in module.named_parameters()]
            if train_method == "esd-all":
                names += [name + "." + n for n, _ in module.named_parameters()]
            if train_method == "esd-x-strict" and ("attn2.to_k" in name or "attn2.to_v" in name):
                names += [name + "." + n for n, _ in module.named_parameters()]
    return names


def authors_iteration(base_unet: Any, esd_unet: Any, scheduler: Any, optimizer: torch.optim.Optimizer, *,
                      erase: torch.Tensor, null: torch.Tensor, erase_from: torch.Tensor | None, run_till: int,
                      noise: torch.Tensor, negative_guidance: float = 2.0, guidance_scale: float = 3.0,
                      sample_with: Any = None) -> tuple[float, torch.Tensor]:
    """One iteration of esd_sd.py's loop, call by call: the pipeline (its own scheduler, classifier-free
    guidance, the frozen base UNet) run until ``run_till``, separate teacher calls, the ESD model's call on the
    mapped-from prompt, MSELoss, Adam. ``sample_with`` replaces the UNet x_t is drawn with (to show the test
    tells them apart). Returns (loss, target)."""
    optimizer.zero_grad()
    scheduler.set_timesteps(STEPS)  # the pipeline's retrieve_timesteps
    prompt = erase if erase_from is None else erase_from
    embeds = torch.cat([null, prompt])  # encode_prompt with classifier-free guidance: [negative, prompt]
    latents = noise * scheduler.init_noise_sigma
    sampler_unet = sample_with or base_unet
    with torch.no_grad():
        for t in scheduler.timesteps[0:run_till]:
            model_in = scheduler.scale_model_input(torch.cat([latents] * 2), t)
            noise_pred = sampler_unet(model_in, t, encoder_hidden_states=embeds).sample
            uncond, text = noise_pred.chunk(2)
            latents = scheduler.step(uncond + guidance_scale * (text - uncond), t, latents).prev_sample
        xt = latents
        t = scheduler.timesteps[run_till]
        noise_pred_erase = base_unet(xt, t, encoder_hidden_states=erase).sample
        noise_pred_null = base_unet(xt, t, encoder_hidden_states=null).sample
        noise_pred_from = (noise_pred_erase if erase_from is None
                           else base_unet(xt, t, encoder_hidden_states=erase_from).sample)
    pred = esd_unet(xt, t, encoder_hidden_states=prompt).sample
    target = noise_pred_from - negative_guidance * (noise_pred_erase - noise_pred_null)
    loss = torch.nn.MSELoss()(pred, target)
    loss.backward()
    optimizer.step()
    return float(loss.detach()), target


def _esd_trainer(bundle: Any, *, lr: float, iterations: int, erase_from: bool) -> tuple[Any, Any]:
    """The engine for --method esd. The tiny model's random CLIP maps every prompt to nearly the same states
    (targets would differ from ε*_∅ by almost nothing), so the text states are well-separated synthetic ones:
    the property under test is the engine's, not CLIP's."""
    from recare_cli.core.diffusion import ErasePrompts, EraseSchedule, EraseTrainer
    from recare_cli.core.guidance import select_parameters
    from recare_cli.stages.erase import EraseOptions, erase_settings

    opts = EraseOptions(target="cowboy hat", output="-", method="esd", iterations=iterations, lr=lr,
                        ddim_steps=STEPS, erase_from="cowboy" if erase_from else None)
    g = torch.Generator().manual_seed(5)
    null, erase, mapped = (3 * torch.randn(1, 77, 32, generator=g) for _ in range(3))
    prompts = ErasePrompts(uncond=null, erase=erase, erase_from=mapped if erase_from else None)
    schedule = EraseSchedule(erase=[0] * iterations)
    unet = bundle.pipe.unet
    trainer = EraseTrainer(unet, select_parameters(unet, "esd-x"), prompts, schedule, erase_settings(opts, 16),
                           bundle.pipe.scheduler.config, torch.Generator().manual_seed(0))
    return trainer, prompts


@pytest.mark.parametrize("erase_from", [False, True])
def test_steps_equal_the_authors_loop(tiny_sd_dir: Path, erase_from: bool,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Three iterations: the engine's draws (k, noise) replayed into the authors' loop give the same target,
    loss and Adam-updated weights. After the first update x_t drawn with the trained model instead of the frozen
    base would give another loss: the comparison tells the two apart."""
    import recare_cli.core.diffusion as diffusion

    bundle = _bundle(tiny_sd_dir)
    lr = 1e-3  # large enough that the trained model moves visibly in three steps
    base = copy.deepcopy(bundle.pipe.unet).requires_grad_(False)
    esd = copy.deepcopy(bundle.pipe.unet).requires_grad_(False)
    esd_params = dict(esd.named_parameters())
    naive_names = authors_parameters(esd, "esd-x")
    for n in naive_names:
        esd_params[n].requires_grad_(True)
    naive_opt = torch.optim.Adam([esd_params[n] for n in naive_names], lr=lr)
    trainer, prompts = _esd_trainer(bundle, lr=lr, iterations=3, erase_from=erase_from)
    assert trainer.names == naive_names
    assert all(type(o) is torch.optim.Adam and o.defaults["weight_decay"] == 0 for o in trainer.optimizers)
    scheduler = bundle.pipe.scheduler  # the pipeline's own object, as esd_sd.py samples with it

    targets: list[torch.Tensor] = []
    real_target = diffusion.esd_target
    monkeypatch.setattr(diffusion, "esd_target", lambda *a: targets.append(real_target(*a)) or targets[-1])
    ks, gaps = [], []
    for i in range(3):
        replay = torch.Generator().set_state(trainer.generator.get_state())
        k = int(torch.randint(0, STEPS, (1,), generator=replay).item())
        noise = torch.randn((1, 4, 16, 16), generator=replay)
        if i > 0:  # the same iteration with x_t from the model being trained (the older ESD code's choice)
            other = authors_iteration(base, copy.deepcopy(esd), scheduler, torch.optim.Adam([torch.zeros(1)]),
                                      erase=prompts.erase, null=prompts.uncond, erase_from=prompts.erase_from,
                                      run_till=k, noise=noise, sample_with=esd)[0]
        loss, target = authors_iteration(base, esd, scheduler, naive_opt, erase=prompts.erase, null=prompts.uncond,
                                         erase_from=prompts.erase_from, run_till=k, noise=noise)
        out = trainer.step(i)
        ks.append(int(out["k"]))
        assert out["k"] == k
        torch.testing.assert_close(targets[-1], target, rtol=1e-4, atol=1e-5)
        assert out["loss"] == pytest.approx(loss, rel=1e-5)
        # Adam's first steps move each weight by about ±lr: a wrong rate, gradient or sign is off by ~lr, while
        # batched-vs-separate summation noise, amplified where a gradient is near 0, stays far below it
        for name, param in zip(trainer.names, trainer.params, strict=True):
            torch.testing.assert_close(param.detach(), esd_params[name].detach(), rtol=0, atol=0.02 * lr)
        if i > 0 and k > 0:
            gaps.append(abs(other - loss) / loss)
    assert any(k >= 2 for k in ks)  # the sampler's multistep path ran
    assert gaps and max(gaps) > 1e-3  # x_t from the trained model would have given another loss


@pytest.mark.parametrize(("esd_name", "recare_name"),
                         [("esd-x", "xattn"), ("esd-u", "noxattn"), ("esd-all", "full"), ("esd-x-strict", "xattn-kv")])
def test_esd_train_methods_select_the_authors_parameters(tiny_sd_dir: Path, esd_name: str, recare_name: str) -> None:
    from diffusers import UNet2DConditionModel

    from recare_cli.core.guidance import select_parameters

    unet = UNet2DConditionModel.from_pretrained(tiny_sd_dir / "unet")
    naive = authors_parameters(unet, esd_name)
    assert naive and select_parameters(unet, esd_name) == naive
    assert select_parameters(unet, recare_name) == naive


def test_strict_selection_is_keys_and_values_only(tiny_sd_dir: Path) -> None:
    from diffusers import UNet2DConditionModel

    from recare_cli.core.guidance import select_parameters

    unet = UNet2DConditionModel.from_pretrained(tiny_sd_dir / "unet")
    strict, xattn = set(select_parameters(unet, "esd-x-strict")), set(select_parameters(unet, "esd-x"))
    assert strict < xattn
    assert {n.rsplit(".", 2)[-2] for n in strict} == {"to_k", "to_v"}


# ---- options: per-method defaults, --erase-from ------------------------------------------------------------------


def test_options_left_unset_take_the_methods_defaults() -> None:
    from recare_cli.stages.erase import EraseOptions

    def resolved(**kw: Any) -> tuple[Any, Any]:
        opts = EraseOptions(target="x", output="-", **kw).resolved()
        return opts.lr, opts.train_method

    assert resolved(method="esd") == (5e-5, "esd-x")  # esd_sd.py --lr; its README's SD v1.4 example (xattn)
    assert resolved(method="recare") == (2e-5, "noxattn")
    assert resolved(method="esd-recare") == (5e-6, "noxattn")  # the ReCARE reference's stage-1 rate
    assert resolved(method="esd", lr=1e-4, train_method="esd-u") == (1e-4, "esd-u")  # given values stay


def test_cli_esd_records_the_resolved_defaults(tiny_sd_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "esd.safetensors"
    res = invoke(["erase", "--target", "nudity", "--method", "esd", "--model", str(tiny_sd_dir), "--device", "cpu",
                  "--resolution", "32", "--iterations", "1", "--ddim-steps", "4", "-o", str(out)])
    assert res.code == 0, res.stderr
    tensors, meta = _tensors(out)
    hyper, params = json.loads(meta["hyperparameters"]), json.loads(meta["provenance"])["params"]
    assert (hyper["lr"], hyper["train_method"]) == (5e-5, "esd-x") == (params["lr"], params["train_method"])
    assert meta["method"] == "esd" and meta["train_method"] == "esd-x"
    assert tensors and all("attn2" in k for k in tensors)
    assert "erase_from" not in params and "erase_from" not in hyper  # recorded only when given


@pytest.mark.parametrize(("extra", "message"), [
    (["--method", "esd", "--erase-from", "nudity"], "--erase-from 'nudity' is the target itself"),
    (["--method", "esd", "--erase-from", " Nudity "], "is the target itself"),  # CLIP reads it alike
    (["--method", "recare", "--care", "care.json", "--erase-from", "person"],
     "--erase-from: only --method esd erases a concept from another (got --method recare)"),
])
def test_erase_from_refusals_are_usage_errors(tiny_sd_dir: Path, tmp_path: Path, extra: list[str],
                                              message: str) -> None:
    out = tmp_path / "e.safetensors"
    res = invoke(["erase", "--target", "nudity", "--model", str(tiny_sd_dir), "--device", "cpu", "-o", str(out),
                  *extra])
    assert res.code == 2 and message in res.stderr and res.stderr.count("\n") == 1
    assert not out.exists()


def test_stratified_draws_cover_the_published_steps(tiny_sd_dir: Path) -> None:
    """--timesteps stratified with esd spreads over esd_sd.py's k ∈ [0, steps − 1], not the DDIM path's
    [1, steps − 2]."""
    from recare_cli.stages.erase import EraseOptions, prepare_prompts

    opts = EraseOptions(target="nudity", output="-", method="esd", iterations=8, ddim_steps=4, timesteps="stratified")
    _, schedule, _ = prepare_prompts(_bundle(tiny_sd_dir), opts, None, {})
    assert sorted(schedule.steps) == [0, 0, 1, 1, 2, 2, 3, 3]


# ---- resume, output in use --------------------------------------------------------------------------------------


def test_esd_resume_gives_the_same_bytes(tiny_sd_dir: Path, tmp_path: Path) -> None:
    from recare_cli.stages.erase import EraseOptions

    def opts(resume: bool) -> EraseOptions:
        return EraseOptions(target="cowboy hat", erase_from="cowboy", method="esd", iterations=4, ddim_steps=5,
                            resolution=32, device="cpu", model=str(tiny_sd_dir), output=str(out), checkpoint_every=2,
                            resume=resume)

    out = tmp_path / "esd.safetensors"
    check_resume_gives_same_bytes(opts, stop_at=2)
    _, meta = _tensors(out)
    assert json.loads(meta["hyperparameters"])["erase_from"] == "cowboy"
    assert json.loads(meta["provenance"])["params"]["erase_from"] == "cowboy"


def test_sample_applies_esd_weights(tiny_sd_dir: Path, tmp_path: Path) -> None:
    weights = tmp_path / "esd.safetensors"
    res = invoke(["erase", "--target", "a photo", "--method", "esd", "--model", str(tiny_sd_dir), "--device", "cpu",
                  "--resolution", "32", "--iterations", "2", "--ddim-steps", "4", "--lr", "1e-2", "-o", str(weights)])
    assert res.code == 0, res.stderr
    record, erased, base = sample_with_and_without(weights, tiny_sd_dir, tmp_path, "a photo")
    assert record["weights"][0]["fingerprint"].startswith("sha256:")
    assert erased.read_bytes() != base.read_bytes()


def test_demo_runs_published_esd_and_keeps_the_old_objective_as_an_ablation(tmp_path: Path) -> None:
    """The demo's ESD row is published ESD on the target alone (no CARE-set, no tokens), at the rule's recipe; the
    objective without ReCARE's retain loss stays reachable as its "ReCARE without retain" row."""
    from recare_cli.demo.settings import DemoSettings
    from recare_cli.demo.steps import erase_options
    from recare_cli.stages.erase import METHOD_DEFAULTS
    from recare_cli.toyworld.tasks import TASKS

    task, s = TASKS["nudity"], DemoSettings()
    care, adv = tmp_path / "care.json", tmp_path / "adv.safetensors"
    esd = erase_options(tmp_path, task, "esd", care, adv, "sd", s, 42)
    assert esd.method == "esd" and esd.care is None and esd.adversarial is None
    assert esd.train_method == METHOD_DEFAULTS["esd"]["train_method"] == "esd-x"
    assert esd.lr == pytest.approx(METHOD_DEFAULTS["esd"]["lr"] * task.erase_lr / METHOD_DEFAULTS["recare"]["lr"])
    noretain = erase_options(tmp_path, task, "noretain", care, adv, "sd", s, 42)
    assert noretain.method == "recare-noretain" and noretain.care == str(care) and noretain.adversarial == str(adv)
