"""recare erase on the tiny model: what trains, where predictions move, resume, outputs, bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open

from recare_cli.errors import InterruptedRunError
from tests.helpers import invoke

RES = "32"  # tiny VAE downsamples by 2: 16×16 latents


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def care_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("care") / "care.json"
    path.write_text(json.dumps({"nudity_care_word": ["A person", "A man", "A woman"],
                                "nudity_care_word_photo": ["A photo of person", "A photo of man",
                                                           "A photo of woman"]}))
    return path


def _bundle(tiny_sd_dir: Path) -> Any:
    from recare_cli.models.sd import load_sd

    return load_sd(str(tiny_sd_dir), device="cpu", dtype="fp32")


def _trainer(bundle: Any, train_method: str, *, method: str = "recare", lr: float = 1e-3,
             retain_weight: float = 1.0, iterations: int = 4, lr_schedule: str = "constant",
             xt_batch: int = 1) -> Any:
    from recare_cli.core.diffusion import ErasePrompts, EraseSchedule, EraseTrainer, encode_prompts
    from recare_cli.core.guidance import select_parameters
    from recare_cli.stages.erase import EraseOptions, erase_settings

    pipe = bundle.pipe

    def enc(p: list[str]) -> torch.Tensor:
        return encode_prompts(pipe.tokenizer, pipe.text_encoder, p, device=bundle.device)

    prompts = ErasePrompts(uncond=enc([""]), erase=enc(["nudity"]), anchors=enc(["A person"]),
                           retains=enc(["A photo of person"]))
    schedule = EraseSchedule(erase=[0] * iterations, anchor=[0] * iterations, retain=[0] * iterations)
    settings = erase_settings(EraseOptions(target="nudity", output="-", method=method, iterations=iterations, lr=lr,
                                           retain_weight=retain_weight, ddim_steps=8, lr_schedule=lr_schedule,
                                           xt_batch=xt_batch), latent_size=16)
    names = select_parameters(pipe.unet, train_method)
    return EraseTrainer(pipe.unet, names, prompts, schedule, settings, pipe.scheduler.config,
                        torch.Generator().manual_seed(0))


@pytest.mark.parametrize("train_method", ["noxattn", "xattn"])
def test_only_selected_parameters_change(tiny_sd_dir: Path, train_method: str) -> None:
    bundle = _bundle(tiny_sd_dir)
    unet = bundle.pipe.unet
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    text_before = {k: v.clone() for k, v in bundle.pipe.text_encoder.state_dict().items()}
    trainer = _trainer(bundle, train_method, iterations=1)
    trainer.step(0)
    changed = {k for k, v in unet.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == set(trainer.names)
    assert all(torch.equal(v, text_before[k]) for k, v in bundle.pipe.text_encoder.state_dict().items())


def test_prediction_moves_to_erase_target_and_retain_stays(tiny_sd_dir: Path) -> None:
    """On held-out (x, t): the erase concept's prediction approaches the compositional target; the retain
    prompt's prediction stays near the teacher, nearer than without the retain loss.

    The tiny model's random CLIP maps every prompt to nearly the same states, so the conditions here are
    well-separated synthetic text states: the property under test is the engine's, not CLIP's."""
    from recare_cli.core.diffusion import ErasePrompts, EraseSchedule, EraseTrainer, unet_eps
    from recare_cli.core.guidance import select_parameters
    from recare_cli.stages.erase import EraseOptions, erase_settings

    g = torch.Generator().manual_seed(0)
    embs = [3 * torch.randn(1, 77, 32, generator=g) for _ in range(4)]  # ∅, erase, anchor, retain
    xs = torch.randn(3, 1, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    ts = (200, 500, 800)

    def predict(unet: Any) -> torch.Tensor:
        with torch.no_grad():
            return torch.stack([unet_eps(unet, x, t, torch.cat(embs)) for x, t in zip(xs, ts, strict=True)])

    def mse(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(((a - b) ** 2).mean())

    n = 12
    results = {}
    for retain_weight in (1.0, 0.0):
        unet = _bundle(tiny_sd_dir).pipe.unet
        trainer = EraseTrainer(unet, select_parameters(unet, "noxattn"),
                               ErasePrompts(uncond=embs[0], erase=embs[1], anchors=embs[2], retains=embs[3]),
                               EraseSchedule([0] * n, [0] * n, [0] * n),
                               erase_settings(EraseOptions(target="nudity", output="-", iterations=n, lr=1e-4,
                                                           retain_weight=retain_weight, ddim_steps=8), 16),
                               _bundle(tiny_sd_dir).pipe.scheduler.config, torch.Generator().manual_seed(0))
        teacher = predict(unet)
        u, e, a = teacher[:, 0], teacher[:, 1], teacher[:, 2]
        target = u + (a - u) - 3 * (e - u)  # s = 2
        for i in range(n):
            trainer.step(i)
        student = predict(unet)
        results[retain_weight] = (mse(e, target), mse(student[:, 1], target), mse(student[:, 3], teacher[:, 3]))
    before, after, drift = results[1.0]
    assert after < 0.93 * before  # moved toward the erase target
    assert drift < 0.5 * (before - after)  # the retained prompt moved far less
    assert drift < results[0.0][2]  # and less than without the retain loss


def test_timestep_draws(tiny_sd_dir: Path) -> None:
    """Uniform: each iteration's depth k is the reference's torch.randint(1, ddim_steps - 1) from the run's
    generator, then x_t's noise (a naive replay of the generator); stratified: the schedule's k, in order."""
    bundle = _bundle(tiny_sd_dir)
    trainer = _trainer(bundle, "xattn", iterations=4)
    replay = torch.Generator().manual_seed(0)
    expected = []
    for _ in range(4):
        expected.append(int(torch.randint(1, 8 - 1, (1,), generator=replay).item()))
        torch.randn((1, 4, 16, 16), generator=replay)
    assert [trainer.step(i)["k"] for i in range(4)] == expected

    # stratified: the schedule's depths are the ones the sampler runs (a spy on the DDIM sampler)
    import recare_cli.core.diffusion as diffusion

    stratified = _trainer(_bundle(tiny_sd_dir), "xattn", iterations=4)
    stratified.schedule.steps = [6, 1, 3, 6]
    ran: list[int] = []
    original = diffusion.sample_partial

    def spy(*args: Any, **kwargs: Any) -> Any:
        ran.append(kwargs["steps"])
        return original(*args, **kwargs)

    diffusion.sample_partial = spy  # type: ignore[assignment]
    try:
        for i in range(4):
            stratified.step(i)
    finally:
        diffusion.sample_partial = original  # type: ignore[assignment]
    assert ran == [6, 1, 3, 6]


def test_uniform_depths_are_the_references_choices(tiny_sd_dir: Path) -> None:
    """The engine's own draw (not torch's) over many iterations gives every depth the reference's
    torch.randint(1, ddim_steps - 1) can give, 1 … ddim_steps − 2, and no other (ddim_steps 8 here)."""
    trainer = _trainer(_bundle(tiny_sd_dir), "xattn", iterations=1)
    drawn = {trainer._draw(0)[0] for _ in range(600)}
    assert drawn == {1, 2, 3, 4, 5, 6}


def test_each_sample_pairs_every_condition_with_every_sample(tiny_sd_dir: Path) -> None:
    """The batched call's [m, b] is the one-sample, one-condition prediction (naive double loop)."""
    from recare_cli.core.diffusion import each_sample, unet_eps

    unet = _bundle(tiny_sd_dir).pipe.unet
    g = torch.Generator().manual_seed(3)
    x, emb = torch.randn(2, 4, 16, 16, generator=g), torch.randn(3, 77, 32, generator=g)
    with torch.no_grad():
        batched = each_sample(unet, x, 400, emb)
        naive = torch.stack([torch.stack([unet_eps(unet, x[b:b + 1], 400, emb[m:m + 1])[0] for b in range(2)])
                             for m in range(3)])
    assert batched.shape == (3, 2, 4, 16, 16)
    assert torch.allclose(batched, naive, atol=1e-5)


