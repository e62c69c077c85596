"""Inception features of images as clean-fid's "clean" mode computes them (clean-fid 0.1.35,
``resize.make_resizer("PIL", False, "bicubic", (299, 299))``, ``utils.ResizeDataset``,
``inception_torchscript.InceptionV3W``).

An image (H, W, 3) uint8 is resized channel by channel as a float32 PIL image (mode ``F``) with
bicubic filtering to 299 x 299, clipped to [0, 255] and kept in float32, never quantised to 8 bits;
torchvision's ``ToTensor`` then only moves the channels first (it scales uint8 input alone); the
network's input is ``(x - 128) / 128`` and the features are its ``layers`` output, (N, 2048) float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

SIZE = 299  # the network's input side
DIM = 2048  # the pool3 features


def clean_resize(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 to (299, 299, 3) float32 in [0, 255]: each channel a float PIL image, bicubic."""
    from PIL import Image

    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {rgb.shape}")
    channels = []
    for c in range(3):
        image = Image.fromarray(np.ascontiguousarray(rgb[:, :, c], dtype=np.float32))  # mode F
        channels.append(np.asarray(image.resize((SIZE, SIZE), resample=Image.Resampling.BICUBIC)).clip(0, 255))
    return np.stack(channels, axis=2).astype(np.float32)


@torch.no_grad()
def inception_features(model: Any, resized: Sequence[np.ndarray], device: torch.device | str) -> np.ndarray:
    """The (N, 2048) float32 features of images resized by :func:`clean_resize`, one forward pass of
    ``model.layers`` (the TorchScript's layers, which take the normalised 299 x 299 input)."""
    if not len(resized):
        return np.zeros((0, DIM), np.float32)
    x = torch.from_numpy(np.stack([r.transpose(2, 0, 1) for r in resized])).to(device)
    x = (x - 128) / 128
    return model.layers.forward(x).view(len(resized), DIM).detach().cpu().numpy()
