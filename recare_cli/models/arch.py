"""Which diffusion architecture a model folder holds, and whether recare can run on it.

recare runs on Stable Diffusion 1.x and 2.x: a diffusers ``StableDiffusionPipeline`` (model_index.json's
``_class_name``) whose UNet is a plain text-conditioned ``UNet2DConditionModel`` and whose scheduler predicts
ε (``epsilon``: SD 1.x, SD 2.x-base) or v (``v_prediction``: SD 2.x at 768 px). Anything else (SDXL, SD 3,
Flux, inpainting or upscaling UNets, x0-predicting schedulers) is refused with one line naming what was
found, before any weights are read when model_index.json says so. docs/architectures.md has the details.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recare_cli.errors import ModelUnavailableError

SUPPORTED_PIPELINE = "StableDiffusionPipeline"
PREDICTION_TYPES = ("epsilon", "v_prediction")
SUPPORTED = "recare runs on Stable Diffusion 1.x and 2.x (StableDiffusionPipeline)"
# Pipelines users are likely to point at, by the family a message names.
KNOWN_PIPELINES = {
    "StableDiffusionXLPipeline": "SDXL", "StableDiffusionXLImg2ImgPipeline": "SDXL",
    "StableDiffusionXLInpaintPipeline": "SDXL", "StableDiffusion3Pipeline": "Stable Diffusion 3",
    "FluxPipeline": "Flux", "PixArtAlphaPipeline": "PixArt", "PixArtSigmaPipeline": "PixArt",
    "KandinskyV22Pipeline": "Kandinsky", "StableDiffusionInpaintPipeline": "an inpainting model",
    "StableDiffusionUpscalePipeline": "an upscaler", "StableDiffusionDepth2ImgPipeline": "a depth-to-image model",
}
# The cross-attention widths of the released models: SD 1.x reads CLIP ViT-L/14 (768), SD 2.x OpenCLIP-H (1024).
FAMILY_BY_WIDTH = {768: "sd1", 1024: "sd2"}


@dataclass(frozen=True)
class Architecture:
    family: str  # sd1 | sd2
    prediction_type: str  # epsilon | v_prediction

    def identity(self) -> dict[str, str]:
        """What provenance records beside the fingerprints: nothing for SD 1.x with ε-prediction (files made
        before the architecture was recorded keep their bytes), the family and prediction type otherwise."""
        if self == SD1:
            return {}
        return {"architecture": self.family, "prediction_type": self.prediction_type}


SD1 = Architecture("sd1", "epsilon")  # SD 1.x as released: what a bundle's identity leaves unsaid


def check_pipeline_class(index: dict[str, Any], name: str) -> None:
    """Refuse a model_index.json that names another pipeline than ``StableDiffusionPipeline``."""
    found = index.get("_class_name")
    if found == SUPPORTED_PIPELINE:
        return
    if not isinstance(found, str):
        raise ModelUnavailableError(f"model '{name}': model_index.json names no pipeline class (_class_name); "
                                    f"{SUPPORTED}")
    family = KNOWN_PIPELINES.get(found)
    what = f"a {found} ({family})" if family else f"a {found}"
    raise ModelUnavailableError(f"model '{name}' is {what}, not supported: {SUPPORTED}")


def read_model_index(name: str, *, local_files_only: bool = False) -> dict[str, Any]:
    """model_index.json of a folder, or of a hub id (the one small file, from the cache or the hub).
    Raises ``OSError`` when it cannot be had (the loader's caller turns that into its one-line message)."""
    folder = Path(name).expanduser()
    if folder.is_dir():
        path = folder / "model_index.json"
        if not path.is_file():
            raise OSError("no model_index.json (not a diffusers pipeline folder)")
    else:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError

        try:
            path = Path(hf_hub_download(name, "model_index.json", local_files_only=local_files_only))
        except (OSError, ValueError, EntryNotFoundError) as err:
            raise OSError(f"model_index.json of '{name}' is not available ({type(err).__name__})") from err
    try:
        index = json.loads(path.read_text("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise OSError(f"model_index.json is not valid JSON ({err})") from err
    if not isinstance(index, dict):
        raise OSError("model_index.json is not a JSON object")
    return index


def detect(unet_config: Any, scheduler_config: Any, name: str) -> Architecture:
    """The family (from the UNet's cross-attention width, or its layout for other widths: SD 2's linear
    projections) and the prediction type (the scheduler's); refuses UNets and predictions recare cannot run."""
    cross = unet_config.get("cross_attention_dim")
    odd = [f"{key} {unet_config.get(key)!r}" for key in ("addition_embed_type", "class_embed_type")
           if unet_config.get(key) is not None]
    if unet_config.get("in_channels") != unet_config.get("out_channels"):
        odd.append(f"in_channels {unet_config.get('in_channels')} ≠ out_channels {unet_config.get('out_channels')}")
    if not isinstance(cross, int):
        odd.append(f"cross_attention_dim {cross!r}")
    if odd:
        raise ModelUnavailableError(f"model '{name}': its UNet is not a text-to-image SD 1.x/2.x UNet "
                                    f"({', '.join(odd)}); {SUPPORTED}")
    family = FAMILY_BY_WIDTH.get(cross) or ("sd2" if unet_config.get("use_linear_projection") else "sd1")
    prediction = scheduler_config.get("prediction_type") or "epsilon"
    if prediction not in PREDICTION_TYPES:
        raise ModelUnavailableError(f"model '{name}': its scheduler's prediction_type is '{prediction}'; recare "
                                    f"trains and samples {' and '.join(PREDICTION_TYPES)} models")
    return Architecture(family, prediction)
