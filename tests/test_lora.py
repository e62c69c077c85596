"""recare erase --lora on the tiny model: only the adapters train, the teacher is the base model, the first step
is the full-parameter engine's, the file loads in diffusers, --merge, resume, bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open

from tests.helpers import check_resume_gives_same_bytes, invoke

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _bundle(tiny_sd_dir: Path) -> Any:
    from recare_cli.models.sd import load_sd

    return load_sd(str(tiny_sd_dir), device="cpu", dtype="fp32")


def _trainer(bundle: Any, *, lora: int | None, method: str = "recare", lr: float = 1e-3,
             alpha: float | None = None) -> Any:
    from recare_cli.core.diffusion import ErasePrompts, EraseSchedule, EraseTrainer, encode_prompts
    from recare_cli.core.guidance import select_parameters
    from recare_cli.stages.erase import EraseOptions, erase_settings, lora_settings

    pipe = bundle.pipe

    def enc(p: list[str]) -> torch.Tensor:
        return encode_prompts(pipe.tokenizer, pipe.text_encoder, p, device=bundle.device)

    n = 4
    prompts = ErasePrompts(uncond=enc([""]), erase=enc(["nudity"]), anchors=enc(["A person"]),
                           retains=enc(["A photo of person"]))
    opts = EraseOptions(target="nudity", output="-", method=method, iterations=n, lr=lr, ddim_steps=8, lora=lora,
                        lora_alpha=alpha)
    return EraseTrainer(pipe.unet, select_parameters(pipe.unet, "noxattn"), prompts,
                        EraseSchedule(erase=[0] * n, anchor=[0] * n, retain=[0] * n), erase_settings(opts, 16),
                        pipe.scheduler.config, torch.Generator().manual_seed(0), lora=lora_settings(opts))


def _tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}, dict(fh.metadata())  # noqa: SIM118


def _eps(unet: Any, seed: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x, emb = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 77, 32, generator=g)
    with torch.no_grad():
        return unet(x, 400, encoder_hidden_states=emb).sample


def test_only_adapter_parameters_change(tiny_sd_dir: Path) -> None:
    bundle = _bundle(tiny_sd_dir)
    unet = bundle.pipe.unet
    base = {k: v.clone() for k, v in unet.state_dict().items()}
    trainer = _trainer(bundle, lora=2)
    assert all("lora_" in name for name in trainer.names)
    assert {n for n, p in unet.named_parameters() if p.requires_grad} == set(trainer.names)
    adapters = {n: p.detach().clone() for n, p in unet.named_parameters() if "lora_" in n}
    for i in range(2):
        trainer.step(i)
    after = unet.state_dict()
    for key, value in base.items():  # peft keeps an adapted module's own weights under base_layer
        adapted = key.rsplit(".", 1)
        now = after.get(key, after.get(f"{adapted[0]}.base_layer.{adapted[1]}"))
        assert now is not None and torch.equal(now, value), key
    changed = [n for n, p in unet.named_parameters() if "lora_" in n and not torch.equal(p, adapters[n])]
    assert any(".lora_B." in n for n in changed) and any(".lora_A." in n for n in changed)


def test_teacher_is_the_base_model_with_adapters_off(tiny_sd_dir: Path) -> None:
    base = _eps(_bundle(tiny_sd_dir).pipe.unet)
    trainer = _trainer(_bundle(tiny_sd_dir), lora=2)
    assert trainer.teacher == {}  # no copy of any weight
    for i in range(2):
        trainer.step(i)
    with trainer._as_teacher() as params:
        assert params is None
        teacher = _eps(trainer.unet)
    assert torch.equal(teacher, base)
    assert not torch.equal(_eps(trainer.unet), base)  # the student has moved
    # switching the adapters off does not leave them frozen
    assert all(p.requires_grad for p in trainer.params)


@pytest.mark.parametrize("method", ["recare", "esd"])
def test_first_loss_is_the_full_parameter_engines(tiny_sd_dir: Path, method: str) -> None:
    """At step 0 the adapted model is the base model (B = 0): the same draws give the same loss, bit for bit; the
    adapters' initial draw does not advance the run's generator."""
    full = _trainer(_bundle(tiny_sd_dir), lora=None, method=method).step(0)
    lora = _trainer(_bundle(tiny_sd_dir), lora=4, method=method).step(0)
    assert lora == full
    assert full["loss"] > 0


def test_adapter_init_is_seeded_and_leaves_the_global_generator(tiny_sd_dir: Path) -> None:
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = {n: p.detach().clone() for n, p in zip(_trainer(_bundle(tiny_sd_dir), lora=2).names,
                                               _trainer(_bundle(tiny_sd_dir), lora=2).params, strict=True)}
    assert torch.equal(torch.get_rng_state(), before)
    b = _trainer(_bundle(tiny_sd_dir), lora=2)
    assert all(torch.equal(p, a[n]) for n, p in zip(b.names, b.params, strict=True))
    assert any(".lora_A." in n and p.abs().sum() > 0 for n, p in a.items())


def _lora_run(tiny_sd_dir: Path, care: Path, out: Path, *extra: str) -> Any:
    return invoke(["erase", "--target", "nudity", "--care", str(care), "--model", str(tiny_sd_dir), "--device", "cpu",
                   "--resolution", "32", "--iterations", "3", "--ddim-steps", "8", "--lr", "1e-2", "--lora", "4",
                   "--lora-alpha", "8", "-o", str(out), "-q", *extra])


@pytest.fixture(scope="module")
def lora_outputs(tiny_sd_dir: Path, care_file: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same LoRA run written as adapters and as merged weights."""
    folder = tmp_path_factory.mktemp("lora")
    out = {"lora": folder / "lora.safetensors", "merged": folder / "merged.safetensors"}
    for kind, path in out.items():
        res = _lora_run(tiny_sd_dir, care_file, path, *(["--merge"] if kind == "merged" else []))
        assert res.code == 0 and res.stderr == "", res.stderr
    return out