@pytest.mark.parametrize("method", ["recare", "esd-recare"])
def test_xt_batch_loss_is_the_mean_of_one_sample_losses(tiny_sd_dir: Path, method: str) -> None:
    """With --xt-batch 2 an iteration draws k, then two noises, and its loss is the mean of the two
    one-sample losses, each computed naively: its own DDIM trajectory, teacher and student at batch 1."""
    from recare_cli.core.diffusion import sample_partial, unet_eps
    from recare_cli.core.guidance import compositional_target, esd_recare_target, training_timestep_index

    trainer = _trainer(_bundle(tiny_sd_dir), "xattn", method=method, xt_batch=2, lr=0.0)
    p, s = trainer.prompts, trainer.settings
    replay = torch.Generator().set_state(trainer.generator.get_state())
    k = int(torch.randint(1, 8 - 1, (1,), generator=replay).item())
    z = torch.randn((2, 4, 16, 16), generator=replay) * trainer.sampler.init_noise_sigma
    t = trainer.train_timesteps[training_timestep_index(k, 8, len(trainer.train_timesteps))]
    losses = []
    with torch.no_grad():
        for b in range(2):
            x_t = sample_partial(trainer.unet, trainer.sampler, z[b:b + 1], p.erase, p.uncond, steps=k,
                                 guidance=s.sample_guidance)

            def teacher(emb: torch.Tensor, x_t: torch.Tensor = x_t) -> torch.Tensor:
                return unet_eps(trainer.unet, x_t, t, emb, params=trainer.teacher)

            u, e = teacher(p.uncond), teacher(p.erase)
            if method == "esd-recare":
                loss = ((unet_eps(trainer.unet, x_t, t, p.erase) - esd_recare_target(e, u, s.guidance)) ** 2).mean()
            else:
                target = compositional_target(u, e.unsqueeze(0), teacher(p.anchors), s.guidance)
                loss = ((unet_eps(trainer.unet, x_t, t, p.erase) - target) ** 2).mean() \
                    + ((unet_eps(trainer.unet, x_t, t, p.retains) - teacher(p.retains)) ** 2).mean()
            losses.append(float(loss))
    out = trainer.step(0)
    assert out["k"] == k
    assert out["loss"] == pytest.approx(sum(losses) / 2, rel=1e-4)
    # not the loss of either sample alone: the pairing of targets and samples matters
    assert all(out["loss"] != pytest.approx(one, rel=1e-3) for one in losses)


