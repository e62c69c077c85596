"""Model loading: devices, dtypes, fingerprints, the tiny models through the normal loading path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from recare_cli.errors import ModelUnavailableError, UsageError
from recare_cli.models.clip import load_clip
from recare_cli.models.device import resolve_device, resolve_dtype
from recare_cli.models.fingerprint import module_fingerprint, state_fingerprint
from recare_cli.models.hub import load_pretrained
from recare_cli.models.sd import load_sd


def test_device_and_dtype_resolution() -> None:
    assert resolve_device("cpu").type == "cpu"
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(UsageError, match="--dtype"):
        resolve_dtype("fp8", torch.device("cpu"))
    with pytest.raises(UsageError, match="--device"):
        resolve_device("banana")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="CUDA is not available"):
            resolve_device("cuda:0")


def test_fingerprint_identifies_weights_not_dtype(tiny_clip_dir: Path) -> None:
    fp32 = load_clip(str(tiny_clip_dir), device="cpu", dtype="fp32")
    fp16 = load_clip(str(tiny_clip_dir), device="cpu", dtype="fp16")
    assert fp32.fingerprint == fp16.fingerprint
    before = module_fingerprint(fp32.model)
    with torch.no_grad():
        fp32.model.text_projection.weight[0, 0] += 1.0  # a fine-tune moves sampled values
    assert module_fingerprint(fp32.model) != before


def test_fingerprint_covers_every_value() -> None:
    """An edit of one row of a 49,408-row token embedding (a textual-inversion token written over an
    existing one) changes the fingerprint; so does a change of any single value of a tensor."""
    torch.manual_seed(0)
    table = torch.randn(49408, 32)
    before = state_fingerprint({"embeddings.weight": table})
    edited = table.clone()
    edited[1000] = torch.randn(32)
    assert state_fingerprint({"embeddings.weight": edited}) != before
    small = torch.randn(37, 11)
    seen = {state_fingerprint({"w": small})}
    for i in range(small.numel()):
        changed = small.clone().reshape(-1)
        changed[i] += 1.0
        seen.add(state_fingerprint({"w": changed.reshape(37, 11)}))
    assert len(seen) == small.numel() + 1
    # names, shapes and integer buffers count too
    assert state_fingerprint({"v": small}) != state_fingerprint({"w": small})
    assert state_fingerprint({"w": small.reshape(11, 37)}) != state_fingerprint({"w": small})
    ids = torch.arange(77)
    assert state_fingerprint({"ids": ids}) != state_fingerprint({"ids": ids.flip(0)})


def test_sd_fingerprints_do_not_depend_on_dtype_or_stored_precision(tiny_sd_dir: Path, tmp_path: Path) -> None:
    """The same weights loaded in fp32 or fp16, or saved as fp16 and loaded in fp32, give one fingerprint."""
    fp32 = load_sd(str(tiny_sd_dir), device="cpu", dtype="fp32")
    fp16 = load_sd(str(tiny_sd_dir), device="cpu", dtype="fp16")
    assert fp16.pipe.unet.dtype == torch.float16
    assert (fp32.unet_fingerprint, fp32.text_encoder_fingerprint) == (fp16.unet_fingerprint,
                                                                      fp16.text_encoder_fingerprint)
    fp16.pipe.save_pretrained(tmp_path / "sd-fp16", safe_serialization=True)
    again = load_sd(str(tmp_path / "sd-fp16"), device="cpu", dtype="fp32")
    assert (again.unet_fingerprint, again.text_encoder_fingerprint) == (fp32.unet_fingerprint,
                                                                        fp32.text_encoder_fingerprint)
    with torch.no_grad():
        fp32.pipe.text_encoder.get_input_embeddings().weight[1000] += 0.5
    assert module_fingerprint(fp32.pipe.text_encoder) != fp16.text_encoder_fingerprint


def test_tiny_sd_loads_through_the_normal_path(tiny_sd_dir: Path) -> None:
    bundle = load_sd(str(tiny_sd_dir), device="cpu", dtype="fp32")
    assert bundle.pipe.tokenizer("a cat")["input_ids"] == [49406, 320, 2368, 49407]
    assert bundle.pipe.safety_checker is None
    assert bundle.identity()["unet"].startswith("sha256:")
    assert not any(p.requires_grad for p in bundle.pipe.unet.parameters())
    images = bundle.pipe("a cat", num_inference_steps=2, height=32, width=32, output_type="np",
                         generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (1, 32, 32, 3)


def test_missing_models_are_one_clear_error(tmp_path: Path) -> None:
    def never(name: str, **_: object) -> None:
        raise OSError("unreachable")

    with pytest.raises(ModelUnavailableError, match="does not exist"):
        load_pretrained(never, str(tmp_path / "absent"), what="CLIP model", hint="pass --clip")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ModelUnavailableError, match="is a file"):
        load_pretrained(never, str(tmp_path / "file"), what="CLIP model", hint="pass --clip")
    with pytest.raises(ModelUnavailableError, match=r"cannot fetch CLIP model 'org/name'.*pass --clip"):
        load_pretrained(never, "org/name", what="CLIP model", hint="pass --clip")  # HF_HUB_OFFLINE=1
    with pytest.raises(ModelUnavailableError, match="cannot load CLIP model from folder"):
        load_pretrained(never, str(tmp_path), what="CLIP model", hint="pass --clip")


def test_a_pad_id_of_zero_is_the_pad_id() -> None:
    """SD 2's OpenCLIP tokenizer pads with '!', id 0: that is its pad id, not a missing one."""
    from types import SimpleNamespace

    from recare_cli.models.clip import pad_id

    assert pad_id(SimpleNamespace(pad_token_id=0, eos_token_id=49407)) == 0
    assert pad_id(SimpleNamespace(pad_token_id=None, eos_token_id=49407)) == 49407
    assert pad_id(SimpleNamespace(pad_token_id=49407, eos_token_id=49407)) == 49407
