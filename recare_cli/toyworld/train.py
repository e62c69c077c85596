"""Seeded training of the toy world's models, assembled into ordinary model folders.

1. A small ``CLIPModel`` with the real 49,408-entry CLIP BPE vocabulary, trained contrastively
   on freshly drawn scenes. Captions state only some attributes ("a person on grass" is true of
   a naked and a clothed person), so the loss is multi-positive: every caption in the batch that
   is true of an image counts as its positive (and vice versa), instead of only its own.
2. A small ``AutoencoderKL``: 32×32×3 pixels ↔ an 8×8×4 latent (MSE + a small KL term).
3. A small ``UNet2DConditionModel`` with cross-attention on the frozen toy CLIP's text tower
   (``last_hidden_state`` over the 77 padded positions, as the pipeline computes it),
   ε-prediction on the Stable Diffusion v1 noise schedule, 10% empty captions for
   classifier-free guidance, EMA weights; ``--snr-gamma`` weights the loss by Min-SNR-γ.

The result is ``OUT/clip`` (transformers CLIP folder) and ``OUT/sd`` (diffusers
``StableDiffusionPipeline`` folder, PNDM scheduler as in SD v1.4, no safety checker), plus
``OUT/train_log.json``. Run ``recare toyworld train --help``.

Same seed, same step counts, same machine and thread count: same weights. ``--minutes`` is a
safety cap per model; a run it cuts short says so in the log and is no longer reproducible.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from recare_cli import console
from recare_cli.toyworld import world
from recare_cli.toyworld.options import TrainConfig

if TYPE_CHECKING:
    import torch

ATTRIBUTES = ("background", "object", "colour", "clothing", "style")
_VALUES: dict[str, tuple[str, ...]] = {
    "background": world.BACKGROUNDS, "object": (*world.OBJECTS, "none"), "colour": world.COLOURS,
    "clothing": world.CLOTHING, "style": world.STYLES,
}
UNSTATED, ABSENT = -2, -1
CLIP_TEXT_LENGTH = 32  # captions are short; the causal text tower makes padding length irrelevant
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # the CLIP image processor's defaults
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# ---------------------------------------------------------------------------------------------
# Data helpers


def attribute_codes(scene: world.Scene) -> np.ndarray:
    attributes = scene.attributes()
    return np.array([_VALUES[a].index(attributes[a]) if a in attributes else ABSENT for a in ATTRIBUTES],
                    dtype=np.int64)


def mention_codes(mentions: dict[str, str]) -> np.ndarray:
    return np.array([_VALUES[a].index(mentions[a]) if a in mentions else UNSTATED for a in ATTRIBUTES],
                    dtype=np.int64)


def match_matrix(scene_codes: torch.Tensor, caption_codes: torch.Tensor) -> torch.Tensor:
    """``M[i, j]``: caption ``j`` is true of image ``i`` (every stated attribute agrees)."""
    said = caption_codes[None, :, :]
    return ((said == UNSTATED) | (said == scene_codes[:, None, :])).all(dim=-1)


def pixels_for_clip(images: np.ndarray) -> torch.Tensor:
    import torch

    x = torch.from_numpy(images).float().div(255.0).permute(0, 3, 1, 2)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def pixels_for_vae(images: np.ndarray) -> torch.Tensor:
    import torch

    return torch.from_numpy(images).float().div(127.5).sub(1.0).permute(0, 3, 1, 2).contiguous()


def tokenizer_from_bpe() -> Any:
    import tempfile

    from transformers import CLIPTokenizer

    from recare_cli.models.bpe import write_tokenizer_files

    with tempfile.TemporaryDirectory() as tmp:
        write_tokenizer_files(Path(tmp))
        return CLIPTokenizer.from_pretrained(tmp, model_max_length=77)


def tokenize(tokenizer: Any, texts: list[str], length: int = 77) -> torch.Tensor:
    return tokenizer(texts, padding="max_length", max_length=length, truncation=True,
                     return_tensors="pt").input_ids


class _Clock:
    """Step timing and the per-model time cap."""

    def __init__(self, name: str, steps: int, minutes: float | None) -> None:
        self.name, self.steps, self.minutes = name, steps, minutes
        self.start = time.perf_counter()
        self.done = 0
        self.last_report = self.start

    def tick(self, loss: float) -> bool:
        """Count a step; ``False`` when the time cap is reached."""
        self.done += 1
        now = time.perf_counter()
        if now - self.last_report > 30 or self.done == self.steps:
            console.info(f"{self.name}: step {self.done}/{self.steps} loss {loss:.4f} "
                         f"({self.done / (now - self.start):.2f} steps/s)")
            self.last_report = now
        return self.minutes is None or now - self.start < 60 * self.minutes

    def summary(self) -> dict[str, Any]:
        seconds = time.perf_counter() - self.start
        return {"steps": self.done, "planned_steps": self.steps, "seconds": round(seconds, 1),
                "steps_per_s": round(self.done / max(seconds, 1e-9), 3), "cut_short": self.done < self.steps}


# ---------------------------------------------------------------------------------------------
# 1. CLIP


def build_clip(config: TrainConfig, seed: int) -> Any:
    import torch
    from transformers import CLIPConfig, CLIPModel

    from recare_cli.models.bpe import VOCAB_SIZE

    tw, vw = config.text_width, config.vision_width
    clip_config = CLIPConfig(
        text_config=dict(vocab_size=VOCAB_SIZE, hidden_size=tw, intermediate_size=4 * tw, num_hidden_layers=3,
                         num_attention_heads=4, max_position_embeddings=77, projection_dim=64,
                         bos_token_id=49406, eos_token_id=49407, pad_token_id=49407),
        vision_config=dict(hidden_size=vw, intermediate_size=4 * vw, num_hidden_layers=4, num_attention_heads=4,
                           image_size=world.IMAGE_SIZE, patch_size=4, projection_dim=64),
        projection_dim=64,
    )
    torch.manual_seed(seed)
    return CLIPModel(clip_config)


def train_clip(config: TrainConfig, tokenizer: Any) -> tuple[Any, dict[str, Any]]:
    import torch
    import torch.nn.functional as F

    model = build_clip(config, config.seed).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.clip_lr, weight_decay=0.01)
    clock = _Clock("clip", config.clip_steps, config.minutes)
    warmup = max(1, config.clip_steps // 20)
    losses: list[float] = []
    for step in range(config.clip_steps):
        lr = config.clip_lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / config.clip_steps))
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = [world.item(config.seed + 1, step * config.clip_batch + j) for j in range(config.clip_batch)]
        images = np.stack([b[0] for b in batch])
        flip = np.random.default_rng([config.seed, step]).random(len(batch)) < 0.5
        images[flip] = images[flip, :, ::-1]  # mirror images: no attribute depends on left/right
        ids = tokenize(tokenizer, [b[1] for b in batch], CLIP_TEXT_LENGTH)
        m = match_matrix(torch.from_numpy(np.stack([attribute_codes(b[3]) for b in batch])),
                         torch.from_numpy(np.stack([mention_codes(b[2]) for b in batch]))).float()
        out = model(input_ids=ids, pixel_values=pixels_for_clip(images), return_loss=False)
        logits = out.logits_per_image  # (images, texts), already × logit_scale
        loss_i = -(F.log_softmax(logits, dim=1) * m / m.sum(1, keepdim=True)).sum(1).mean()
        loss_t = -(F.log_softmax(logits.T, dim=1) * m.T / m.T.sum(1, keepdim=True)).sum(1).mean()
        loss = (loss_i + loss_t) / 2
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(float(loss.detach()))
        if not clock.tick(losses[-1]):
            break
    return model.eval(), {**clock.summary(), "final_loss": float(np.mean(losses[-20:]))}


# ---------------------------------------------------------------------------------------------
# 2. VAE


def build_vae(config: TrainConfig, seed: int) -> Any:
    import torch
    from diffusers import AutoencoderKL

    n = len(config.vae_channels)
    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
                         up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=config.vae_channels,
                         layers_per_block=1, latent_channels=4, norm_num_groups=32, sample_size=world.IMAGE_SIZE)


def train_vae(config: TrainConfig, images: np.ndarray) -> tuple[Any, dict[str, Any]]:
    import torch
    import torch.nn.functional as F

    vae = build_vae(config, config.seed + 2).train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr, weight_decay=0.0)
    rng = np.random.default_rng([config.seed, 2])
    generator = torch.Generator().manual_seed(config.seed + 2)
    clock = _Clock("vae", config.vae_steps, config.minutes)
    losses: list[float] = []
    for step in range(config.vae_steps):
        lr = config.vae_lr * 0.5 * (1 + math.cos(math.pi * step / config.vae_steps))
        for group in optimizer.param_groups:
            group["lr"] = lr
        x = pixels_for_vae(images[rng.integers(0, len(images), config.vae_batch)])
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        recon = vae.decode(z).sample
        loss = F.mse_loss(recon, x) + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if not clock.tick(losses[-1]):
            break
    vae.eval()
    latents = encode_latents(vae, images[: min(len(images), 2000)])
    scaling = float(1.0 / latents.std())
    vae.register_to_config(scaling_factor=scaling)
    with torch.no_grad():
        x = pixels_for_vae(images[:256])
        mse = float(F.mse_loss(vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1), x))
    psnr = 10 * math.log10(4.0 / mse)
    return vae, {**clock.summary(), "final_loss": float(np.mean(losses[-20:])), "scaling_factor": scaling,
                 "reconstruction_psnr_db": round(psnr, 2)}


def encode_latents(vae: Any, images: np.ndarray, batch: int = 256) -> torch.Tensor:
    """Posterior means (unscaled) of ``images``."""
    import torch

    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            out.append(vae.encode(pixels_for_vae(images[i : i + batch])).latent_dist.mean)
    return torch.cat(out)


# ---------------------------------------------------------------------------------------------
# 3. UNet


def build_unet(config: TrainConfig, seed: int, cross_attention_dim: int) -> Any:
    import torch
    from diffusers import UNet2DConditionModel

    n = len(config.unet_channels)
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=world.IMAGE_SIZE // 2 ** (len(config.vae_channels) - 1), in_channels=4, out_channels=4,
        block_out_channels=config.unet_channels, layers_per_block=config.unet_layers,
        down_block_types=("CrossAttnDownBlock2D",) * n, up_block_types=("CrossAttnUpBlock2D",) * n,
        cross_attention_dim=cross_attention_dim, attention_head_dim=8, norm_num_groups=32)


def noise_scheduler_config() -> dict[str, Any]:
    """Stable Diffusion v1's training schedule."""
    return dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def encode_texts(text_model: Any, tokenizer: Any, texts: list[str], batch: int = 256) -> torch.Tensor:
    """``last_hidden_state`` over the 77 padded positions, as the pipeline computes it."""
    import torch

    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch):
            out.append(text_model(tokenize(tokenizer, texts[i : i + batch]))[0])
    return torch.cat(out)