@pytest.mark.parametrize("schedule", ["constant", "linear"])
def test_lr_schedule_sets_each_step_rate(tiny_sd_dir: Path, schedule: str) -> None:
    """Iteration i moves a trained tensor by AdamW's update at lr × factor(i) (naive AdamW formula on the
    optimizer's moments after the step)."""
    trainer = _trainer(_bundle(tiny_sd_dir), "xattn", iterations=4, lr_schedule=schedule)
    param, group = trainer.params[0], trainer.optimizers[0].param_groups[0]
    beta1, beta2 = group["betas"]
    for i in range(3):
        before = param.detach().clone()
        trainer.step(i)
        lr = 1e-3 * (1.0 if schedule == "constant" else 1.0 - i / 4)
        state = trainer._optimizer_state(0)
        t = int(state["step"])
        m_hat, v_hat = state["exp_avg"] / (1 - beta1 ** t), state["exp_avg_sq"] / (1 - beta2 ** t)
        update = m_hat / (v_hat.sqrt() + group["eps"])
        naive = before * (1 - lr * group["weight_decay"]) - lr * update
        assert group["lr"] == pytest.approx(lr)
        assert torch.allclose(param.detach(), naive, atol=1e-7), i
        # the rate matters: the update at the constant rate would differ from the decayed one
        if schedule == "linear" and i > 0:
            assert not torch.allclose(param.detach(), before * (1 - 1e-3 * group["weight_decay"]) - 1e-3 * update,
                                      atol=1e-7)


def test_teacher_is_the_original_model(tiny_sd_dir: Path) -> None:
    """The teacher forward (original values swapped in) equals a forward of the untouched UNet."""
    from recare_cli.core.diffusion import unet_eps

    bundle = _bundle(tiny_sd_dir)
    trainer = _trainer(bundle, "noxattn")
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        original = unet_eps(trainer.unet, x, 300, trainer.prompts.erase)
    trainer.step(0)
    trainer.step(1)
    with torch.no_grad():
        via_teacher = unet_eps(trainer.unet, x, 300, trainer.prompts.erase, params=trainer.teacher)
        student = unet_eps(trainer.unet, x, 300, trainer.prompts.erase)
    assert torch.equal(via_teacher, original)
    assert not torch.equal(student, original)