def test_lora_file_loads_with_diffusers_load_lora_weights(tiny_sd_dir: Path, lora_outputs: dict[str, Path]) -> None:
    from diffusers import StableDiffusionPipeline

    from recare_cli.models.fingerprint import module_fingerprint
    from recare_cli.models.weights import apply_unet_weights, decode_metadata

    tensors, meta = _tensors(lora_outputs["lora"])
    info = decode_metadata(meta)
    assert info["format"] == "recare.unet-lora" and info["method"] == "recare" and info["train_method"] == "noxattn"
    assert info["lora"] == {"rank": 4, "alpha": 8.0, "modules": len(tensors) // 2}
    assert info["hyperparameters"]["lora"] == 4 and info["hyperparameters"]["lora_alpha"] == 8.0
    params = info["provenance"]["params"]
    assert (params["lora"], params["lora_alpha"], params["merge"]) == (4, 8.0, False)
    assert json.loads(meta["lora_adapter_metadata"])["unet.lora_alpha"] == 8.0
    assert all(k.startswith("unet.") and (k.endswith(".lora_A.weight") or k.endswith(".lora_B.weight"))
               for k in tensors)
    assert not any("attn2" in k for k in tensors)
    base_pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_dir)
    assert info["base_unet"] == module_fingerprint(base_pipe.unet)
    base = _eps(base_pipe.unet)

    loaded = StableDiffusionPipeline.from_pretrained(tiny_sd_dir)
    loaded.load_lora_weights(str(lora_outputs["lora"]))  # peft layers, unmerged, scale from the metadata
    by_diffusers = _eps(loaded.unet)
    ours = StableDiffusionPipeline.from_pretrained(tiny_sd_dir)
    apply_unet_weights(ours, lora_outputs["lora"])  # merged into the weights
    by_recare = _eps(ours.unet)
    moved = float((by_recare - base).abs().max())
    assert moved > 1e-3  # the adapters changed the model ...
    torch.testing.assert_close(by_diffusers, by_recare, rtol=0, atol=1e-5 * moved + 1e-6)  # ... the same way


