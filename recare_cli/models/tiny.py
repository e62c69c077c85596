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


def build_tiny_sd(folder: Path, *, seed: int = 0, sample_size: int = 16) -> Path:
    """Save a tiny ``StableDiffusionPipeline`` folder (UNet with cross-attention, VAE, CLIP text
    encoder with the real vocabulary, PNDM scheduler, no safety checker)."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=sample_size, in_channels=4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
        attention_head_dim=8, norm_num_groups=32)
    torch.manual_seed(seed)
    vae = AutoencoderKL(block_out_channels=(32, 64), in_channels=3, out_channels=3,
                        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), latent_channels=4,
                        norm_num_groups=32, sample_size=2 * sample_size)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(**_text_config(32, 2, 32)))
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, skip_prk_steps=True, steps_offset=1,
                              set_alpha_to_one=False)
    folder.mkdir(parents=True, exist_ok=True)
    tok_dir = folder / "_tokenizer_tmp"
    save_clip_tokenizer(tok_dir)
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    pipe: Any = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                   unet=unet, scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
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
