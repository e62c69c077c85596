"""On-disk cache of vocabulary embeddings, keyed by model fingerprint + vocabulary.

One safetensors file per key, with the key, the vocabulary digest and a SHA-256 of the data in
its metadata. A file that fails any check (corrupt, truncated, other key, other shape) is
rebuilt, never trusted. Writes are atomic, so concurrent runs at worst compute twice.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from recare_cli.io.atomic import atomic_path

CACHE_ENV = "RECARE_CACHE"
CACHE_VERSION = "1"


def default_cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "recare"


def vocabulary_digest(words: list[str], token_ids: list[list[int]]) -> str:
    digest = hashlib.sha256()
    for word, ids in zip(words, token_ids, strict=True):
        digest.update(f"{word}\t{','.join(map(str, ids))}\n".encode())
    return digest.hexdigest()


def cache_key(model_fingerprint: str, vocab_digest: str, tokenization: str = "") -> str:
    """The entry's key; ``tokenization`` ("" for recare's own, which keeps the keys it always had) names how
    the vocabulary became token sequences."""
    variant = f"|{tokenization}" if tokenization else ""
    return hashlib.sha256(f"v{CACHE_VERSION}|{model_fingerprint}|{vocab_digest}{variant}".encode()).hexdigest()[:32]


def _path(cache_dir: Path, key: str) -> Path:
    return cache_dir / "vocab" / f"{key}.safetensors"


def load_cached(cache_dir: Path, key: str, vocab_digest: str, n_words: int) -> np.ndarray | None:
    """The cached (n_words, D) float32 array, or ``None`` when missing or not trustworthy."""
    from safetensors import SafetensorError, safe_open

    path = _path(cache_dir, key)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="numpy") as fh:
            meta = fh.metadata() or {}
            array = fh.get_tensor("embeddings")
    except (SafetensorError, OSError, ValueError, KeyError, Exception):
        return None
    if (meta.get("key") != key or meta.get("vocabulary") != vocab_digest or array.ndim != 2
            or array.shape[0] != n_words or array.dtype != np.float32
            or meta.get("sha256") != hashlib.sha256(array.tobytes()).hexdigest()):
        return None
    return array


def store(cache_dir: Path, key: str, vocab_digest: str, array: np.ndarray) -> Path:
    from safetensors.numpy import save_file

    path = _path(cache_dir, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.ascontiguousarray(array, dtype=np.float32)
    meta = {"key": key, "vocabulary": vocab_digest, "sha256": hashlib.sha256(array.tobytes()).hexdigest(),
            "cache_version": CACHE_VERSION}
    with atomic_path(path) as tmp:
        save_file({"embeddings": array}, str(tmp), metadata=meta)
    return path