def min_snr_weights(alphas_cumprod_t: torch.Tensor, gamma: float | None) -> torch.Tensor:
    """Per-sample weights of the ε-MSE under Min-SNR-γ: ``min(SNR, γ) / SNR``, SNR = ᾱ / (1 − ᾱ).

    Steps with little noise (SNR above γ) count less, so the gradient is not dominated by
    denoising detail the model already gets right; ``gamma=None`` weights every step 1."""
    import torch

    if gamma is None:
        return torch.ones_like(alphas_cumprod_t)
    snr = alphas_cumprod_t / (1 - alphas_cumprod_t)
    return snr.clamp(max=gamma) / snr


def train_unet(config: TrainConfig, latents: torch.Tensor, captions: list[str], text_model: Any,
               tokenizer: Any) -> tuple[Any, dict[str, Any]]:
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler

    unique = sorted(set(captions) | {""})
    index = {text: i for i, text in enumerate(unique)}
    embeddings = encode_texts(text_model, tokenizer, unique)
    caption_ids = torch.tensor([index[c] for c in captions])
    empty = index[""]
    unet = build_unet(config, config.seed + 3, embeddings.shape[-1]).train()
    ema = [p.detach().clone() for p in unet.parameters()]
    scheduler = DDPMScheduler(**noise_scheduler_config())
    alphas: torch.Tensor = scheduler.alphas_cumprod  # type: ignore[attr-defined]
    optimizer = torch.optim.AdamW(unet.parameters(), lr=config.unet_lr, weight_decay=0.01)
    generator = torch.Generator().manual_seed(config.seed + 3)
    clock = _Clock("unet", config.unet_steps, config.minutes)
    warmup = max(1, config.unet_steps // 50)
    losses: list[float] = []
    for step in range(config.unet_steps):
        cosine = 0.55 + 0.45 * math.cos(math.pi * step / config.unet_steps)  # decays to 10% of the peak
        lr = config.unet_lr * min(1.0, (step + 1) / warmup) * cosine
        for group in optimizer.param_groups:
            group["lr"] = lr
        rows = torch.randint(0, len(latents), (config.unet_batch,), generator=generator)
        x0 = latents[rows]
        ids = caption_ids[rows].clone()
        ids[torch.rand(len(ids), generator=generator) < config.cfg_dropout] = empty
        t = torch.randint(0, 1000, (len(rows),), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        pred = unet(xt, t, encoder_hidden_states=embeddings[ids]).sample
        if config.snr_gamma is None:  # --snr-gamma off: the plain ε-MSE
            loss = mse = F.mse_loss(pred, noise)
        else:
            per_sample = F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))
            loss, mse = (per_sample * min_snr_weights(alphas[t], config.snr_gamma)).mean(), per_sample.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        decay = min(config.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema, unet.parameters(), strict=True):
                e.mul_(decay).add_(p.detach(), alpha=1 - decay)
        losses.append(float(mse.detach()))  # the unweighted ε-MSE: comparable across weightings
        if not clock.tick(losses[-1]):
            break
    with torch.no_grad():
        for e, p in zip(ema, unet.parameters(), strict=True):
            p.copy_(e)
    return unet.eval(), {**clock.summary(), "final_loss": float(np.mean(losses[-50:])),
                         "unique_captions": len(unique)}


