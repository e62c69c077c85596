"""Which diffusion architecture a model folder holds, and whether recare can run on it.

recare runs on Stable Diffusion 1.x and 2.x and on SDXL: a diffusers ``StableDiffusionPipeline`` or
``StableDiffusionXLPipeline`` (model_index.json's ``_class_name``) whose UNet is a text-conditioned
``UNet2DConditionModel`` (plain for SD 1.x/2.x; for SDXL with ``addition_embed_type="text_time"``, the pooled
text embedding and the six size ids) and whose scheduler predicts ε (``epsilon``: SD 1.x, SD 2.x-base, SDXL) or v
(``v_prediction``: SD 2.x at 768 px). Anything else (the SDXL refiner, img2img and inpainting pipelines, SD 3,
Flux, inpainting or upscaling UNets, x0-predicting schedulers) is refused with one line naming what was found,
before any weights are read when model_index.json says so. docs/architectures.md has the details.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recare_cli.errors import ModelUnavailableError

SUPPORTED_PIPELINE = "StableDiffusionPipeline"
SDXL_PIPELINE = "StableDiffusionXLPipeline"
SUPPORTED_PIPELINES = (SUPPORTED_PIPELINE, SDXL_PIPELINE)
PREDICTION_TYPES = ("epsilon", "v_prediction")
SUPPORTED = ("recare runs on Stable Diffusion 1.x and 2.x (StableDiffusionPipeline) and SDXL "
             "(StableDiffusionXLPipeline)")
# Pipelines users are likely to point at, by the family a message names.
KNOWN_PIPELINES = {
    "StableDiffusionXLImg2ImgPipeline": "the SDXL refiner or an SDXL img2img model",
    "StableDiffusionXLInpaintPipeline": "an SDXL inpainting model", "StableDiffusion3Pipeline": "Stable Diffusion 3",
    "FluxPipeline": "Flux", "PixArtAlphaPipeline": "PixArt", "PixArtSigmaPipeline": "PixArt",
    "KandinskyV22Pipeline": "Kandinsky", "StableDiffusionInpaintPipeline": "an inpainting model",
    "StableDiffusionUpscalePipeline": "an upscaler", "StableDiffusionDepth2ImgPipeline": "a depth-to-image model",
}
# The cross-attention widths of the released models: SD 1.x reads CLIP ViT-L/14 (768), SD 2.x OpenCLIP-H (1024).
FAMILY_BY_WIDTH = {768: "sd1", 1024: "sd2"}


@dataclass(frozen=True)
class Architecture:
    family: str  # sd1 | sd2 | sdxl
    prediction_type: str  # epsilon | v_prediction

    @property
    def sdxl(self) -> bool:
        return self.family == "sdxl"

    def identity(self) -> dict[str, str]:
        """What provenance records beside the fingerprints: nothing for SD 1.x with ε-prediction (files made
        before the architecture was recorded keep their bytes), the family and prediction type otherwise."""
        if self == SD1:
            return {}
        return {"architecture": self.family, "prediction_type": self.prediction_type}


SD1 = Architecture("sd1", "epsilon")  # SD 1.x as released: what a bundle's identity leaves unsaid


def check_pipeline_class(index: dict[str, Any], name: str) -> str:
    """The pipeline class a model_index.json names (``StableDiffusionPipeline`` or ``StableDiffusionXLPipeline``);
    another class, or an SDXL folder without its first text encoder (as the refiner's), is refused."""
    found = index.get("_class_name")
    if found == SDXL_PIPELINE and not _component(index, "text_encoder"):
        raise ModelUnavailableError(f"model '{name}' is a {found} without a text_encoder (as the SDXL refiner), "
                                    f"not supported: {SUPPORTED}")
    if found in SUPPORTED_PIPELINES:
        return str(found)
    if not isinstance(found, str):
        raise ModelUnavailableError(f"model '{name}': model_index.json names no pipeline class (_class_name); "
                                    f"{SUPPORTED}")
    family = KNOWN_PIPELINES.get(found)
    what = f"a {found} ({family})" if family else f"a {found}"
    raise ModelUnavailableError(f"model '{name}' is {what}, not supported: {SUPPORTED}")


def _component(index: dict[str, Any], key: str) -> bool:
    entry = index.get(key)
    return isinstance(entry, list) and len(entry) == 2 and entry[1] is not None


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


def detect(unet_config: Any, scheduler_config: Any, name: str, *, pipeline: str = SUPPORTED_PIPELINE) -> Architecture:
    """The family (SDXL for a ``StableDiffusionXLPipeline``; else from the UNet's cross-attention width, or its
    layout for other widths: SD 2's linear projections) and the prediction type (the scheduler's); refuses UNets
    and predictions recare cannot run."""
    cross = unet_config.get("cross_attention_dim")
    sdxl = pipeline == SDXL_PIPELINE
    added = {"addition_embed_type": "text_time" if sdxl else None, "class_embed_type": None}
    odd = [f"{key} {unet_config.get(key)!r}" for key, wanted in added.items() if unet_config.get(key) != wanted]
    if unet_config.get("in_channels") != unet_config.get("out_channels"):
        odd.append(f"in_channels {unet_config.get('in_channels')} ≠ out_channels {unet_config.get('out_channels')}")
    if not isinstance(cross, int):
        odd.append(f"cross_attention_dim {cross!r}")
    if odd:
        kind = "an SDXL" if sdxl else "a text-to-image SD 1.x/2.x"
        raise ModelUnavailableError(f"model '{name}': its UNet is not {kind} UNet ({', '.join(odd)}); {SUPPORTED}")
    if sdxl:
        family = "sdxl"
    else:
        family = FAMILY_BY_WIDTH.get(cross) or ("sd2" if unet_config.get("use_linear_projection") else "sd1")
    prediction = scheduler_config.get("prediction_type") or "epsilon"
    if prediction not in PREDICTION_TYPES:
        raise ModelUnavailableError(f"model '{name}': its scheduler's prediction_type is '{prediction}'; recare "
                                    f"trains and samples {' and '.join(PREDICTION_TYPES)} models")
    return Architecture(family, prediction)
