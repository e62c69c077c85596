"""Device and dtype resolution shared by every model-loading command."""

from __future__ import annotations

from typing import TYPE_CHECKING

from recare_cli.dtypes import NAMES, dtype_name, torch_dtype
from recare_cli.errors import UsageError, check_choice

if TYPE_CHECKING:
    import torch

DEVICE_CHOICES = "auto, cpu, cuda, cuda:N, mps"
DTYPE_CHOICES = ("auto", *NAMES)
__all__ = ["DTYPE_CHOICES", "dtype_name", "resolve_device", "resolve_dtype"]


def resolve_device(spec: str) -> torch.device:
    import torch

    spec = spec.strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as err:
        raise UsageError(f"--device: unknown device '{spec}' (choose {DEVICE_CHOICES})") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {spec}: CUDA is not available on this machine")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) present")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError("--device mps: MPS is not available on this machine")
    if device.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"--device: unsupported device type '{device.type}' (choose {DEVICE_CHOICES})")
    return device


def resolve_dtype(spec: str, device: torch.device) -> torch.dtype:
    """``auto`` is fp16 on CUDA/MPS (inference halves memory at no measurable cost) and fp32 on CPU
    (CPU half-precision kernels are slow or missing)."""
    import torch

    spec = spec.strip().lower()
    if spec == "auto":
        return torch.float16 if device.type in ("cuda", "mps") else torch.float32
    check_choice("--dtype", spec, DTYPE_CHOICES, "dtype")
    return torch_dtype(spec)