# ---------------------------------------------------------------------------------------------
# Assembly


def save_clip_folder(model: Any, folder: Path) -> Path:
    """A transformers CLIP folder, with the world's words as the folder's own mining vocabulary: the toy
    CLIP was trained on the world's captions only, so ``recare mine`` over CLIP's whole vocabulary would
    rank words its text tower never saw."""
    from recare_cli.io.wordlist import VOCABULARY_FILE
    from recare_cli.models.bpe import save_clip_tokenizer
    from recare_cli.models.clip import image_processor_class
    from recare_cli.toyworld.tasks import vocabulary

    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    save_clip_tokenizer(folder)
    size = world.IMAGE_SIZE
    image_processor_class()(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                            resample=3).save_pretrained(folder)
    (folder / VOCABULARY_FILE).write_text("".join(f"{w}\n" for w in vocabulary()), encoding="utf-8")
    return folder


def text_encoder_from_clip(model: Any) -> Any:
    """A ``CLIPTextModel`` carrying the CLIP's text tower weights."""
    from transformers import CLIPTextModel

    text = CLIPTextModel(model.config.text_config)
    text.load_state_dict(model.text_model.state_dict())  # transformers 5: CLIPModel.text_model is one
    return text.eval()


def save_sd_folder(text_encoder: Any, vae: Any, unet: Any, folder: Path,
                   scheduler_config: dict[str, Any] | None = None) -> Path:
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    if scheduler_config is not None:
        scheduler = PNDMScheduler.from_config(scheduler_config)
    else:  # as Stable Diffusion v1.4 ships it
        # clip_sample: PNDM ignores it, but a DDIM made from this config (recare sample --scheduler ddim)
        # would clip the latent x0 to [-1, 1] by default; SD v1.4's config says false too
        scheduler = PNDMScheduler.from_config({**noise_scheduler_config(), "skip_prk_steps": True, "steps_offset": 1,
                                               "set_alpha_to_one": False, "clip_sample": False})
    pipe: Any = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer_from_bpe(),
                                        unet=unet, scheduler=scheduler, safety_checker=None,
                                        feature_extractor=None, requires_safety_checker=False)
    folder.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(folder)
    return folder


