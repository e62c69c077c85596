"""recare invert on the tiny model: placeholder-only training, cached latents, outputs, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open

from recare_cli.errors import InterruptedRunError
from tests.helpers import invoke

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _args(images: Path, tiny_sd_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["invert", str(images), "--target", "nudity", "--model", str(tiny_sd_dir), "--device", "cpu",
            "--resolution", "32", "--erase-iterations", "2", "--steps", "4", "-o", str(out), *extra]


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}, dict(fh.metadata())  # noqa: SIM118


def test_invert_trains_only_placeholders_and_loads_in_diffusers(tiny_sd_dir: Path, target_images: Path,
                                                                tmp_path: Path) -> None:
    from diffusers import StableDiffusionPipeline

    from recare_cli.models.fingerprint import module_fingerprint
    from recare_cli.models.weights import decode_metadata, load_embeddings_into
    from recare_cli.stages.invert import InvertOptions, run_invert

    out = tmp_path / "adv.safetensors"
    kept = tmp_path / "kept"
    opts = InvertOptions(images=str(target_images), target="nudity", rounds=2, erase_iterations=2, steps=4,
                         resolution=32, device="cpu",
                         model=str(tiny_sd_dir), output=str(out), keep_erased=str(kept))
    import recare_cli.models.sd as sd

    loaded: list[Any] = []
    original_load = sd.load_sd

    def spy(*args: Any, **kwargs: Any) -> Any:
        bundle = original_load(*args, **kwargs)
        loaded.append((bundle, {k: v.clone() for k, v in bundle.pipe.text_encoder.state_dict().items()}))
        return bundle

    sd.load_sd = spy
    try:
        run_invert(opts, sorted(target_images.iterdir()))
    finally:
        sd.load_sd = original_load
    (bundle, text_before), = loaded
    # the text encoder (embedding table included) is untouched; only the placeholder vectors are learned
    assert all(torch.equal(v, text_before[k]) for k, v in bundle.pipe.text_encoder.state_dict().items())
    tensors, meta = _read(out)
    assert list(tensors) == ["<nudity-adv0>", "<nudity-adv1>"]
    person = bundle.pipe.text_encoder.get_input_embeddings().weight[2533]  # "person</w>"
    for value in tensors.values():
        assert value.shape == (1, 32) and not torch.equal(value[0], person)
    assert not torch.equal(tensors["<nudity-adv0>"], tensors["<nudity-adv1>"])
    info = decode_metadata(meta)
    assert info["format"] == "recare.embeddings" and info["tokens"] == list(tensors) and info["rounds"] == 2
    assert info["base_text_encoder"] == module_fingerprint(StableDiffusionPipeline.from_pretrained(
        tiny_sd_dir).text_encoder)
    assert info["provenance"]["command"] == "invert" and info["initializer"] == "person"
    assert sorted(p.name for p in kept.iterdir()) == ["round0-unet.safetensors", "round1-unet.safetensors"]

    # plain diffusers, from the file's tensors
    plain = StableDiffusionPipeline.from_pretrained(tiny_sd_dir)
    plain.load_textual_inversion(list(tensors.values()), token=list(tensors))
    ids = plain.tokenizer.convert_tokens_to_ids(list(tensors))
    table = plain.text_encoder.get_input_embeddings().weight
    for token_id, value in zip(ids, tensors.values(), strict=True):
        assert torch.equal(table[token_id], value[0])
    # a single-token file loads by path, as diffusers' own format
    one = tmp_path / "one.safetensors"
    from safetensors.torch import save_file

    save_file({"<nudity-adv0>": tensors["<nudity-adv0>"]}, str(one))
    single = StableDiffusionPipeline.from_pretrained(tiny_sd_dir)
    single.load_textual_inversion(str(one))
    assert "<nudity-adv0>" in single.tokenizer.get_vocab()
    # and through the helper
    helped = StableDiffusionPipeline.from_pretrained(tiny_sd_dir)
    assert load_embeddings_into(helped, out) == list(tensors)


def test_same_command_same_bytes(tiny_sd_dir: Path, target_images: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    for out in (a, b):
        res = invoke(_args(target_images, tiny_sd_dir, out, "--rounds", "1", "-q"))
        assert res.code == 0, res.stderr
    # the output path is a parameter (provenance); compare the tensors and everything else
    ta, ma = _read(a)
    tb, mb = _read(b)
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    assert ma["tokens"] == mb["tokens"] == '["<nudity-adv0>"]'


def test_latents_are_encoded_once_per_image(tiny_sd_dir: Path) -> None:
    from recare_cli.core.diffusion import latent_distributions
    from recare_cli.models.sd import load_sd

    vae = load_sd(str(tiny_sd_dir), device="cpu", dtype="fp32").pipe.vae
    pixels = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    calls = []
    encode = vae.encode

    def counting(x: torch.Tensor) -> Any:
        calls.append(x.shape[0])
        return encode(x)

    vae.encode = counting
    lat = latent_distributions(vae, pixels, batch_size=2)  # default 1
    assert calls == [4, 2]  # every image with its flip, in batches; never again during training
    assert lat.shape == (3, 2, 2, 4, 16, 16)
    with torch.no_grad():
        dist = encode(pixels[1:2]).latent_dist
        flipped = encode(torch.flip(pixels[1:2], dims=[-1])).latent_dist
    s = vae.config.scaling_factor
    assert torch.allclose(lat[1, 0, 0], dist.mean[0] * s, atol=1e-5)
    assert torch.allclose(lat[1, 0, 1], dist.std[0] * s, atol=1e-5)
    assert torch.allclose(lat[1, 1, 0], flipped.mean[0] * s, atol=1e-5)


def test_round_slices_are_sorted_and_disjoint() -> None:
    from recare_cli.stages.invert import round_slices

    assert round_slices(7, 2) == [range(0, 3), range(3, 6)]
    assert round_slices(2, 2) == [range(0, 1), range(1, 2)]


# ---- bad input ---------------------------------------------------------------------------------------------


def test_too_few_images_for_the_rounds(tiny_sd_dir: Path, target_images: Path, tmp_path: Path) -> None:
    folder = tmp_path / "two"
    folder.mkdir()
    for src in sorted(target_images.iterdir())[:2]:
        shutil.copy(src, folder / src.name)
    out = tmp_path / "adv.safetensors"
    res = invoke(_args(folder, tiny_sd_dir, out, "--rounds", "3"))
    assert res.code == 3 and "2 readable image(s) for 3 rounds" in res.stderr and not out.exists()


def test_unreadable_images_are_skipped_or_stop_with_strict(tiny_sd_dir: Path, target_images: Path,
                                                           tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    for src in sorted(target_images.iterdir())[:3]:
        shutil.copy(src, folder / src.name)
    (folder / "zz_broken.png").write_bytes(b"this is not a png")
    out = tmp_path / "adv.safetensors"
    res = invoke(_args(folder, tiny_sd_dir, out, "--strict"))
    assert res.code == 3 and "zz_broken.png" in res.stderr and res.stderr.count("\n") == 1 and not out.exists()
    res = invoke(_args(folder, tiny_sd_dir, out, "--rounds", "1"))
    assert res.code == 0, res.stderr
    assert "skipped unreadable image" in res.stderr and "zz_broken.png" in res.stderr and out.exists()


def test_output_in_missing_directory(tiny_sd_dir: Path, target_images: Path, tmp_path: Path) -> None:
    res = invoke(_args(target_images, tiny_sd_dir, tmp_path / "missing" / "adv.safetensors"))
    assert res.code == 3 and "does not exist" in res.stderr and res.stderr.count("\n") == 1


def test_bad_options(tiny_sd_dir: Path, target_images: Path, tmp_path: Path) -> None:
    out = tmp_path / "adv.safetensors"
    res = invoke(_args(target_images, tiny_sd_dir, out, "--train-method", "everything"))
    assert res.code == 2 and "unknown train method" in res.stderr
    res = invoke(_args(target_images, tiny_sd_dir, out, "--property", "texture"))
    assert res.code == 2 and "--property" in res.stderr
    res = invoke(_args(target_images, tiny_sd_dir, out, "--initializer", "xyzzyplugh"))
    assert res.code == 2 and "single CLIP token" in res.stderr and not out.exists()


def test_resume_after_an_interrupted_round(tiny_sd_dir: Path, target_images: Path, tmp_path: Path) -> None:
    from recare_cli.stages.invert import InvertOptions, run_invert

    paths = sorted(target_images.iterdir())

    def opts(out: Path, resume: bool = False) -> InvertOptions:
        return InvertOptions(images="imgs", target="nudity", rounds=2, erase_iterations=2, steps=3, resolution=32,
                             device="cpu",
                             model=str(tiny_sd_dir), output=str(out), resume=resume)

    # the same output path both times (provenance records it): the straight run's bytes, then the file removed
    out = tmp_path / "adv.safetensors"
    run_invert(opts(out), paths)
    assert not Path(f"{out}.ckpt").exists()
    straight = out.read_bytes()
    out.unlink()
    erase_phases = []

    def interrupt(phase: str, step: int, _: float) -> None:
        if phase == "erase" and step == 0:
            erase_phases.append(step)
            if len(erase_phases) == 2:  # inside round 2
                raise KeyboardInterrupt

    with pytest.raises(InterruptedRunError, match="--resume"):
        run_invert(opts(out), paths, on_step=interrupt)
    assert Path(f"{out}.ckpt").exists() and not out.exists()
    res = invoke(_args(target_images, tiny_sd_dir, out, "--steps", "3"))
    assert res.code == 5 and "--resume" in res.stderr  # never overwrites a checkpoint silently
    run_invert(opts(out, resume=True), paths)
    assert out.read_bytes() == straight  # the same file, metadata included
    assert not Path(f"{out}.ckpt").exists()


def test_resolution_defaults_to_the_models_own_size(tiny_sd_dir: Path, target_images: Path, tmp_path: Path) -> None:
    """Without --resolution the images are resized to the model's own size (the tiny model's 32 px, not 512)."""
    out = tmp_path / "adv.safetensors"
    args = _args(target_images, tiny_sd_dir, out, "--rounds", "1", "--erase-iterations", "1", "--steps", "1")
    i = args.index("--resolution")
    del args[i:i + 2]
    res = invoke(args)
    assert res.code == 0, res.stderr
    _, meta = _read(out)
    assert json.loads(meta["hyperparameters"])["resolution"] == 32