def test_merge_writes_base_plus_the_adapters_update(tiny_sd_dir: Path, lora_outputs: dict[str, Path]) -> None:
    """--merge: for every adapted module W + (alpha / r)·B A, with the product written out naively from the
    adapters file of the same run; the file is recare.unet-weights and applies as such."""
    from diffusers import UNet2DConditionModel

    from recare_cli.models.weights import apply_unet_weights

    adapters, _ = _tensors(lora_outputs["lora"])
    merged, meta = _tensors(lora_outputs["merged"])
    assert meta["format"] == "recare.unet-weights" and json.loads(meta["lora"])["rank"] == 4
    base = UNet2DConditionModel.from_pretrained(tiny_sd_dir, subfolder="unet").state_dict()
    modules = {k.removeprefix("unet.").rsplit(".lora_", 1)[0] for k in adapters}
    assert set(merged) == {f"{m}.weight" for m in modules}
    scale = 8.0 / 4
    largest = 0.0
    for module in modules:
        a, b = adapters[f"unet.{module}.lora_A.weight"], adapters[f"unet.{module}.lora_B.weight"]
        w = base[f"{module}.weight"]
        delta = torch.zeros_like(w)
        for r in range(a.shape[0]):  # Σ_r b[:, r] ⊗ a[r]
            delta += b[:, r].reshape(-1, *([1] * (w.dim() - 1))) * a[r].unsqueeze(0)
        torch.testing.assert_close(merged[f"{module}.weight"], w + scale * delta, rtol=0, atol=1e-6)
        largest = max(largest, float(delta.abs().max()))
    assert largest > 1e-4  # the update is not empty
    plain = UNet2DConditionModel.from_pretrained(tiny_sd_dir, subfolder="unet")
    apply_unet_weights(plain, lora_outputs["merged"])
    via_lora = UNet2DConditionModel.from_pretrained(tiny_sd_dir, subfolder="unet")
    apply_unet_weights(via_lora, lora_outputs["lora"])
    for name, value in merged.items():
        torch.testing.assert_close(via_lora.state_dict()[name], value, rtol=0, atol=1e-6)


def test_resume_gives_the_same_bytes(tiny_sd_dir: Path, care_file: Path, tmp_path: Path) -> None:
    from recare_cli.stages.erase import EraseOptions

    def opts(resume: bool) -> EraseOptions:
        return EraseOptions(target="nudity", care=str(care_file), iterations=5, resolution=32, ddim_steps=8,
                            device="cpu", lr=1e-2, model=str(tiny_sd_dir), output=str(out), checkpoint_every=2,
                            resume=resume, lora=2)

    out = tmp_path / "lora.safetensors"
    def only_adapters_are_kept(ckpt: Path) -> None:
        with safe_open(str(ckpt), framework="pt") as fh:
            assert all("lora_" in k for k in fh.keys() if k.startswith("param/"))  # noqa: SIM118

    check_resume_gives_same_bytes(opts, stop_at=3, between=only_adapters_are_kept)


def test_lora_file_for_another_base_model(tiny_sd_dir: Path, lora_outputs: dict[str, Path], tmp_path: Path) -> None:
    from recare_cli.models.tiny import build_tiny_sd

    other = build_tiny_sd(tmp_path / "other-sd", seed=1)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of a person\n")
    res = invoke(["sample", str(prompts), "--out", str(tmp_path / "imgs"), "--model", str(other), "--steps", "2",
                  "--height", "32", "--width", "32", "--device", "cpu", "--weights", str(lora_outputs["lora"])])
    assert res.code == 3, res.stderr
    assert res.stderr.count("\n") == 1 and "made for base UNet" in res.stderr and "lora.safetensors" in res.stderr
    assert "Traceback" not in res.stderr


def test_lora_file_that_does_not_fit_the_unet(tiny_sd_dir: Path, lora_outputs: dict[str, Path],
                                              tmp_path: Path) -> None:
    from diffusers import UNet2DConditionModel

    from recare_cli.errors import BadInputError
    from recare_cli.models.weights import apply_unet_weights, read_safetensors, write_safetensors

    tensors, meta = read_safetensors(lora_outputs["lora"])
    unet = UNet2DConditionModel.from_pretrained(tiny_sd_dir, subfolder="unet")
    cases = {
        "renamed": ({k.replace("conv_in", "conv_nowhere"): v for k, v in tensors.items()}, "not in the model's UNet"),
        "unpaired": ({k: v for k, v in tensors.items() if k != "unet.conv_in.lora_B.weight"}, "lacks its lora_B"),
        "reshaped": ({**tensors, "unet.conv_in.lora_A.weight": torch.zeros(4, 3, 3, 3)}, "do not fit"),
    }
    for name, (bad, message) in cases.items():
        path = tmp_path / f"{name}.safetensors"
        write_safetensors(path, bad, meta)
        with pytest.raises(BadInputError, match=message):
            apply_unet_weights(unet, path)
    untouched = UNet2DConditionModel.from_pretrained(tiny_sd_dir, subfolder="unet")
    assert torch.equal(unet.state_dict()["conv_in.weight"], untouched.state_dict()["conv_in.weight"])