def _erase_args(tiny_sd_dir: Path, care: Path, out: Path, *extra: str) -> list[str]:
    return ["erase", "--target", "nudity", "--care", str(care), "--model", str(tiny_sd_dir), "--device", "cpu",
            "--resolution", RES, "--iterations", "3", "-o", str(out), *extra]


def _tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}, dict(fh.metadata())  # noqa: SIM118


def test_cli_erase_outputs_load_in_plain_diffusers(tiny_sd_dir: Path, care_file: Path, tmp_path: Path) -> None:
    from diffusers import StableDiffusionPipeline

    from recare_cli.errors import BadInputError
    from recare_cli.models.fingerprint import module_fingerprint
    from recare_cli.models.weights import apply_unet_weights, decode_metadata

    out = tmp_path / "erased.safetensors"
    folder = tmp_path / "erased-pipe"
    res = invoke(_erase_args(tiny_sd_dir, care_file, out, "--save-pipeline", str(folder), "-q"))
    assert res.code == 0, res.stderr
    assert res.stdout == b"" and res.stderr == ""
    tensors, meta = _tensors(out)
    info = decode_metadata(meta)
    base = StableDiffusionPipeline.from_pretrained(tiny_sd_dir)
    assert info["format"] == "recare.unet-weights" and info["values"] == "new"
    assert info["base_unet"] == module_fingerprint(base.unet)
    assert info["method"] == "recare" and info["train_method"] == "noxattn"
    assert info["hyperparameters"]["iterations"] == 3 and info["hyperparameters"]["guidance"] == 2.0
    assert info["careset_sha256"].startswith("sha256:") and info["seed"] == 42
    assert info["provenance"]["command"] == "erase" and "torch" in info["provenance"]["versions"]
    assert not any("attn2" in k for k in tensors)
    assert not (tmp_path / "erased.safetensors.ckpt").exists()  # removed after success

    # plain diffusers: load_state_dict of the new values
    plain = StableDiffusionPipeline.from_pretrained(tiny_sd_dir)
    plain.unet.load_state_dict(tensors, strict=False)
    # the Python helper gives the same UNet, and the saved folder holds it too
    helped = StableDiffusionPipeline.from_pretrained(tiny_sd_dir)
    apply_unet_weights(helped, out)
    saved = StableDiffusionPipeline.from_pretrained(folder)
    for name, value in tensors.items():
        assert torch.equal(plain.unet.state_dict()[name], value)
        assert torch.equal(helped.unet.state_dict()[name], value)
        assert torch.equal(saved.unet.state_dict()[name], value)
    assert "<nudity-adv0>" not in saved.tokenizer.get_vocab()
    # weights made for another base model are refused
    with pytest.raises(BadInputError, match="made for base UNet"):
        apply_unet_weights(helped, out)  # helped's UNet is no longer the base


def test_resume_gives_the_same_weights(tiny_sd_dir: Path, care_file: Path, tmp_path: Path) -> None:
    from recare_cli.stages.erase import EraseOptions, run_erase

    def opts(out: Path, resume: bool) -> EraseOptions:
        return EraseOptions(target="nudity", care=str(care_file), iterations=5, resolution=32, device="cpu",
                            model=str(tiny_sd_dir), output=str(out), checkpoint_every=2, resume=resume)

    # the same output path both times (provenance records it): the straight run's bytes, then the file removed
    resumed = tmp_path / "erased.safetensors"
    run_erase(opts(resumed, False))
    straight = resumed.read_bytes()
    resumed.unlink()

    def interrupt(i: int, _: dict[str, float]) -> None:
        if i == 3:
            raise KeyboardInterrupt

    with pytest.raises(InterruptedRunError, match=r"checkpoint .*erased.safetensors.ckpt was kept.*--resume"):
        run_erase(opts(resumed, False), on_step=interrupt)
    ckpt = Path(f"{resumed}.ckpt")
    assert ckpt.exists() and not resumed.exists()  # the checkpoint after iteration 2 of 5
    # without --resume an existing checkpoint is never overwritten
    res = invoke(_erase_args(tiny_sd_dir, care_file, resumed, "--iterations", "5", "--checkpoint-every", "2"))
    assert res.code == 5 and "--resume" in res.stderr
    run_erase(opts(resumed, True))
    assert resumed.read_bytes() == straight
    assert not ckpt.exists()


