"""Orthogonal residuals against the target direction (method.md §2)."""

from __future__ import annotations

import numpy as np


def unit(v: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(v))
    if norm == 0.0:
        raise ValueError("the target embedding is the zero vector")
    return v / norm


def residual_sq(e: np.ndarray, c: np.ndarray) -> np.ndarray:
    """``||e (I - c cᵀ)||²`` for each row of ``e``, ``c`` a unit vector: ``||e||² - (e·c)²``.

    Computed in float64 and clipped at 0 (rounding can make it a hair negative).
    """
    e64 = np.asarray(e, dtype=np.float64)
    c64 = np.asarray(c, dtype=np.float64)
    proj = e64 @ c64
    return np.maximum(np.einsum("...d,...d->...", e64, e64) - proj**2, 0.0)


def residual(e: np.ndarray, c: np.ndarray) -> np.ndarray:
    return np.sqrt(residual_sq(e, c))
