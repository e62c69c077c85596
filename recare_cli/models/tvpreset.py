"""torchvision's image-classification preset for ResNet-50 ``IMAGENET1K_V2`` on PIL images, without torchvision.

``ResNet50_Weights.IMAGENET1K_V2.transforms()`` is ``ImageClassification(crop_size=224, resize_size=232)``
(torchvision ``transforms/_presets.py``); on a PIL image its steps, as ``transforms/functional.py`` and
``_functional_pil.py`` compute them, are:

1. resize: the shorter side to 232, the longer to ``int(232 * long / short)`` (truncated), with
   ``PIL.Image.resize(size, BILINEAR)`` (PIL always antialiases); an image already of that size is
   left as it is;
2. centre crop 224 × 224 at ``top = int(round((height - 224) / 2.0))`` and likewise ``left``: Python's
   ``round``, which rounds halves to even (a 233-pixel side is cropped from 4, a 235-pixel one from 6).
   The shorter side is then 232 ≥ 224, so torchvision's zero padding of small images never applies;
3. the uint8 pixels as a float32 (3, H, W) tensor divided by 255;
4. normalise: subtract the ImageNet mean and divide by its standard deviation, per channel, in float32.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

RESIZE = 232
CROP = 224
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
DESCRIPTION = "torchvision ImageClassification: PIL bilinear shorter side 232, centre crop 224, ImageNet mean/std"


def resized_size(width: int, height: int, short: int = RESIZE) -> tuple[int, int]:
    """(width, height) once the shorter side is ``short``: the longer side scaled and truncated."""
    if width <= height:
        return short, int(short * height / width)
    return int(short * width / height), short


def crop_box(width: int, height: int, crop: int = CROP) -> tuple[int, int, int, int]:
    """The centre crop's (left, top, right, bottom), as PIL's ``Image.crop`` takes it."""
    top = round((height - crop) / 2.0)  # torchvision: int(round(...)); round of a float is an int
    left = round((width - crop) / 2.0)
    return left, top, left + crop, top + crop


def preset(image: Any) -> torch.Tensor:
    """One RGB PIL image as the (3, 224, 224) float32 tensor torchvision's preset makes of it."""
    import numpy as np
    import torch
    from PIL import Image

    if image.mode != "RGB":
        image = image.convert("RGB")
    size = resized_size(*image.size)
    if size != image.size:
        image = image.resize(size, Image.Resampling.BILINEAR)
    image = image.crop(crop_box(*image.size))
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1)
    x = pixels.to(torch.float32) / 255.0
    mean = torch.tensor(MEAN, dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(STD, dtype=torch.float32).view(-1, 1, 1)
    return x.sub_(mean).div_(std)


def batch(images: list[Any]) -> torch.Tensor:
    """(N, 3, 224, 224) float32 of RGB PIL images."""
    import torch

    return torch.stack([preset(image) for image in images])
