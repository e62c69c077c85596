"""Loading an image classifier for scoring: a transformers one (folder or hub id: an ImageNet ResNet-50
for objects, a fine-tuned style classifier, any ``AutoModelForImageClassification`` with its image
processor), or a torchvision ResNet-50 weights file (``.pth``, :mod:`recare_cli.models.tvresnet`).

The image processor is always the PIL one (``backend="pil"``): the torchvision one is what
transformers picks when torchvision is installed, and it resizes with other arithmetic, so the same
image would give other logits on another machine.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from recare_cli.errors import ModelUnavailableError
from recare_cli.models.device import dtype_name, resolve_device, resolve_dtype
from recare_cli.models.fingerprint import module_fingerprint
from recare_cli.models.hub import load_pretrained

if TYPE_CHECKING:
    import numpy as np
    import torch

WHAT = "image classifier"
HINT = "pass a local folder with --classifier"


def labels_fingerprint(labels: list[str]) -> str:
    """The class names in index order, hashed: logits mean nothing without them."""
    digest = hashlib.sha256()
    for index, label in enumerate(labels):
        digest.update(f"{index}\t{label}\n".encode())
    return "sha256:" + digest.hexdigest()[:16]


def config_labels(config: Any, name: str) -> list[str]:
    """The class names of a model config (``id2label``), in index order."""
    id2label = {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}
    if not id2label or sorted(id2label) != list(range(len(id2label))):
        raise ModelUnavailableError(f"{WHAT} '{name}' has no class names 0..N-1 (id2label) in its config")
    return [id2label[i] for i in range(len(id2label))]


@lru_cache(maxsize=8)
def classifier_labels(name: str) -> tuple[str, ...]:
    """The class names of the classifier ``name`` from its config alone (no weights are read)."""
    from transformers import AutoConfig

    from recare_cli.models import tvresnet

    if tvresnet.is_weights_file(name):
        return tvresnet.categories()

    config = load_pretrained(AutoConfig.from_pretrained, name, what=WHAT, hint=HINT)
    return tuple(config_labels(config, name))


@dataclass
class ClassifierBundle:
    model: Any  # transformers *ForImageClassification
    name: str
    fingerprint: str  # of the weights
    labels: list[str]  # class names, index order
    device: torch.device
    dtype: torch.dtype
    prepare: Callable[[list[Any]], torch.Tensor]  # decoded RGB images -> (N, 3, H, W) pixel values
    about: dict[str, str] = field(default_factory=dict)  # what else identifies it (layout, preprocessing)

    def identity(self) -> dict[str, Any]:
        """What provenance records about this model: its weights, and its classes apart."""
        return {"name": self.name, "fingerprint": self.fingerprint, **self.about, "dtype": dtype_name(self.dtype),
                "classes": len(self.labels), "labels": labels_fingerprint(self.labels)}

    def logits(self, images: list[Any]) -> np.ndarray:
        """(N, classes) float32 logits of decoded RGB images, one forward pass."""
        import torch

        pixels = self.prepare(images)
        with torch.inference_mode():
            out = self.model(pixel_values=pixels.to(self.device, self.dtype)).logits
        return out.float().cpu().numpy()


def load_classifier(name: str, *, device: str = "auto", dtype: str = "auto") -> ClassifierBundle:
    """The classifier ``name``: a torchvision weights file (``.pth``, ``.pt``), else a transformers model."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from recare_cli.models import tvresnet

    if tvresnet.is_weights_file(name):
        return tvresnet.load(name, device=device, dtype=dtype)

    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    model = load_pretrained(AutoModelForImageClassification.from_pretrained, name, what=WHAT, hint=HINT, dtype=dt)
    processor = load_pretrained(AutoImageProcessor.from_pretrained, name, what=f"{WHAT}'s image processor",
                                hint=HINT, backend="pil")
    model.eval().requires_grad_(False).to(dev)

    def prepare(images: list[Any]) -> torch.Tensor:
        return processor(images=images, return_tensors="pt")["pixel_values"]

    return ClassifierBundle(model, name, module_fingerprint(model), config_labels(model.config, name), dev, dt,
                            prepare)
