"""Global clustering: t-SNE to 2-D, k-means, drop the extreme-residual clusters (method.md §2)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_PERPLEXITY = 30.0  # scikit-learn's and the reference's default


def adapted_perplexity(n_points: int, wanted: float = DEFAULT_PERPLEXITY) -> float:
    """t-SNE needs perplexity < n_points; with few words use about a third of them (≥ 1)."""
    if n_points - 1 >= 3 * wanted:
        return wanted
    return float(max(1.0, min(wanted, (n_points - 1) / 3.0)))


def embed_2d(embeddings: np.ndarray, *, seed: int, perplexity: float | None = None,
             dtype: type = np.float64) -> np.ndarray:
    """t-SNE to 2-D. ``dtype`` is what scikit-learn computes in: float64 (recare), or float32 as the reference
    hands it its float32 embeddings; t-SNE amplifies the difference into other points."""
    from sklearn.manifold import TSNE

    n = embeddings.shape[0]
    if n < 3:
        raise ValueError(f"t-SNE needs at least 3 words, got {n}")
    perp = adapted_perplexity(n) if perplexity is None else perplexity
    tsne = TSNE(n_components=2, init="pca", learning_rate="auto", perplexity=perp, random_state=seed)
    return np.asarray(tsne.fit_transform(np.asarray(embeddings, dtype=dtype)), dtype=np.float64)


SPACES = ("tsne", "embedding")


def cluster_space(embeddings: np.ndarray, points: np.ndarray, space: str) -> np.ndarray:
    """What k-means runs on: the t-SNE points (the reference) or the unit-length embeddings.

    t-SNE of a few dozen words is chaotic: a relative change of 1e-6 in the embeddings (float32
    rounding, another CPU's summation order) regroups the words (experiments/cluster_stability.py). k-means
    on the unit vectors (cosine geometry, as CLIP compares them) does not have that amplifier."""
    if space == "tsne":
        return points
    if space == "embedding":
        e = np.asarray(embeddings, dtype=np.float64)
        return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    raise ValueError(f"unknown clustering space {space!r}; expected one of {', '.join(SPACES)}")


def kmeans_labels(points: np.ndarray, n_clusters: int, *, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=n_clusters, n_init="auto", random_state=seed)
    return np.asarray(km.fit_predict(points), dtype=np.int64)


@dataclass(frozen=True)
class ClusterDecision:
    cluster: int
    size: int
    mean_residual: float
    rank: int  # 0 = lowest mean residual
    kept: bool
    reason: str


def decide_clusters(labels: np.ndarray, residuals: np.ndarray, drop_extremes: int) -> list[ClusterDecision]:
    """Rank clusters by mean residual; drop the ``k`` lowest (lean toward the target) and the ``k``
    highest (unrelated), ``k = min(drop_extremes, n_clusters // 2)``. Ties rank by cluster id."""
    clusters = sorted(set(labels.tolist()))
    means = {c: float(residuals[labels == c].mean()) for c in clusters}
    ranked = sorted(clusters, key=lambda c: (means[c], c))
    k = min(drop_extremes, len(ranked) // 2)
    low, high = set(ranked[:k]), set(ranked[len(ranked) - k :]) if k else set()
    decisions = []
    for rank, c in enumerate(ranked):
        place = f"cluster {c}, mean-residual rank {rank + 1}/{len(ranked)}"
        if c in low:
            kept, reason = False, f"{place}: among the {k} lowest, leans toward the target"
        elif c in high:
            kept, reason = False, f"{place}: among the {k} highest, unrelated to the target"
        else:
            kept, reason = True, place
        decisions.append(ClusterDecision(c, int((labels == c).sum()), means[c], rank, kept, reason))
    return sorted(decisions, key=lambda d: d.cluster)
