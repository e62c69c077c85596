"""Tiny, randomly initialised CLIP and Stable Diffusion models built from configs.

They carry the real 49,408-entry CLIP BPE vocabulary, so tokenisation and vocabulary mining behave
as at full size, and are saved as ordinary folders that load through the normal loading code. The
tests and the offline demo use them; their outputs are meaningless (untrained weights).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recare_cli.models.bpe import VOCAB_SIZE, save_clip_tokenizer

TINY_IMAGE_SIZE = 32


def _text_config(width: int, layers: int, projection: int) -> dict[str, Any]:
    return dict(vocab_size=VOCAB_SIZE, hidden_size=width, intermediate_size=2 * width,
                num_hidden_layers=layers, num_attention_heads=2, max_position_embeddings=77,
                projection_dim=projection, bos_token_id=49406, eos_token_id=49407,
                pad_token_id=49407)


def build_tiny_clip(folder: Path, *, seed: int = 0, width: int = 32, projection: int = 32,
                    image_size: int = TINY_IMAGE_SIZE) -> Path:
    """Save a tiny ``CLIPModel`` + tokenizer + image processor to ``folder`` and return it."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    from recare_cli.models.clip import image_processor_class

    config = CLIPConfig(
        text_config=_text_config(width, 2, projection),
        vision_config=dict(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                           num_attention_heads=2, image_size=image_size, patch_size=8,
                           projection_dim=projection),
        projection_dim=projection,
    )
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    save_clip_tokenizer(folder)
    image_processor_class()(size={"shortest_edge": image_size},
                       crop_size={"height": image_size, "width": image_size}).save_pretrained(folder)
    return folder


def _tiny_vae(seed: int, sample_size: int) -> Any:
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(block_out_channels=(32, 64), in_channels=3, out_channels=3,
                         down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                         up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), latent_channels=4,
                         norm_num_groups=32, sample_size=2 * sample_size)


def _save_pipeline(folder: Path, *, unet: Any, vae: Any, text_encoder: Any, scheduler: Any,
                   **tokenizer_options: Any) -> Path:
    """Save the components as a ``StableDiffusionPipeline`` folder with the real CLIP vocabulary."""
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    tok_dir = folder / "_tokenizer_tmp"
    save_clip_tokenizer(tok_dir)
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir, **tokenizer_options)
    pipe: Any = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                   unet=unet, scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder)
    for f in tok_dir.iterdir():
        f.unlink()
    tok_dir.rmdir()
    return folder


def build_tiny_sd(folder: Path, *, seed: int = 0, sample_size: int = 16) -> Path:
    """Save a tiny ``StableDiffusionPipeline`` folder (UNet with cross-attention, VAE, CLIP text
    encoder with the real vocabulary, PNDM scheduler, no safety checker)."""
    import torch
    from diffusers import PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=sample_size, in_channels=4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
        attention_head_dim=8, norm_num_groups=32)
    vae = _tiny_vae(seed, sample_size)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(**_text_config(32, 2, 32)))
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, skip_prk_steps=True, steps_offset=1,
                              set_alpha_to_one=False)
    return _save_pipeline(folder, unet=unet, vae=vae, text_encoder=text_encoder, scheduler=scheduler)


