"""recare erase --method uce: the authors' closed form on the tiny model, its defining property, the CLI, bad input."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open

from tests.helpers import invoke, sample_with_and_without, shell

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}, dict(fh.metadata())  # noqa: SIM118


def _args(tiny_sd_dir: Path, out: Path | str, *extra: str) -> list[str]:
    return ["erase", "--method", "uce", "--target", "nudity", "--model", str(tiny_sd_dir), "--device", "cpu",
            "-o", str(out), *extra]


def authors_uce(pipe: Any, edit: list[str], guide: list[str], preserve: list[str], *, erase_scale: float,
                preserve_scale: float, lamb: float, dtype: torch.dtype = torch.float32,
                position_shift: int = 0) -> dict[str, torch.Tensor]:
    """A naive transcription of the authors' UCE (uce_sd_erase.py): the pipeline's own encode_prompt, the state
    at attention_mask.sum() - 2 (+ ``position_shift``, to show the test sees the choice), the modules'
    outputs as values, one loop per concept, one inverse per layer (their fp32, or ``dtype``)."""
    modules, names = [], []
    for name, module in pipe.unet.named_modules():
        if "attn2" in name and (name.endswith("to_v") or name.endswith("to_k")):
            modules.append(module)
            names.append(name)
    original = copy.deepcopy(modules)
    embeds: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for concept in edit + guide + preserve:
            emb = pipe.encode_prompt(prompt=concept, device="cpu", num_images_per_prompt=1,
                                     do_classifier_free_guidance=False)
            mask = pipe.tokenizer(concept, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                                  truncation=True, return_tensors="pt")["attention_mask"]
            embeds[concept] = emb[0][:, mask.sum() - 2 + position_shift, :]
        outputs = {c: [m(embeds[c]) for m in original] for c in guide + preserve}
        new = {}
        for i, module in enumerate(original):
            w = module.weight.to(dtype)
            mat1 = lamb * w
            mat2 = lamb * torch.eye(w.shape[1], dtype=dtype)
            for e, g in zip(edit, guide, strict=True):
                c, v = embeds[e].T.to(dtype), outputs[g][i].T.to(dtype)
                mat1 = mat1 + erase_scale * (v @ c.T)
                mat2 = mat2 + erase_scale * (c @ c.T)
            for p in preserve:
                c, v = embeds[p].T.to(dtype), outputs[p][i].T.to(dtype)
                mat1 = mat1 + preserve_scale * (v @ c.T)
                mat2 = mat2 + preserve_scale * (c @ c.T)
            new[f"{names[i]}.weight"] = mat1 @ torch.inverse(mat2)
    return new


SETTINGS = [  # (guide, preserve, lamb, erase_scale, preserve_scale)
    ("", [], 0.5, 1.0, 1.0),  # the authors' defaults for an object
    ("art", ["a person", "car", "a person"], 0.1, 2.0, 0.7),  # a repeated concept counts twice, as theirs
]


@pytest.mark.parametrize(("guide", "preserve", "lamb", "erase_scale", "preserve_scale"), SETTINGS)
def test_edit_is_the_authors_closed_form(tiny_sd_dir: Path, tmp_path: Path, guide: str, preserve: list[str],
                                         lamb: float, erase_scale: float, preserve_scale: float) -> None:
    from diffusers import StableDiffusionPipeline

    out = tmp_path / "uce.safetensors"
    extra = ["--guide", guide, "--lamb", str(lamb), "--erase-scale", str(erase_scale),
             "--preserve-scale", str(preserve_scale)]
    for p in preserve:
        extra += ["--preserve", p]
    res = invoke(_args(tiny_sd_dir, out, *extra))
    assert res.code == 0, res.stderr
    ours, _ = _tensors(out)

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_dir, safety_checker=None)
    kw = {"erase_scale": erase_scale, "preserve_scale": preserve_scale, "lamb": lamb}
    theirs = authors_uce(pipe, ["nudity"], [guide], preserve, **kw)
    exact = authors_uce(pipe, ["nudity"], [guide], preserve, dtype=torch.float64, **kw)
    eos = authors_uce(pipe, ["nudity"], [guide], preserve, position_shift=1, **kw)
    old = pipe.unet.state_dict()
    assert set(ours) == set(theirs) and len(ours) == 8  # every attn2 to_k / to_v
    for name, value in ours.items():
        assert value.dtype == torch.float32
        torch.testing.assert_close(value.double(), exact[name], rtol=0, atol=1e-6)  # our float64 solve
        torch.testing.assert_close(value, theirs[name], rtol=0, atol=1e-4)  # their float32 inverse's rounding
        assert (value - old[name]).abs().max() > 1e-2  # the edit is far larger than the tolerances …
        assert (eos[name] - value).abs().max() > 1e-2  # … and so is the choice of token


def test_target_takes_the_guides_value_in_closed_form(tiny_sd_dir: Path) -> None:
    """Without preserved concepts the edited layer maps the target's state c to
    W c_g + λ / (λ + s‖c‖²) · (W c − W c_g) (the gap shrinks as λ → 0) and leaves every direction orthogonal
    to c alone."""
    from recare_cli.core.uce import uce_edit
    from recare_cli.models.sd import load_sd
    from recare_cli.stages.uce import concept_states

    bundle = load_sd(str(tiny_sd_dir), device="cpu", dtype="fp32")
    states = concept_states(bundle.pipe, ["nudity", "a cat"], bundle.device)
    c, g = states["nudity"].double(), states["a cat"].double()
    w = torch.randn(48, c.shape[0], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for lamb, scale in ((0.5, 1.0), (0.01, 2.0)):
        new = uce_edit(c[None], g[None], torch.zeros(0, c.shape[0]), lamb=lamb, erase_scale=scale,
                       preserve_scale=1.0).apply(w)
        shrink = lamb / (lamb + scale * float(c @ c))
        torch.testing.assert_close(new @ c, w @ g + shrink * (w @ c - w @ g), rtol=1e-10, atol=1e-10)
        ortho = torch.randn(c.shape[0], generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        ortho -= (ortho @ c) / (c @ c) * c
        torch.testing.assert_close(new @ ortho, w @ ortho, rtol=1e-10, atol=1e-10)
    assert shrink < 1e-3  # with a small λ the target's output is the guide's


def test_preserved_concepts_keep_their_outputs(tiny_sd_dir: Path) -> None:
    """A preserved concept's cross-attention outputs move far less than without preserving it; the target still
    moves to the guide. Measured on the tiny model's real text states over every edited layer."""
    from recare_cli.core.uce import relative_change, relative_gap, uce_edit
    from recare_cli.models.sd import load_sd
    from recare_cli.stages.uce import concept_states, edited_weights

    bundle = load_sd(str(tiny_sd_dir), device="cpu", dtype="fp32")
    unet = bundle.pipe.unet
    kept = ["a person", "a photo of a man", "water"]
    states = concept_states(bundle.pipe, ["nudity", "", *kept], bundle.device)
    c, g = states["nudity"][None], states[""][None]
    p = torch.stack([states[k] for k in kept])
    old = unet.state_dict()
    moved, gap = {}, {}
    for name, preserve in (("with", p), ("without", torch.zeros(0, c.shape[1]))):
        new = edited_weights(unet, uce_edit(c, g, preserve, lamb=0.5, erase_scale=1.0, preserve_scale=1.0))
        moved[name] = max(float(relative_change(v, old[k], p).max()) for k, v in new.items())
        gap[name] = max(float(relative_gap(v, old[k], c, g.double() @ old[k].double().T)) for k, v in new.items())
    assert moved["with"] < 0.1 * moved["without"], moved  # measured: 0.026 against 0.68
    assert moved["with"] < 0.05, moved
    assert gap["with"] < 0.2 and gap["without"] < 0.2, gap  # measured: 0.083 and 0.015


