"""Floating-point type names as the command line spells them, mapped to torch dtypes in one table."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

NAMES = ("fp32", "fp16", "bf16")
_TORCH = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def torch_dtype(name: str) -> torch.dtype:
    """``fp16`` → ``torch.float16``; the name must be one of :data:`NAMES`."""
    import torch

    return getattr(torch, _TORCH[name])


def dtype_name(dtype: Any) -> str:
    """``torch.float16`` → ``fp16``; other dtypes by their own name."""
    for name, attr in _TORCH.items():
        if str(dtype) == f"torch.{attr}":
            return name
    return str(dtype)
