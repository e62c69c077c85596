"""Distances between two sets of image features: the Fréchet distance between their Gaussians
(FID's formula, on any features) and the squared MMD with a Gaussian RBF kernel (CMMD).

Pure NumPy, float64 throughout. No paths, no models.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

CMMD_SIGMA = 10.0  # the bandwidth of CMMD's Gaussian RBF kernel (Jayasumana et al., 2024)
CMMD_SCALE = 1000.0  # CMMD reports 1000 x MMD^2, "to make the metric more human readable"
_KERNEL_BLOCK = 1 << 22  # kernel entries evaluated at once (32 MiB of float64)


def gaussian(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The mean and covariance of ``features`` (N, D), float64; the covariance divides by N - 1,
    as ``np.cov`` and the FID implementations (pytorch-fid, clean-fid) do."""
    import numpy as np

    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"need at least 2 feature rows (N, D), got shape {x.shape}")
    return x.mean(axis=0), np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])


def _psd_sqrt(a: np.ndarray) -> np.ndarray:
    """The symmetric square root of a symmetric positive semi-definite matrix (rounding below 0 clipped)."""
    import numpy as np

    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """``|mu1 - mu2|^2 + tr(cov1) + tr(cov2) - 2 tr((cov1 cov2)^(1/2))``, the Fréchet (2-Wasserstein)
    distance between two Gaussians.

    The trace of the matrix square root is taken as ``sum(sqrt(eig(S cov2 S)))`` with ``S = cov1^(1/2)``:
    ``cov1 cov2`` is similar to the symmetric positive semi-definite ``S cov2 S``, so the two have the
    same eigenvalues, which ``eigh`` finds real and (up to rounding, clipped) non-negative. This is
    ``scipy.linalg.sqrtm(cov1 @ cov2)`` of pytorch-fid and clean-fid without its failure modes: with
    fewer images than feature dimensions the covariances are singular, and ``sqrtm`` of the
    non-symmetric product then returns complex values or needs an offset added to the diagonals.
    A result below 0 by rounding is returned as 0.
    """
    import numpy as np

    m1, m2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    c1, c2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    d = m1.shape[0]
    if m1.shape != (d,) or m2.shape != (d,) or c1.shape != (d, d) or c2.shape != (d, d):
        raise ValueError(f"shapes do not match: means {m1.shape}, {m2.shape}; covariances {c1.shape}, {c2.shape}")
    s1 = _psd_sqrt(c1)
    return _frechet(m1 - m2, float(np.trace(c1)), float(np.trace(c2)), _trace_sqrt_psd(s1 @ c2 @ s1))


def frechet_distance_to_samples(x: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """:func:`frechet_distance` between the Gaussian of the samples ``x`` (N, D) (:func:`gaussian`) and
    ``(mu2, cov2)``, at O(N D^2) rather than O(D^3) when there are fewer samples than dimensions.

    With ``A = (x - mean) / sqrt(N - 1)`` the covariance of ``x`` is ``A^T A``, and ``A^T A cov2`` has
    the non-zero eigenvalues of the symmetric positive semi-definite (N, N) matrix ``A cov2 A^T``
    (``PQ`` and ``QP`` share them), whose square roots sum to ``tr((cov1 cov2)^(1/2))``: for 1,000
    images against FID's 2,048 features, one (1000, 1000) eigendecomposition instead of two of
    (2048, 2048). With N - 1 >= D this is :func:`frechet_distance` on the Gaussian.
    """
    import numpy as np

    mean, cov = gaussian(x)
    n, d = np.shape(x)
    if n - 1 >= d:
        return frechet_distance(mean, cov, mu2, cov2)
    m2, c2 = np.asarray(mu2, np.float64), np.asarray(cov2, np.float64)
    if m2.shape != (d,) or c2.shape != (d, d):
        raise ValueError(f"shapes do not match: samples {np.shape(x)}; mean {m2.shape}, covariance {c2.shape}")
    a = (np.asarray(x, np.float64) - mean) / np.sqrt(n - 1)
    return _frechet(mean - m2, float(np.trace(cov)), float(np.trace(c2)), _trace_sqrt_psd(a @ c2 @ a.T))


def _trace_sqrt_psd(a: np.ndarray) -> float:
    """The sum of the square roots of the eigenvalues of a symmetric PSD matrix (rounding below 0 clipped)."""
    import numpy as np

    return float(np.sqrt(np.clip(np.linalg.eigvalsh((a + a.T) / 2), 0.0, None)).sum())


def _frechet(diff: np.ndarray, tr1: float, tr2: float, tr_sqrt: float) -> float:
    return max(float(diff @ diff + tr1 + tr2 - 2.0 * tr_sqrt), 0.0)


def _kernel_mean(a: np.ndarray, b: np.ndarray, gamma: float) -> float:
    """The mean of ``exp(-gamma |a_i - b_j|^2)`` over all pairs, in blocks of rows of ``a``."""
    import numpy as np

    b_sq = np.einsum("ij,ij->i", b, b)
    rows = max(1, _KERNEL_BLOCK // max(1, len(b)))
    total = 0.0
    for start in range(0, len(a), rows):
        block = a[start:start + rows]
        d2 = np.einsum("ij,ij->i", block, block)[:, None] + b_sq[None, :] - 2.0 * (block @ b.T)
        total += float(np.exp(-gamma * np.maximum(d2, 0.0)).sum())
    return total / (len(a) * len(b))


def mmd2_rbf(x: np.ndarray, y: np.ndarray, *, sigma: float = CMMD_SIGMA, scale: float = CMMD_SCALE) -> float:
    """``scale * MMD^2`` between the samples ``x`` (N, D) and ``y`` (M, D) with the Gaussian RBF kernel
    ``k(a, b) = exp(-|a - b|^2 / (2 sigma^2))``.

    The estimator is CMMD's (google-research ``cmmd/distance.py``): the biased, minimum-variance
    V-statistic of Gretton et al. (2012), Eq. 5, whose kernel means include the diagonal pairs
    ``k(x_i, x_i) = 1``: ``mean K(x, x) + mean K(y, y) - 2 mean K(x, y)``. It is never negative (but
    for rounding) and symmetric in ``x`` and ``y``.
    """
    import numpy as np

    a, b = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or not len(a) or not len(b):
        raise ValueError(f"need two non-empty (N, D) sets of the same D, got {a.shape} and {b.shape}")
    gamma = 1.0 / (2.0 * sigma * sigma)
    return scale * (_kernel_mean(a, a, gamma) + _kernel_mean(b, b, gamma) - 2.0 * _kernel_mean(a, b, gamma))
