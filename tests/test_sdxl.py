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

from recare_cli.errors import EXIT_MODEL_UNAVAILABLE, ModelUnavailableError
from tests.helpers import invoke

pytestmark = pytest.mark.usefixtures("one_torch_thread")
STEPS = 4  # sampler steps of the erase iterations


def _bundle(folder: Path) -> Any:
    from recare_cli.models.sd import load_sd

    return load_sd(str(folder), device="cpu", dtype="fp32")


# ---- detection and loading -------------------------------------------------------------------------------------


def test_tiny_sdxl_is_detected_with_both_text_encoders(tiny_sdxl_dir: Path, tiny_sd_dir: Path) -> None:
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
    assert bundle.pipe.tokenizer_2.pad_token == "!"
    assert list(_bundle(tiny_sd_dir).identity()) == ["name", "unet", "text_encoder", "dtype"]  # SD 1.x unchanged


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