def test_cli_output_applies_with_sample_weights(tiny_sd_dir: Path, tmp_path: Path) -> None:
    """The file holds only the edited tensors with the house's metadata; recare sample --weights applies it
    (its images change), and the same command gives the same bytes."""
    import numpy as np
    from PIL import Image

    from recare_cli.models.weights import decode_metadata

    out = tmp_path / "uce.safetensors"
    res = invoke(_args(tiny_sd_dir, out, "--preserve", "a person", "-q"))
    assert res.code == 0, res.stderr
    assert res.stdout == b"" and res.stderr == ""
    first = out.read_bytes()
    assert invoke(_args(tiny_sd_dir, out, "--preserve", "a person", "-q")).code == 0
    assert out.read_bytes() == first
    tensors, meta = _tensors(out)
    info = decode_metadata(meta)
    assert info["format"] == "recare.unet-weights" and info["values"] == "new" and info["method"] == "uce"
    assert info["hyperparameters"] == {"method": "uce", "guide": "", "preserve": ["a person"], "erase_scale": 1.0,
                                       "preserve_scale": 1.0, "lamb": 0.5}
    assert all(".attn2.to_" in k for k in tensors) and len(tensors) == 8
    params = info["provenance"]["params"]
    assert params["method"] == "uce" and params["preserve"] == ["a person"] and params["lamb"] == 0.5

    record, erased, base = sample_with_and_without(out, tiny_sd_dir, tmp_path, "nudity")
    assert record["weights"][0]["tensors"] == 8
    a, b = (np.asarray(Image.open(path), dtype=np.int16) for path in (erased, base))
    assert np.abs(a - b).max() > 0


