"""recare's own weight files applied to a loaded pipeline, with the record provenance keeps of each."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def apply_weight_files(bundle: Any, paths: Sequence[Path]) -> list[dict[str, Any]]:
    """Apply ``recare erase`` outputs to ``bundle``'s UNet in order; weights made for another base UNet than
    the loaded model's are refused (``models.weights.apply_unet_weights``)."""
    from recare_cli.models.fingerprint import state_fingerprint
    from recare_cli.models.weights import apply_unet_weights, read_safetensors

    applied: list[dict[str, Any]] = []
    for path in paths:
        tensors, _ = read_safetensors(path)
        meta = apply_unet_weights(bundle.pipe, path, base_unet=bundle.unet_fingerprint)
        applied.append({"path": str(path), "fingerprint": state_fingerprint(tensors),
                        "base_unet": meta.get("base_unet"), "tensors": len(tensors)})
    return applied
