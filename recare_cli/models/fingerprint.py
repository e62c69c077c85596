"""Model fingerprints for provenance: identify weights, not file names or load paths.

A fingerprint hashes every tensor's name, shape and an evenly strided sample of up to 256 of its
values rounded to fp16, so the same weights loaded from a hub id, a local folder, in fp32 or fp16,
give the same fingerprint, while any fine-tune (which moves every trained tensor) changes it.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

SAMPLES_PER_TENSOR = 256


def state_fingerprint(state: dict[str, torch.Tensor]) -> str:
    import torch

    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach()
        flat = tensor.reshape(-1)
        stride = max(1, flat.numel() // SAMPLES_PER_TENSOR)
        sample = flat[::stride][:SAMPLES_PER_TENSOR].to(device="cpu", dtype=torch.float32)
        digest.update(name.encode())
        digest.update(repr(tuple(tensor.shape)).encode())
        digest.update(sample.to(torch.float16).numpy().tobytes())
    return "sha256:" + digest.hexdigest()[:16]


def module_fingerprint(module: torch.nn.Module) -> str:
    return state_fingerprint(module.state_dict())


def vocab_fingerprint(vocab: dict[str, int]) -> str:
    digest = hashlib.sha256()
    for token, index in sorted(vocab.items(), key=lambda kv: kv[1]):
        digest.update(f"{index}\t{token}\n".encode())
    return "sha256:" + digest.hexdigest()[:16]


def combine(*parts: Any) -> str:
    return "sha256:" + hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:16]
