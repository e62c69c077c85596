"""Intra-cluster leave-one-out refinement in closed form (method.md §3)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recare_cli.core.residual import residual_sq


@dataclass(frozen=True)
class RefineResult:
    d: np.ndarray  # (n,) squared residual of the leave-one-out centroid
    m: np.ndarray  # (n,) mean of the other words' d
    remove: np.ndarray  # (n,) bool


def refine_cluster(e: np.ndarray, c: np.ndarray, alpha: float) -> RefineResult:
    """For words ``e`` (n, D) of one cluster and unit target ``c``: remove word ``i`` when
    ``d_i > (1 + alpha) · m_i`` with ``d_i = r(mean_{j≠i} e_j)²`` and ``m_i = mean_{j≠i} d_j``.

    O(n·D): every leave-one-out centroid is ``(S - e_i) / (n - 1)`` with ``S`` the column sum.
    Clusters with fewer than 2 words are returned unchanged (nothing to compare against).
    """
    e64 = np.asarray(e, dtype=np.float64)
    n = e64.shape[0]
    if n < 2:
        return RefineResult(np.zeros(n), np.zeros(n), np.zeros(n, dtype=bool))
    loo = (e64.sum(axis=0, keepdims=True) - e64) / (n - 1)
    d = residual_sq(loo, c)
    m = (d.sum() - d) / (n - 1)
    return RefineResult(d, m, d > (1.0 + alpha) * m)