def test_subprocess_writes_to_a_pipe(tiny_sd_dir: Path, tmp_path: Path) -> None:
    done = shell(f"recare erase --method uce --target nudity --preserve person --model {tiny_sd_dir} --device cpu "
                 "-o - | cat > piped.safetensors", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "uce edited 8 cross-attention projections" in done.stderr
    assert invoke(_args(tiny_sd_dir, tmp_path / "file.safetensors", "--preserve", "person", "-q")).code == 0
    piped, _ = _tensors(tmp_path / "piped.safetensors")
    direct, _ = _tensors(tmp_path / "file.safetensors")
    assert piped.keys() == direct.keys() and all(torch.equal(piped[k], direct[k]) for k in piped)


def test_uce_options_are_recorded_in_uce_files_only() -> None:
    """The files of the other methods keep their provenance bytes: no UCE option appears in them."""
    from recare_cli.stages.erase import EraseOptions
    from recare_cli.stages.options import recorded

    uce_keys = {"guide", "preserve", "preserve_file", "erase_scale", "preserve_scale", "lamb"}
    for method in ("recare", "esd", "stereo"):
        assert not uce_keys & set(recorded(EraseOptions(target="t", output="o", method=method)))
    assert uce_keys <= set(recorded(EraseOptions(target="t", output="o", method="uce")))


# ---- bad input: one line, documented exit code, nothing written ------------------------------------------------


@pytest.mark.parametrize("extra", [["--preserve", "person", "--preserve", " Nudity "], ["--preserve", "nudity"]])
def test_preserving_the_target_is_a_usage_error(tiny_sd_dir: Path, tmp_path: Path, extra: list[str]) -> None:
    out = tmp_path / "u.safetensors"
    res = invoke(_args(tiny_sd_dir, out, *extra))
    assert res.code == 2, res.stderr
    assert res.stderr.count("\n") == 1 and "is the target" in res.stderr and "--preserve" in res.stderr
    assert not out.exists()


def test_a_preserve_file_naming_the_target_is_a_usage_error(tiny_sd_dir: Path, tmp_path: Path) -> None:
    listed = tmp_path / "keep.txt"
    listed.write_text("# benign concepts\nperson\n\nnudity\n")
    out = tmp_path / "u.safetensors"
    res = invoke(_args(tiny_sd_dir, out, "--preserve-file", str(listed)))
    assert res.code == 2 and res.stderr.count("\n") == 1, res.stderr
    assert f"{listed}:4" in res.stderr and "'nudity' is the target" in res.stderr
    assert not out.exists()


def test_a_preserve_file_adds_its_concepts(tiny_sd_dir: Path, tmp_path: Path) -> None:
    listed = tmp_path / "keep.txt"
    listed.write_text("# benign concepts\nwater\n\na person\n")
    out = tmp_path / "u.safetensors"
    res = invoke(_args(tiny_sd_dir, out, "--preserve", "car", "--preserve-file", "-", "-q"),
                 stdin=listed.read_bytes())
    assert res.code == 0, res.stderr
    _, meta = _tensors(out)
    assert json.loads(meta["hyperparameters"])["preserve"] == ["car", "water", "a person"]


@pytest.mark.parametrize(("extra", "message"), [(["--lamb", "0"], "--lamb: must be above 0"),
                                                (["--erase-scale", "0"], "--erase-scale: must be above 0"),
                                                (["--preserve", " "], "--preserve: an empty concept")])
def test_bad_uce_settings_are_usage_errors(tiny_sd_dir: Path, tmp_path: Path, extra: list[str], message: str) -> None:
    out = tmp_path / "u.safetensors"
    res = invoke(_args(tiny_sd_dir, out, *extra))
    assert res.code == 2 and res.stderr.count("\n") == 1 and message in res.stderr, res.stderr
    assert not out.exists()


def test_a_missing_preserve_file_is_bad_input(tiny_sd_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "u.safetensors"
    res = invoke(_args(tiny_sd_dir, out, "--preserve-file", str(tmp_path / "nope.txt")))
    assert res.code == 3 and res.stderr.count("\n") == 1 and "nope.txt" in res.stderr, res.stderr
    assert not out.exists()
