"""Measurement: recare's Fréchet distance against the matrix square root FID implementations take.

clean-fid (like pytorch-fid) takes ``tr(scipy.linalg.sqrtm(cov1 @ cov2))`` of the non-symmetric product;
recare takes the same trace from symmetric eigendecompositions (``core.distances``): of ``S cov2 S`` with
``S = cov1^(1/2)``, or, with fewer images than the 2,048 features, of the (N, N) matrix ``A cov2 A^T``
(``frechet_distance_to_samples``, what the fid metric calls). This script prints both values, their
relative difference and the time each takes on Inception-shaped features: 2,048 non-negative
dimensions, ReLU of correlated Gaussians with a decaying spectrum, scored sets of several sizes against
one reference of 5,000. Needs SciPy (clean-fid's dependency).

    python -m bench.bench_fid
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def inception_like(rng: np.random.Generator, n: int, mix: np.ndarray, shift: float) -> np.ndarray:
    scales = np.arange(1, mix.shape[0] + 1) ** -0.7
    return np.maximum(0.0, (rng.normal(size=(n, mix.shape[0])) * scales) @ mix + shift).astype(np.float32)


def sqrtm_fid(x: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """The textbook FID with SciPy's sqrtm of the product (float64 statistics, as np.cov gives)."""
    from scipy import linalg

    mu1, cov1 = x.mean(axis=0, dtype=np.float64), np.cov(x, rowvar=False)
    root = linalg.sqrtm(cov1 @ cov2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2 * np.trace(root).real)


def main() -> None:
    from recare_cli.core import distances

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 1000, 5000])
    parser.add_argument("--reference", type=int, default=5000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(2048, 2048)) / 20
    mu2, cov2 = distances.gaussian(inception_like(rng, args.reference, mix, 0.2))
    print(f"reference: {args.reference} images; features 2048\n")
    print("| images | sqrtm FID | recare FID | relative difference | sqrtm (s) | recare (s) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n in args.sizes:
        x = inception_like(rng, n, mix, 0.25)
        start = time.process_time()
        theirs = sqrtm_fid(x, mu2, cov2)
        middle = time.process_time()
        ours = distances.frechet_distance_to_samples(x, mu2, cov2)
        end = time.process_time()
        print(f"| {n} | {theirs:.6f} | {ours:.6f} | {abs(ours - theirs) / theirs:.1e} | {middle - start:.1f} | "
              f"{end - middle:.1f} |")


if __name__ == "__main__":
    main()