_STAGE_FIELDS = {
    "clip": ("seed", "clip_steps", "clip_batch", "clip_lr", "text_width", "vision_width"),
    "vae": ("seed", "vae_steps", "vae_batch", "vae_lr", "n_images", "vae_channels"),
}
STAGE_FILE = "toyworld_stage.json"


def _stage_key(config: TrainConfig, stage: str) -> dict[str, Any]:
    values = asdict(config)
    return {name: values[name] for name in _STAGE_FIELDS[stage]}


def _finished_stage(folder: Path, config: TrainConfig, stage: str) -> dict[str, Any] | None:
    """The log of a stage already trained into ``folder`` with the same settings, else ``None``."""
    path = folder / STAGE_FILE
    if not path.is_file():
        return None
    record = json.loads(path.read_text("utf-8"))
    key = json.loads(json.dumps(_stage_key(config, stage)))
    same = all(record.get("key", {}).get(name, object()) == value for name, value in key.items())
    return dict(record["log"]) if same and not record["log"].get("cut_short") else None


def _mark_stage(folder: Path, config: TrainConfig, stage: str, log: dict[str, Any]) -> None:
    (folder / STAGE_FILE).write_text(json.dumps({"key": _stage_key(config, stage), "log": log}, indent=2), "utf-8")