def test_checkpoint_with_other_settings_is_refused(tiny_sd_dir: Path, care_file: Path, tmp_path: Path) -> None:
    from recare_cli.stages.erase import EraseOptions, run_erase

    out = tmp_path / "e.safetensors"

    def stop(i: int, _: dict[str, float]) -> None:
        if i == 1:
            raise KeyboardInterrupt

    with pytest.raises(InterruptedRunError):
        run_erase(EraseOptions(target="nudity", care=str(care_file), iterations=3, resolution=32, device="cpu",
                               model=str(tiny_sd_dir), output=str(out), checkpoint_every=1), on_step=stop)
    res = invoke(_erase_args(tiny_sd_dir, care_file, out, "--checkpoint-every", "1", "--lr", "1e-4", "--resume"))
    assert res.code == 3 and "other settings" in res.stderr and not out.exists()


@pytest.mark.parametrize(("option", "value", "key", "recorded"),
                         [("--timesteps", "stratified", "timesteps", "stratified"), ("--xt-batch", "3", "xt_batch", 3)])
def test_erase_option_through_the_cli_is_recorded(tiny_sd_dir: Path, care_file: Path, tmp_path: Path, option: str,
                                                  value: str, key: str, recorded: Any) -> None:
    out = tmp_path / "e.safetensors"
    res = invoke(_erase_args(tiny_sd_dir, care_file, out, "--iterations", "2", option, value,
                             "--train-method", "xattn"))
    assert res.code == 0, res.stderr
    _, meta = _tensors(out)
    assert json.loads(meta["hyperparameters"])[key] == recorded


def test_xt_batch_below_one_is_a_usage_error(tiny_sd_dir: Path, care_file: Path, tmp_path: Path) -> None:
    bad = invoke(_erase_args(tiny_sd_dir, care_file, tmp_path / "f.safetensors", "--xt-batch", "0"))
    assert bad.code == 2 and "--xt-batch" in bad.stderr and not (tmp_path / "f.safetensors").exists()


@pytest.mark.parametrize("method", ["esd", "esd-recare", "recare-noretain"])
def test_baselines_run(tiny_sd_dir: Path, care_file: Path, tmp_path: Path, method: str) -> None:
    out = tmp_path / f"{method}.safetensors"
    args = _erase_args(tiny_sd_dir, care_file, out, "--method", method, "--iterations", "2",
                       "--train-method", "xattn")
    if method != "recare-noretain":
        args.remove("--care")
        args.remove(str(care_file))
    res = invoke(args)
    assert res.code == 0, res.stderr
    tensors, meta = _tensors(out)
    assert meta["method"] == method and all("attn2" in k for k in tensors)


def test_adversarial_tokens_join_the_erase_set(tiny_sd_dir: Path, care_file: Path, tmp_path: Path) -> None:
    from recare_cli.models.fingerprint import module_fingerprint
    from recare_cli.models.weights import save_embeddings

    bundle = _bundle(tiny_sd_dir)
    adv = tmp_path / "adv.safetensors"
    save_embeddings(adv, {"<a0>": torch.randn(1, 32), "<a1>": torch.randn(1, 32), "<a2>": torch.randn(1, 32)},
                    base_text_encoder=module_fingerprint(bundle.pipe.text_encoder))
    out = tmp_path / "e.safetensors"
    res = invoke(_erase_args(tiny_sd_dir, care_file, out, "--adversarial", str(adv), "--iterations", "2"))
    assert res.code == 0, res.stderr
    assert "erase set ['nudity', '<a0>', '<a1>']" in res.stderr  # first m = 2 tokens
    _, meta = _tensors(out)
    assert json.loads(meta["adversarial"])["tokens"] == ["<a0>", "<a1>"]


