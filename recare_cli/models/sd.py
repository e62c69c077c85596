"""Loading a diffusers Stable Diffusion (1.x, 2.x) or SDXL pipeline (folder or hub id) for invert, erase and
sample."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from recare_cli.models.arch import SD1, SDXL_PIPELINE, Architecture, check_pipeline_class, detect, read_model_index
from recare_cli.models.device import dtype_name, resolve_device, resolve_dtype
from recare_cli.models.fingerprint import module_fingerprint
from recare_cli.models.hub import load_pretrained

if TYPE_CHECKING:
    import torch

DEFAULT_MODEL = "CompVis/stable-diffusion-v1-4"
MODEL_ENV = "RECARE_MODEL"
MODEL_HINT = f"pass a local diffusers folder with --model or {MODEL_ENV}"


def default_model() -> str:
    return os.environ.get(MODEL_ENV) or DEFAULT_MODEL


@dataclass
class SDBundle:
    pipe: Any  # diffusers.StableDiffusionPipeline or StableDiffusionXLPipeline
    name: str
    unet_fingerprint: str
    text_encoder_fingerprint: str
    device: torch.device
    dtype: torch.dtype
    architecture: Architecture = SD1
    text_encoder_2_fingerprint: str | None = None  # SDXL's second text encoder (OpenCLIP bigG)

    def identity(self) -> dict[str, str]:
        """What provenance records about the base model (the architecture unless SD 1.x with ε-prediction,
        ``models.arch.Architecture.identity``; SDXL's second text encoder under ``text_encoder_2``)."""
        second = {} if self.text_encoder_2_fingerprint is None else {"text_encoder_2": self.text_encoder_2_fingerprint}
        return {"name": self.name, "unet": self.unet_fingerprint,
                "text_encoder": self.text_encoder_fingerprint, **second, "dtype": dtype_name(self.dtype),
                **self.architecture.identity()}

    @property
    def text_encoders(self) -> list[Any]:
        """The pipeline's text encoders: one for SD 1.x/2.x, two for SDXL."""
        return text_encoders(self.pipe)


def load_sd(name: str, *, device: str = "auto", dtype: str = "auto") -> SDBundle:
    """Load all components on ``device`` in ``dtype``; no safety checker (evaluation needs raw
    outputs; documented in the README). Fingerprints are taken before any modification. A folder of another
    architecture (model_index.json, the UNet's config, the scheduler's prediction type) is refused with
    :class:`ModelUnavailableError` (``models.arch``)."""
    from recare_cli.models.quiet import quiet_libraries

    quiet_libraries()  # before importing the pipeline classes, whose import logs warnings
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    found: list[str] = []

    def from_pretrained(source: str, **kwargs: Any) -> Any:
        # model_index.json first: another pipeline is refused before its weights are read or downloaded
        index = read_model_index(source, local_files_only=bool(kwargs.get("local_files_only")))
        found.append(check_pipeline_class(index, name))
        if found[-1] == SDXL_PIPELINE:  # no safety checker to switch off; no invisible watermark (raw outputs)
            return StableDiffusionXLPipeline.from_pretrained(source, add_watermarker=False, **kwargs)
        return StableDiffusionPipeline.from_pretrained(source, safety_checker=None, requires_safety_checker=False,
                                                       **kwargs)

    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    pipe = load_pretrained(from_pretrained, name, what="Stable Diffusion model", hint=MODEL_HINT, dtype=dt)
    architecture = detect(pipe.unet.config, pipe.scheduler.config, name, pipeline=found[-1])
    pipe.to(dev)
    pipe.set_progress_bar_config(disable=True)
    encoders = text_encoders(pipe)
    for module in (pipe.unet, pipe.vae, *encoders):
        module.eval().requires_grad_(False)
    second = module_fingerprint(encoders[1]) if len(encoders) > 1 else None
    return SDBundle(pipe, name, module_fingerprint(pipe.unet), module_fingerprint(pipe.text_encoder),
                    dev, dt, architecture, second)


def text_encoders(pipe: Any) -> list[Any]:
    """``[text_encoder]``, or SDXL's ``[text_encoder, text_encoder_2]``."""
    second = getattr(pipe, "text_encoder_2", None)
    return [pipe.text_encoder] if second is None else [pipe.text_encoder, second]


def tokenizers(pipe: Any) -> list[Any]:
    """``[tokenizer]``, or SDXL's ``[tokenizer, tokenizer_2]`` (the second pads with ``!``)."""
    second = getattr(pipe, "tokenizer_2", None)
    return [pipe.tokenizer] if second is None else [pipe.tokenizer, second]


def native_resolution(pipe: Any) -> tuple[int, int]:
    """(height, width) in pixels the model was trained at, as diffusers pipelines pick it when none is
    given: the UNet's ``sample_size`` (in latent pixels) times the VAE's scale factor (512 for SD 1.x,
    32 for the toy world)."""
    size = pipe.unet.config.sample_size
    height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    scale = getattr(pipe, "vae_scale_factor", None) or 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    return height * scale, width * scale


def prompt_lengths(pipe: Any, prompts: list[str]) -> list[int]:
    """Tokens per prompt as the text encoder would see them before truncation (BOS and EOS included,
    textual-inversion tokens expanded to their vectors, as the pipeline does)."""
    tokenizer = pipe.tokenizer
    convert = getattr(pipe, "maybe_convert_prompt", None)
    texts = [convert(p, tokenizer) if convert is not None else p for p in prompts]
    return [len(ids) for ids in tokenizer(texts, truncation=False)["input_ids"]]


def native_square_resolution(pipe: Any) -> int:
    """The side of the square images erase and invert train on when --resolution is left to the model."""
    height, width = native_resolution(pipe)
    return max(height, width)