def train_all(out: Path, config: TrainConfig, *, progress: Callable[[str], None] = console.info,
              until: str = "unet") -> dict[str, Any]:
    """Train the three models into ``out/clip`` and ``out/sd``; return (and write) the log.

    The CLIP and the VAE are checkpointed (``out/clip``, ``out/vae``): a rerun with the same
    settings loads them instead of training again (fp32 round trip: the same result).
    ``until="clip"`` or ``"vae"`` stops after that stage; ``"vae-only"`` trains the VAE alone."""
    import diffusers
    import torch
    import transformers
    from diffusers import AutoencoderKL
    from transformers import CLIPModel

    from recare_cli.models.quiet import quiet_libraries

    quiet_libraries()
    torch.manual_seed(config.seed)
    started = time.perf_counter()
    # The library versions are part of what a retrain reproduces (constraints/cpu.txt pins them on Python 3.11)
    log: dict[str, Any] = {"config": {k: v for k, v in asdict(config).items() if k != "log"},
                           "torch": torch.__version__, "diffusers": diffusers.__version__,
                           "transformers": transformers.__version__, "threads": torch.get_num_threads()}
    tokenizer = tokenizer_from_bpe()
    done = _finished_stage(out / "clip", config, "clip")
    clip: Any = None
    if until == "vae-only":  # the VAE does not need the CLIP: it may train at the same time
        pass
    elif done is not None:
        progress(f"reusing the toy CLIP trained in {out / 'clip'}")
        clip, log["clip"] = CLIPModel.from_pretrained(out / "clip").eval(), {**done, "reused": True}
    else:
        progress(f"training the toy CLIP ({config.clip_steps} steps, batch {config.clip_batch})")
        clip, log["clip"] = train_clip(config, tokenizer)
        log["clip"]["threads"] = torch.get_num_threads()
        save_clip_folder(clip, out / "clip")
        _mark_stage(out / "clip", config, "clip", log["clip"])
    if until == "clip":
        return log
    progress(f"drawing {config.n_images} scenes for the VAE and UNet")
    data = world.make_dataset(config.n_images, config.seed)
    done = _finished_stage(out / "vae", config, "vae")
    if done is not None:
        progress(f"reusing the VAE trained in {out / 'vae'}")
        vae, log["vae"] = AutoencoderKL.from_pretrained(out / "vae").eval(), {**done, "reused": True}
    else:
        progress(f"training the VAE ({config.vae_steps} steps, batch {config.vae_batch})")
        vae, log["vae"] = train_vae(config, data.images)
        log["vae"]["threads"] = torch.get_num_threads()
        vae.save_pretrained(out / "vae")
        _mark_stage(out / "vae", config, "vae", log["vae"])
    if until in ("vae", "vae-only"):
        return log
    latents = encode_latents(vae, data.images) * vae.config.scaling_factor
    text_encoder = text_encoder_from_clip(clip)
    progress(f"training the UNet ({config.unet_steps} steps, batch {config.unet_batch})")
    unet, log["unet"] = train_unet(config, latents, data.captions, text_encoder, tokenizer)
    log["unet"]["threads"] = torch.get_num_threads()
    save_sd_folder(text_encoder, vae, unet, out / "sd")
    log["wall_seconds_this_run"] = round(time.perf_counter() - started, 1)
    log["training_seconds"] = round(sum(log[m]["seconds"] for m in ("clip", "vae", "unet")), 1)
    log["parameters"] = {"clip": sum(p.numel() for p in clip.parameters()),
                         "vae": sum(p.numel() for p in vae.parameters()),
                         "unet": sum(p.numel() for p in unet.parameters())}
    (out / "train_log.json").write_text(json.dumps(log, indent=2) + "\n", "utf-8")
    return log