# ---- bad input: one line, documented exit code, nothing written ------------------------------------------------


def test_careset_without_words(tiny_sd_dir: Path, tmp_path: Path) -> None:
    care = tmp_path / "care.json"
    care.write_text(json.dumps({"nudity_care_word": [], "nudity_care_word_photo": []}))
    out = tmp_path / "e.safetensors"
    res = invoke(_erase_args(tiny_sd_dir, care, out))
    assert res.code == 3 and "no words" in res.stderr and res.stderr.count("\n") == 1
    assert not out.exists()


def test_embeddings_for_another_text_encoder(tiny_sd_dir: Path, care_file: Path, tmp_path: Path) -> None:
    from recare_cli.models.weights import save_embeddings

    other = tmp_path / "other.safetensors"
    save_embeddings(other, {"<x>": torch.randn(1, 32)}, base_text_encoder="sha256:0123456789abcdef")
    wrong_dim = tmp_path / "dim.safetensors"
    save_embeddings(wrong_dim, {"<x>": torch.randn(1, 768)}, base_text_encoder="unknown")
    out = tmp_path / "e.safetensors"
    for adv, message in ((other, "made for text encoder"), (wrong_dim, "size 768")):
        res = invoke(_erase_args(tiny_sd_dir, care_file, out, "--adversarial", str(adv)))
        assert res.code == 3, res.stderr
        assert message in res.stderr and res.stderr.count("\n") == 1
        assert not out.exists()


def test_unknown_train_method_is_a_usage_error(tiny_sd_dir: Path, care_file: Path, tmp_path: Path) -> None:
    res = invoke(_erase_args(tiny_sd_dir, care_file, tmp_path / "e.safetensors", "--train-method", "attn"))
    assert res.code == 2 and "unknown train method 'attn'" in res.stderr and res.stderr.count("\n") == 1


def test_unknown_timestep_draw_is_a_usage_error(tiny_sd_dir: Path, care_file: Path, tmp_path: Path) -> None:
    res = invoke(_erase_args(tiny_sd_dir, care_file, tmp_path / "e.safetensors", "--timesteps", "sorted"))
    assert res.code == 2 and "--timesteps: unknown timestep draw 'sorted' (choose uniform, stratified)" in res.stderr
    assert res.stderr.count("\n") == 1


def test_unknown_lr_schedule_is_a_usage_error(tiny_sd_dir: Path, care_file: Path, tmp_path: Path) -> None:
    res = invoke(_erase_args(tiny_sd_dir, care_file, tmp_path / "e.safetensors", "--lr-schedule", "step"))
    assert res.code == 2 and "--lr-schedule: unknown lr schedule 'step' (choose constant, linear, cosine)" in res.stderr
    assert res.stderr.count("\n") == 1


def test_output_in_missing_directory(tiny_sd_dir: Path, care_file: Path, tmp_path: Path) -> None:
    res = invoke(_erase_args(tiny_sd_dir, care_file, tmp_path / "nope" / "e.safetensors"))
    assert res.code == 3 and "does not exist" in res.stderr and res.stderr.count("\n") == 1