def build_tiny_sd2(folder: Path, *, seed: int = 0, sample_size: int = 16,
                   prediction_type: str = "v_prediction") -> Path:
    """Save a tiny SD 2.x-style ``StableDiffusionPipeline`` folder: the UNet with SD 2's linear projections
    in its transformers and a per-block list of head dimensions, a text encoder configured as SD 2's
    converted OpenCLIP-H (gelu activation, its token ids 0/2/1 for start/end/padding, a projection width
    of its own), a tokenizer that pads with ``!`` as SD 2's does, and a DDIM scheduler that predicts
    ``prediction_type`` (v, as SD 2.x at 768 px; ``epsilon`` as SD 2.x-base)."""
    import torch
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=sample_size, in_channels=4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
        attention_head_dim=(2, 4), use_linear_projection=True, norm_num_groups=32)
    vae = _tiny_vae(seed, sample_size)
    torch.manual_seed(seed)
    config = {**_text_config(32, 2, 64), "hidden_act": "gelu", "bos_token_id": 0, "eos_token_id": 2,
              "pad_token_id": 1, "layer_norm_eps": 1e-5}
    text_encoder = CLIPTextModel(CLIPTextConfig(**config))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, clip_sample=False, set_alpha_to_one=False,
                              steps_offset=1, prediction_type=prediction_type)
    return _save_pipeline(folder, unet=unet, vae=vae, text_encoder=text_encoder, scheduler=scheduler,
                          pad_token="!")


def build_tiny_sdxl(folder: Path, *, seed: int = 0, sample_size: int = 16) -> Path:
    """Save a tiny ``StableDiffusionXLPipeline`` folder, built as diffusers' own SDXL tests build theirs: a UNet
    with SD 2's linear projections, ``addition_embed_type="text_time"`` (pooled text embedding plus six time ids
    of ``addition_time_embed_dim`` each) and cross-attention over both encoders' states concatenated; a
    ``CLIPTextModel`` configured as SDXL's CLIP ViT-L (SD 1's) and a ``CLIPTextModelWithProjection`` as its
    OpenCLIP bigG (gelu, token ids 0/2/1, a tokenizer that pads with ``!``), of different widths (32 and 48, as
    768 and 1280 differ) so a swapped encoder shows; an Euler scheduler with leading timestep spacing as SDXL
    base's. Both tokenizers carry the real CLIP vocabulary."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    width_1, width_2, projection, time_dim = 32, 48, 40, 8
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=sample_size, in_channels=4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=time_dim,
        transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=6 * time_dim + projection,
        cross_attention_dim=width_1 + width_2, norm_num_groups=32)
    vae = _tiny_vae(seed, sample_size)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(**_text_config(width_1, 2, 32)))
    config_2 = {**_text_config(width_2, 2, projection), "hidden_act": "gelu", "bos_token_id": 0, "eos_token_id": 2,
                "pad_token_id": 1, "layer_norm_eps": 1e-5}
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**config_2))
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       num_train_timesteps=1000, steps_offset=1, timestep_spacing="leading")
    folder.mkdir(parents=True, exist_ok=True)
    tok_dir = folder / "_tokenizer_tmp"
    save_clip_tokenizer(tok_dir)
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    tokenizer_2 = CLIPTokenizer.from_pretrained(tok_dir, pad_token="!")
    pipe: Any = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                          tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet,
                                          scheduler=scheduler, add_watermarker=False)
    pipe.save_pretrained(folder)
    for f in tok_dir.iterdir():
        f.unlink()
    tok_dir.rmdir()
    return folder


# Test images for the tiny models (and the vocabulary benchmark): a coloured shape on noise.
SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 210, 40)}


def draw_images(folder: Path, n: int, *, seed: int, size: int = 64) -> list[Path]:
    """Deterministic procedural images: a coloured shape on a noisy background."""
    import numpy as np
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        shape = SHAPES[i % len(SHAPES)]
        colour = list(COLOURS.values())[(i // len(SHAPES)) % len(COLOURS)]
        background = rng.integers(0, 80, size=(size, size, 3), dtype=np.uint8)
        image = Image.fromarray(background, "RGB")
        draw = ImageDraw.Draw(image)
        lo, hi = int(size * 0.2), int(size * 0.8)
        box = (lo, lo, hi, hi)
        if shape == "circle":
            draw.ellipse(box, fill=colour)
        elif shape == "square":
            draw.rectangle(box, fill=colour)
        else:
            draw.polygon([(size // 2, lo), (hi, hi), (lo, hi)], fill=colour)
        path = folder / f"img_{i:04d}.png"
        image.save(path)
        paths.append(path)
    return paths