@pytest.mark.parametrize(("extra", "message"), [
    (["--lora-alpha", "8"], "--lora-alpha: only with --lora"),
    (["--merge"], "--merge: only with --lora"),
    (["--lora", "2", "--lora-alpha", "0"], "--lora-alpha: must be above 0"),
    (["--lora", "2", "--method", "uce"], "--method uce"),
    (["--lora", "2", "--method", "age"], "--lora: --method age"),
    (["--lora", "2", "--method", "advunlearn"], "--lora: --method advunlearn"),
    (["--lora", "0"], "--lora"),
])
def test_bad_lora_options_are_usage_errors(tiny_sd_dir: Path, care_file: Path, tmp_path: Path, extra: list[str],
                                           message: str) -> None:
    res = invoke(["erase", "--target", "nudity", "--care", str(care_file), "--model", str(tiny_sd_dir),
                  "-o", str(tmp_path / "e.safetensors"), *extra])
    assert res.code == 2 and message in res.stderr, res.stderr


def test_files_without_lora_record_nothing_of_it(tiny_sd_dir: Path, care_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "full.safetensors"
    res = invoke(["erase", "--target", "nudity", "--care", str(care_file), "--model", str(tiny_sd_dir), "--device",
                  "cpu", "--resolution", "32", "--iterations", "1", "--ddim-steps", "4", "-o", str(out), "-q"])
    assert res.code == 0, res.stderr
    _, meta = _tensors(out)
    assert "lora" not in meta and "lora" not in json.loads(meta["hyperparameters"])
    assert not {"lora", "lora_alpha", "merge"} & set(json.loads(meta["provenance"])["params"])


def test_invert_rounds_erase_with_lora(tiny_sd_dir: Path, target_images: Path, tmp_path: Path) -> None:
    """invert --lora: each round's erasure trains adapters and merges them (the kept round UNet is the base plus
    the update of the adapted modules' weights); the options are recorded."""
    from diffusers import UNet2DConditionModel

    out, kept = tmp_path / "adv.safetensors", tmp_path / "kept"
    res = invoke(["invert", str(target_images), "--target", "nudity", "--model", str(tiny_sd_dir), "--device", "cpu",
                  "--resolution", "32", "--rounds", "1", "--erase-iterations", "2", "--erase-lr", "1e-2",
                  "--ddim-steps", "8", "--steps", "2", "--lora", "2", "--keep-erased", str(kept), "-o", str(out), "-q"])
    assert res.code == 0, res.stderr
    _, meta = _tensors(out)
    hyper = json.loads(meta["hyperparameters"])
    assert (hyper["lora"], hyper["lora_alpha"]) == (2, 2.0)
    round0, _ = _tensors(kept / "round0-unet.safetensors")
    base = UNet2DConditionModel.from_pretrained(tiny_sd_dir, subfolder="unet").state_dict()
    assert all(k.endswith(".weight") and "attn2" not in k for k in round0)
    assert any(not torch.equal(v, base[k]) for k, v in round0.items())


def test_export_merges_a_lora_file(tiny_sd_dir: Path, lora_outputs: dict[str, Path], tmp_path: Path) -> None:
    """recare export --weights takes the LoRA file: the checkpoint equals the one exported from --merge's file."""
    written = {}
    for kind, path in lora_outputs.items():
        out = tmp_path / f"{kind}.safetensors"
        res = invoke(["export", "--model", str(tiny_sd_dir), "--weights", str(path), "-o", str(out), "-q"])
        assert res.code == 0, res.stderr
        written[kind], _ = _tensors(out)
    assert written["lora"].keys() == written["merged"].keys()
    for key, value in written["merged"].items():
        torch.testing.assert_close(written["lora"][key], value, rtol=0, atol=1e-6)
