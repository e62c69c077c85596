"""Model fingerprints for provenance: identify weights, not file names or load paths.

A fingerprint hashes every tensor's name, shape and *every* value, floating-point values rounded to
fp16 (integer buffers exactly), so the same weights loaded from a hub id or a local folder, in fp32 or
fp16, give the same fingerprint, while any change that survives fp16 rounding changes it, down to one
row of a 49,408-row token embedding (a textual-inversion token written over an existing one).

Values are converted on the tensor's own device and copied to the host in chunks, so a GPU model costs
one fp16 copy of itself in transfers and at most one chunk of extra memory. Cost: SHA-256 over the fp16
values, 3.5 s for an SD-1.4 UNet held in fp32 and 1.2 s in fp16 on two CPU cores, 0.5 s for its text
encoder (bench/bench_fingerprint.py), next to a model load that takes longer; hashing a sample of the
values instead let an edit of a few rows pass for the original model.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

CHUNK = 1 << 24  # values converted and copied at a time: 32 MiB of fp16


def state_fingerprint(state: dict[str, torch.Tensor]) -> str:
    import torch

    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach()
        digest.update(name.encode())
        digest.update(repr(tuple(tensor.shape)).encode())
        dtype = torch.float16 if tensor.is_floating_point() else torch.int64
        flat = tensor.reshape(-1)
        for start in range(0, flat.numel(), CHUNK):
            # converted on the tensor's device; an fp16 tensor on the CPU is hashed in place
            part = flat[start:start + CHUNK].to(dtype=dtype).to("cpu")
            digest.update(part.contiguous().numpy().data)
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
