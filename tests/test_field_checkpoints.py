"""Other tools' erased UNets through --weights: ESD's and UCE's safetensors, the ReCARE reference's full-UNet .pt,
wrapped state dicts and original-layout checkpoints, each built on the tiny model the way its authors' code
writes it and checked against their own way of loading it (``unet.load_state_dict(..., strict=False)``);
pickles that need code, unknown names, wrong shapes and other tools' LoRAs refused in one line."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch

from recare_cli.errors import BadInputError
from tests.helpers import invoke

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _pipe(tiny_sd_dir: Path) -> Any:
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(str(tiny_sd_dir), safety_checker=None,
                                                   requires_safety_checker=False)


def _eps(unet: Any) -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    x, emb = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 77, 32, generator=g)
    with torch.no_grad():
        return unet(x, torch.tensor([10, 500]), encoder_hidden_states=emb).sample


def _moved(value: torch.Tensor, seed: int) -> torch.Tensor:
    return value + 0.05 * torch.randn(value.shape, generator=torch.Generator().manual_seed(seed))


def esd_file(unet: Any, train_method: str) -> dict[str, torch.Tensor]:
    """What esd_sd.py saves (get_esd_trainable_parameters, then save_file of name → parameter): every parameter
    of the selected Linear/Conv2d modules under ``<module name>.<parameter name>``, here moved off the base
    values and in bf16 (esd_sd.py's default torch_dtype)."""
    out = {}
    for name, module in unet.named_modules():
        if module.__class__.__name__ not in ("Linear", "Conv2d", "LoRACompatibleLinear", "LoRACompatibleConv"):
            continue
        if (train_method == "esd-x" and "attn2" in name) or (train_method == "esd-u" and "attn2" not in name):
            for n, p in module.named_parameters():
                out[name + "." + n] = _moved(p.detach(), len(out)).to(torch.bfloat16)
    return out


def uce_file(unet: Any) -> dict[str, torch.Tensor]:
    """What uce_sd_erase.py saves: the weight of every cross-attention to_k / to_v module, ``<name>.weight``."""
    return {name + ".weight": _moved(module.weight.detach(), i)
            for i, (name, module) in enumerate(unet.named_modules())
            if "attn2" in name and (name.endswith("to_v") or name.endswith("to_k"))}


def _their_loading(tiny_sd_dir: Path, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """The authors' own loading (their notebooks and generate scripts): load_state_dict(strict=False)."""
    pipe = _pipe(tiny_sd_dir)
    _, unexpected = pipe.unet.load_state_dict(tensors, strict=False)
    assert not unexpected
    return _eps(pipe.unet)


def _ours(tiny_sd_dir: Path, path: Path) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    from recare_cli.models.sd import load_sd
    from recare_cli.models.weights import apply_weight_files

    bundle = load_sd(str(tiny_sd_dir), device="cpu", dtype="fp32")
    records = apply_weight_files(bundle, [path])
    return _eps(bundle.pipe.unet), records


@pytest.mark.parametrize("tool", ["esd-x", "esd-u", "uce"])
def test_esd_and_uce_safetensors_apply_as_their_authors_load_them(tiny_sd_dir: Path, tmp_path: Path, tool: str,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from safetensors.torch import save_file

    from recare_cli.io.digest import sha256_file

    unet = _pipe(tiny_sd_dir).unet
    tensors = uce_file(unet) if tool == "uce" else esd_file(unet, tool)
    path = tmp_path / f"{tool}.safetensors"
    save_file(tensors, str(path))  # as their scripts call it: no metadata
    ours, records = _ours(tiny_sd_dir, path)
    theirs = _their_loading(tiny_sd_dir, tensors)
    assert not torch.allclose(theirs, _eps(unet))  # the file changes the model ...
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)  # ... exactly as their loading does
    record = records[0]
    assert record["sha256"] == sha256_file(path) and record["base_unet"] is None
    assert record["layout"] == "diffusers" and record["tensors"] == len(tensors)
    warning = capsys.readouterr().err.strip().splitlines()
    assert len(warning) == 1 and "cannot be verified" in warning[0] and str(path) in warning[0], warning


def test_the_reference_full_unet_pt_and_wrapped_state_dicts(tiny_sd_dir: Path, tmp_path: Path) -> None:
    unet = _pipe(tiny_sd_dir).unet
    full = {k: _moved(v, i) if v.is_floating_point() else v for i, (k, v) in enumerate(unet.state_dict().items())}
    theirs = _their_loading(tiny_sd_dir, full)
    files = {"ReCARE-Diffusers-UNet.pt": full, "wrapped.ckpt": {"state_dict": full, "global_step": 3},
             "unet.bin": {"unet": full}, "stage.pt": {"model_state_dict": {"unet." + k: v for k, v in full.items()},
                                                      "saved_tokens": ["<a>"]}}
    for name, obj in files.items():
        path = tmp_path / name
        torch.save(obj, path)  # utils/recare.py: torch.save(diffuser.unet.state_dict(), save_path)
        ours, records = _ours(tiny_sd_dir, path)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
        assert records[0]["tensors"] == len(full), name
    legacy = tmp_path / "legacy.pt"  # torch's pre-1.6 pickle format: no zip, no memory map
    torch.save(full, legacy, _use_new_zipfile_serialization=False)
    torch.testing.assert_close(_ours(tiny_sd_dir, legacy)[0], theirs, rtol=0, atol=0)


def test_an_original_layout_checkpoint_applies_its_unet(tiny_sd_dir: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """ESD's older train-esd.py saves the whole CompVis model (torch.save(model.state_dict())): the UNet under
    model.diffusion_model., the VAE, text encoder and schedule buffers beside it."""
    from recare_cli.models.export import OriginalLayout, pipeline_states

    pipe = _pipe(tiny_sd_dir)
    states = pipeline_states(pipe)
    states["unet"] = {k: _moved(v, i) for i, (k, v) in enumerate(states["unet"].items())}
    checkpoint = OriginalLayout({p: s.keys() for p, s in states.items()}).to_original(states)
    others = len(checkpoint) - len(states["unet"])
    checkpoint["betas"] = torch.linspace(1e-4, 2e-2, 1000)
    path = tmp_path / "compvis-word_nudity-method_noxattn.pt"
    torch.save(checkpoint, path)
    ours, records = _ours(tiny_sd_dir, path)
    torch.testing.assert_close(ours, _their_loading(tiny_sd_dir, states["unet"]), rtol=0, atol=0)
    assert records[0]["layout"] == "original" and records[0]["tensors"] == len(checkpoint)  # in the file
    warning = capsys.readouterr().err.strip().splitlines()
    assert len(warning) == 1 and f"{others + 1} other tensors" in warning[0], warning


class Evil:
    """Unpickling this writes the marker file: what a malicious checkpoint would do."""

    marker = ""

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("zipped", [True, False])
def test_a_pickle_that_runs_code_is_refused_and_never_runs(tiny_sd_dir: Path, tmp_path: Path, zipped: bool) -> None:
    from recare_cli.models.weights import read_metadata

    marker = tmp_path / "pwned"
    evil = Evil()
    evil.marker = str(marker)
    path = tmp_path / "erased.pt"
    torch.save({"conv_out.bias": torch.zeros(4), "x": evil}, path, _use_new_zipfile_serialization=zipped)
    assert not marker.exists()
    with pytest.raises(BadInputError, match="needs code to load"):
        read_metadata(path)
    prompts = tmp_path / "p.txt"
    prompts.write_text("a photo\n")
    out = tmp_path / "imgs"
    res = invoke(["sample", str(prompts), "--out", str(out), "--model", str(tiny_sd_dir), "--steps", "2",
                  "--height", "32", "--width", "32", "--device", "cpu", "--weights", str(path)])
    lines = res.stderr.strip().splitlines()
    assert res.code == 3 and len(lines) == 1 and str(path) in lines[0] and "needs code" in lines[0], res.stderr
    assert res.stdout == b"" and not out.exists() and not marker.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["erased.pt", "p.txt"]


def _one_line_exit_3(tiny_sd_dir: Path, tmp_path: Path, path: Path, phrase: str) -> None:
    out = tmp_path / "out.safetensors"
    res = invoke(["export", "--model", str(tiny_sd_dir), "--weights", str(path), "-o", str(out)])
    lines = res.stderr.strip().splitlines()
    assert res.code == 3 and len(lines) == 1 and phrase in lines[0] and str(path) in lines[0], res.stderr
    assert not out.exists()


@pytest.mark.parametrize(("tensors", "phrase"), [
    ({"conv_out.weight_extra": torch.zeros(4)}, "parameter 'conv_out.weight_extra' is not in the model's UNet"),
    ({"conv_out.bias": torch.zeros(5)}, "parameter 'conv_out.bias' has shape (5,), the UNet's is (4,)"),
    ({"lora_unet_conv_out.lora_down.weight": torch.zeros(2, 4)}, "a LoRA file of another tool"),
    ({"model.diffusion_model.label_emb.0.0.weight": torch.zeros(2, 2)}, "not a unet parameter this model has"),
])
def test_names_or_shapes_the_unet_lacks_are_one_line_exit_3(tiny_sd_dir: Path, tmp_path: Path,
                                                            tensors: dict[str, torch.Tensor], phrase: str) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file(tensors, str(path))
    _one_line_exit_3(tiny_sd_dir, tmp_path, path, phrase)


def test_a_file_that_records_a_base_unet_is_checked_against_it(tiny_sd_dir: Path, tmp_path: Path) -> None:
    """Only files without any recare record are taken unverified: a base_unet in the metadata is checked, whatever
    the format says."""
    from safetensors.torch import save_file

    path = tmp_path / "old.safetensors"
    save_file({"conv_out.bias": torch.zeros(4)}, str(path),
              metadata={"format": "recare.weights", "base_unet": "sha256:0123456789abcdef"})
    res = invoke(["export", "--model", str(tiny_sd_dir), "--weights", str(path), "-o", str(tmp_path / "o.safetensors")])
    assert res.code == 3 and "recare.weights file" in res.stderr, res.stderr
    with pytest.raises(BadInputError, match="made for base UNet sha256:0123456789abcdef"):
        _ours(tiny_sd_dir, path)


def test_a_file_that_is_no_checkpoint_is_one_line_exit_3(tiny_sd_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "notes.pt"
    path.write_text("not a checkpoint\n")
    _one_line_exit_3(tiny_sd_dir, tmp_path, path, "neither a safetensors file nor a PyTorch checkpoint")
    listed = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], listed)
    _one_line_exit_3(tiny_sd_dir, tmp_path, listed, "holds no state dict")


def test_sample_records_the_file_and_warns_once(tiny_sd_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from recare_cli.io.digest import sha256_file
    from tests.helpers import sample_with_and_without

    path = tmp_path / "esd-nudity-esdx.safetensors"
    save_file(esd_file(_pipe(tiny_sd_dir).unet, "esd-x"), str(path))
    record, erased, base = sample_with_and_without(path, tiny_sd_dir, tmp_path, "a photo of a person")
    weights = record["weights"]
    assert weights[0]["sha256"] == sha256_file(path) and weights[0]["base_unet"] is None
    assert erased.read_bytes() != base.read_bytes()


def test_read_metadata_of_a_pickle_is_empty_and_loads_nothing_unsafe(tmp_path: Path) -> None:
    from recare_cli.models.weights import read_metadata

    path = tmp_path / "unet.pt"
    torch.save({"conv_out.bias": torch.zeros(4)}, path)
    assert read_metadata(path) == {}
    numbers = tmp_path / "numbers.pt"
    torch.save({"conv_out.bias": 1}, numbers)
    with pytest.raises(BadInputError, match="holds no state dict"):
        read_metadata(numbers)
    raw = tmp_path / "raw.pkl"  # protocol 4 framing, which the weights-only reader does not take
    raw.write_bytes(pickle.dumps({"conv_out.bias": 1}, protocol=4))
    with pytest.raises(BadInputError, match="weights-only"):
        read_metadata(raw)


def test_export_writes_another_tools_unet_as_it_writes_recare_weights(tiny_sd_dir: Path, tmp_path: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    from recare_cli.io.digest import sha256_file
    from recare_cli.models.fingerprint import module_fingerprint
    from recare_cli.models.weights import save_unet_weights

    unet = _pipe(tiny_sd_dir).unet
    tensors = uce_file(unet)
    uce = tmp_path / "uce.safetensors"
    save_file(tensors, str(uce))
    ours = tmp_path / "ours.safetensors"
    save_unet_weights(ours, tensors, base_unet=module_fingerprint(unet))
    outputs = {}
    for name, weights in (("uce-model", uce), ("ours-model", ours)):
        out = tmp_path / f"{name}.safetensors"
        res = invoke(["export", "--model", str(tiny_sd_dir), "--weights", str(weights), "-o", str(out)])
        assert res.code == 0, res.stderr
        outputs[name] = out
        if weights == uce:
            warnings = [line for line in res.stderr.splitlines() if line.startswith("warning")]
            assert len(warnings) == 1 and "cannot be verified" in warnings[0], res.stderr
    with safe_open(str(outputs["uce-model"]), framework="pt") as a, \
            safe_open(str(outputs["ours-model"]), framework="pt") as b:
        assert set(a.keys()) == set(b.keys())
        assert all(torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in a.keys())  # noqa: SIM118
        written = [a.get_tensor(k) for k in a.keys() if k.endswith(("attn2.to_k.weight", "attn2.to_v.weight"))]  # noqa: SIM118
        record = json.loads(a.metadata()["provenance"])["models"]["weights"][0]
    assert len(written) == len(tensors) and all(any(torch.equal(w, v) for v in tensors.values()) for w in written)
    assert record["kind"] == "weights of another tool" and record["sha256"] == sha256_file(uce)


def advunlearn_file(text_encoder: Any) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """What AdvUnlearn's save_text_encoder writes (torch.save(custom_text_encoder.state_dict())), written with
    transformers 4: its CustomTextEncoder holds the CLIPTextModel as ``text_encoder`` and three of its parts again
    as ``embedding``, ``encoder``, ``final_layer_norm``, so the state dict names every tensor twice; transformers 4
    also kept the ``position_ids`` buffer. Returns the file's dict and the moved text-model tensors (bare names)."""
    bare = {k.removeprefix("text_model."): v for k, v in text_encoder.state_dict().items()}
    moved = {k: _moved(v, i) if v.is_floating_point() else v for i, (k, v) in enumerate(bare.items())
             if not k.endswith("position_ids")}
    moved_all = {**moved, "embeddings.position_ids": torch.arange(77).unsqueeze(0)}
    aliases = {"embeddings.": "embedding.", "encoder.": "encoder.", "final_layer_norm.": "final_layer_norm."}
    out = {f"text_encoder.text_model.{k}": v for k, v in moved_all.items()}
    for k, v in moved_all.items():
        prefix = next(p for p in aliases if k.startswith(p))
        out[aliases[prefix] + k.removeprefix(prefix)] = v
    return out, moved


def test_advunlearn_text_encoder_pt_applies_to_the_text_encoder(tiny_sd_dir: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    from recare_cli.models.sd import load_sd
    from recare_cli.models.weights import apply_weight_files

    pipe = _pipe(tiny_sd_dir)
    saved, moved = advunlearn_file(pipe.text_encoder)
    path = tmp_path / "TextEncoder-nudity.pt"
    torch.save(saved, path)
    ids = pipe.tokenizer(["a photo of a person"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    theirs = _pipe(tiny_sd_dir)  # loading the CLIP text model's own tensors, as their wrapper holds it
    state = theirs.text_encoder.state_dict()
    theirs.text_encoder.load_state_dict({n: v for n, v in ((p + k, v) for k, v in moved.items()
                                                           for p in ("", "text_model.")) if n in state}, strict=False)
    bundle = load_sd(str(tiny_sd_dir), device="cpu", dtype="fp32")
    unet_before = {k: v.clone() for k, v in bundle.pipe.unet.state_dict().items()}
    records = apply_weight_files(bundle, [path])
    with torch.no_grad():
        ours, expected, base = (p.text_encoder(ids)[0] for p in (bundle.pipe, theirs, pipe))
    assert not torch.allclose(expected, base)
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)
    assert all(torch.equal(v, unet_before[k]) for k, v in bundle.pipe.unet.state_dict().items())
    assert records[0]["layout"] == "text encoder (wrapped)" and records[0]["base_text_encoder"] is None
    warning = capsys.readouterr().err.strip().splitlines()
    assert len(warning) == 1 and f"{len(moved)} text-encoder tensors" in warning[0], warning

    from safetensors.torch import save_file

    plain = tmp_path / "model.safetensors"  # a transformers text_encoder folder's file: text_model.… names
    save_file({f"text_model.{k}": v.contiguous() for k, v in moved.items()}, str(plain))
    again = load_sd(str(tiny_sd_dir), device="cpu", dtype="fp32")
    assert apply_weight_files(again, [plain])[0]["layout"] == "text encoder"
    with torch.no_grad():
        torch.testing.assert_close(again.pipe.text_encoder(ids)[0], expected, rtol=0, atol=0)


def test_attack_takes_the_reference_pt_and_records_it(tiny_sd_dir: Path, target_images: Path, tmp_path: Path) -> None:
    from safetensors import safe_open

    from recare_cli.io.digest import sha256_file

    unet = _pipe(tiny_sd_dir).unet
    path = tmp_path / "ReCARE-Diffusers-UNet.pt"
    torch.save({k: _moved(v, i) for i, (k, v) in enumerate(unet.state_dict().items())}, path)
    out = tmp_path / "cce.safetensors"
    res = invoke(["attack", str(target_images), "--target", "nudity", "--model", str(tiny_sd_dir), "--device", "cpu",
                  "--steps", "2", "--batch-size", "1", "--accumulation", "2", "--num-images", "4", "-o", str(out),
                  "--weights", str(path)])
    assert res.code == 0, res.stderr
    assert sum("cannot be verified" in line for line in res.stderr.splitlines()) == 1, res.stderr
    with safe_open(str(out), framework="pt") as fh:
        attacked = json.loads(fh.metadata()["attacked_weights"])
    assert attacked[0]["sha256"] == sha256_file(path) and attacked[0]["layout"] == "diffusers"
