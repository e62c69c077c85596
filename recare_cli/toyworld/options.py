"""What the toy world's commands are asked: the training recipe (TrainConfig) and the options of
``recare toyworld train`` and ``recare toyworld evaluate``. Plain dataclasses, light to import: the command
line takes its defaults from these fields."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any


@dataclass
class TrainConfig:
    seed: int = 0
    clip_steps: int = 800
    clip_batch: int = 256
    clip_lr: float = 1e-3
    vae_steps: int = 600
    vae_batch: int = 64
    vae_lr: float = 1e-3
    unet_steps: int = 900  # with Min-SNR-5; the plain ε-MSE (snr_gamma None) needs about 1,900 (docs/toyworld.md)
    unet_batch: int = 128
    unet_lr: float = 5e-4
    n_images: int = 8000  # the fixed set the VAE and UNet see (the CLIP sees fresh scenes)
    cfg_dropout: float = 0.1
    ema_decay: float = 0.995  # a ~200-step window: short runs still improve fast at the end
    snr_gamma: float | None = 5.0  # Min-SNR-γ loss weighting of the UNet (Hang et al. 2023); None: plain ε-MSE
    minutes: float | None = None  # safety cap per model
    text_width: int = 64
    vision_width: int = 96
    unet_channels: tuple[int, ...] = (64, 128)
    unet_layers: int = 2  # resnet + attention layers per down block (up blocks have one more)
    vae_channels: tuple[int, ...] = (32, 64, 64)
    log: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def quick(cls, seed: int = 0) -> TrainConfig:
        """A smoke run: a few steps of every model, tiny widths. The models are untrained."""
        return cls(seed=seed, clip_steps=3, clip_batch=16, vae_steps=3, vae_batch=8, unet_steps=3, unet_batch=8,
                   n_images=32, text_width=32, vision_width=32, unet_channels=(32, 32), vae_channels=(32, 32, 32))


def snr_gamma_value(text: str) -> float | None:
    """``--snr-gamma``: a γ above 0, or ``off`` (None: the plain ε-MSE); ValueError says what is wrong."""
    if text.strip().lower() == "off":
        return None
    try:
        gamma = float(text)
    except ValueError:
        gamma = math.nan
    if not gamma > 0:
        raise ValueError(f"must be above 0 or 'off' (got {text})")
    return gamma


STAGES = ("clip", "vae", "vae-only", "unet")  # train --until: stop after this stage


@dataclass(frozen=True)
class TrainOptions:
    """``recare toyworld train``: the recipe (TrainConfig, or its quick variant) with the fields asked for set.
    ``None`` leaves a field as the recipe has it."""

    out: Path
    seed: int = TrainConfig.seed
    quick: bool = False
    clip_steps: int | None = None
    vae_steps: int | None = None
    unet_steps: int | None = None
    clip_batch: int | None = None
    vae_batch: int | None = None
    unet_batch: int | None = None
    n_images: int | None = None
    unet_layers: int | None = None
    snr_gamma: str | None = None  # a γ above 0, or "off"
    minutes: float | None = TrainConfig.minutes
    until: str = "unet"  # one of STAGES
    threads: int | None = None  # torch CPU threads; None: torch's choice

    def config(self) -> TrainConfig:
        """The TrainConfig these options ask for; ValueError names a bad --snr-gamma."""
        config = TrainConfig.quick(self.seed) if self.quick else TrainConfig(seed=self.seed)
        config = replace(config, minutes=self.minutes)
        if self.snr_gamma is not None:
            try:
                config.snr_gamma = snr_gamma_value(self.snr_gamma)
            except ValueError as err:
                raise ValueError(f"--snr-gamma: {err}") from err
        for name in ("clip_steps", "vae_steps", "unet_steps", "clip_batch", "vae_batch", "unet_batch", "n_images",
                     "unet_layers"):
            if getattr(self, name) is not None:
                setattr(config, name, getattr(self, name))
        return config


@dataclass(frozen=True)
class EvaluateOptions:
    """``recare toyworld evaluate``: which models to measure, on how many held-out scenes, sampled how."""

    clip: Path | None = None  # None: the shipped world's CLIP
    sd: Path | None = None  # None: the CLIP alone
    n_clip: int = 1000
    n_sd: int = 64
    steps: int = 50
    guidance: float = 7.5
    scheduler: str = "default"  # a `recare sample --scheduler` name
    no_clip: bool = False  # the samples alone, without the CLIP's own accuracy
    grid: Path | None = None
    threads: int | None = None  # torch CPU threads; None: torch's choice


@dataclass(frozen=True)
class ShipOptions:
    """``recare toyworld ship``: a trained world's folder, the evaluation report to record, where to write."""

    trained: Path
    report: Path | None = None
    dest: Path | None = None  # None: the package data folder


@dataclass(frozen=True)
class DetectorOptions:
    """``recare toyworld detector``: the detector's training and where its weights go (exactly one of ``ship``,
    into the package data and its manifest, and ``out``, a file)."""

    train: int = 20_000  # training scenes
    epochs: int = 3
    seed: int = 0
    threads: int = 2
    ship: bool = False
    out: Path | None = None