def test_existing_output_survives_a_failed_run(tiny_sd_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "e.safetensors"
    out.write_bytes(b"previous result")
    care = tmp_path / "care.json"
    care.write_text("{not json")
    res = invoke(_erase_args(tiny_sd_dir, care, out))
    assert res.code == 3 and out.read_bytes() == b"previous result"


def test_reference_pt_is_read_weights_only(tiny_sd_dir: Path, tmp_path: Path) -> None:
    from recare_cli.errors import BadInputError
    from recare_cli.models.weights import load_reference_unet

    bundle = _bundle(tiny_sd_dir)
    good = tmp_path / "ReCARE-Diffusers-UNet.pt"
    torch.save(bundle.pipe.unet.state_dict(), good)
    assert set(load_reference_unet(good, bundle.pipe.unet)) == set(bundle.pipe.unet.state_dict())

    class Evil:
        def __reduce__(self) -> tuple[Any, ...]:
            return (print, ("pwned",))

    bad = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, bad)
    with pytest.raises(BadInputError, match="weights-only"):
        load_reference_unet(bad, bundle.pipe.unet)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_precisions_train(tiny_sd_dir: Path, precision: str) -> None:
    """The GPU options run (here on CPU autocast): weights stay fp32, the teacher copy is kept in the
    autocast dtype, and a checkpoint round-trips (fp16 carries its GradScaler state)."""
    from recare_cli.core.diffusion import EraseSettings, EraseTrainer

    bundle = _bundle(tiny_sd_dir)
    base = _trainer(bundle, "xattn", iterations=2)
    settings = EraseSettings(**{**base.settings.__dict__, "precision": precision})
    base.release()
    trainer = EraseTrainer(bundle.pipe.unet, base.names, base.prompts, base.schedule, settings,
                           bundle.pipe.scheduler.config, torch.Generator().manual_seed(0))
    out = trainer.step(0)
    assert out["loss"] == out["loss"]  # not NaN
    assert all(p.dtype == torch.float32 for p in trainer.params)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    assert all(v.dtype == dtype for v in trainer.teacher.values())
    state = trainer.state_tensors()
    assert ("scaler" in state) == (precision == "fp16")
    # the round trip: a second trainer (fresh weights) restored from the state takes the same next step
    after_one = {n: p.detach().clone() for n, p in zip(trainer.names, trainer.params, strict=True)}
    second = trainer.step(1)
    other_unet = _bundle(tiny_sd_dir).pipe.unet
    restored = EraseTrainer(other_unet, base.names, base.prompts, base.schedule, settings,
                            bundle.pipe.scheduler.config, torch.Generator().manual_seed(99))
    restored.load_state_tensors(state)
    assert all(torch.equal(p, after_one[n]) for n, p in zip(restored.names, restored.params, strict=True))
    assert restored.step(1)["loss"] == second["loss"]
    assert all(torch.equal(a, b) for a, b in zip(restored.params, trainer.params, strict=True))


def test_erase_sampler_never_clips_x0(tiny_sd_dir: Path) -> None:
    """x_t is drawn with DDIM as the reference's sampler does it: the predicted x0 is not clipped to [-1, 1]
    even when the model's scheduler config does not say clip_sample (DDIMScheduler's default clips).
    One step with ε = 0 from latents of 4 must give sqrt(ᾱ_prev / ᾱ_t) · 4, computed by hand."""
    from recare_cli.core.diffusion import sample_partial

    bundle = _bundle(tiny_sd_dir)
    assert "clip_sample" not in bundle.pipe.scheduler.config  # the case under test
    trainer = _trainer(bundle, "xattn", iterations=1)
    sampler = trainer.sampler

    class ZeroEps(torch.nn.Module):
        def forward(self, x: torch.Tensor, t: Any, encoder_hidden_states: torch.Tensor) -> Any:
            return type("Out", (), {"sample": torch.zeros_like(x)})()

    latents = torch.full((1, 4, 2, 2), 4.0)
    emb = torch.zeros(1, 77, 32)
    out = sample_partial(ZeroEps(), sampler, latents, emb, emb, steps=1, guidance=3.0)
    t = int(sampler.timesteps[0])
    prev = t - sampler.config.num_train_timesteps // sampler.num_inference_steps
    ab = sampler.alphas_cumprod
    expected = 4.0 * (float(ab[prev]) / float(ab[t])) ** 0.5
    assert expected > 1.5  # clipping would bound it by sqrt(ᾱ_prev) < 1
    torch.testing.assert_close(out, torch.full_like(latents, expected))


def test_resolution_defaults_to_the_models_own_size(tiny_sd_dir: Path, care_file: Path, tmp_path: Path) -> None:
    """Without --resolution, x_t is drawn at the model's own image size (the tiny model's 32 px, not 512), and the
    weights record the size used while provenance records that it was left to the model."""
    out = tmp_path / "e.safetensors"
    args = _erase_args(tiny_sd_dir, care_file, out, "--iterations", "1", "--train-method", "xattn")
    i = args.index("--resolution")
    del args[i:i + 2]
    res = invoke(args)
    assert res.code == 0, res.stderr
    _, meta = _tensors(out)
    assert json.loads(meta["hyperparameters"])["resolution"] == 32
    assert json.loads(meta["provenance"])["params"]["resolution"] is None
