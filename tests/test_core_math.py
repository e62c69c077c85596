"""The math checked against naive, obviously-correct implementations."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from recare_cli.core.clustering import (
    adapted_perplexity,
    cluster_space,
    decide_clusters,
    embed_2d,
    kmeans_labels,
)
from recare_cli.core.mining import mine, top_k_indices
from recare_cli.core.refine import refine_cluster
from recare_cli.core.residual import residual, unit


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def naive_mine(images: np.ndarray, words: np.ndarray, top_k: int, top_n: int) -> list[tuple[int, int]]:
    counts: Counter[int] = Counter()
    sims_all = images @ words.T
    for sims in sims_all:
        # Highest similarity first; equal similarities: lower word index first.
        ranked = sorted(range(len(sims)), key=lambda j: (-float(sims[j]), j))
        counts.update(ranked[:top_k])
    mean = sims_all.astype(np.float64).mean(axis=0)
    order = sorted(counts, key=lambda j: (-counts[j], -mean[j], j))
    return [(j, counts[j]) for j in order[:top_n]]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mine_matches_naive(seed: int) -> None:
    rng = np.random.default_rng(seed)
    images = _unit_rows(rng.normal(size=(37, 16)))
    words = _unit_rows(rng.normal(size=(300, 16)))
    got = mine(images, words, top_k=9, top_n=25, chunk=8)
    assert list(zip(got.index.tolist(), got.count.tolist(), strict=True)) == naive_mine(images, words, 9, 25)
    sims = images @ words.T
    np.testing.assert_allclose(got.sim_max, sims.max(axis=0)[got.index], rtol=1e-6)
    np.testing.assert_allclose(got.sim_mean, sims.mean(axis=0)[got.index], rtol=1e-5, atol=1e-7)


def naive_lift(images: np.ndarray, reference: np.ndarray, words: np.ndarray, top_k: int,
               top_n: int) -> list[tuple[int, int, int]]:
    """(word, target count, reference count) by lift: share of target images counting the word less
    share of reference images; positive lifts only."""
    def counts(emb: np.ndarray) -> Counter[int]:
        out: Counter[int] = Counter()
        for sims in emb @ words.T:
            out.update(sorted(range(len(sims)), key=lambda j: (-float(sims[j]), j))[:top_k])
        return out

    target, ref = counts(images), counts(reference)
    mean = (images @ words.T).astype(np.float64).mean(axis=0)
    lift = {j: target[j] / len(images) - ref[j] / len(reference) for j in target}
    order = sorted((j for j in target if lift[j] > 0), key=lambda j: (-lift[j], -target[j], -mean[j], j))
    return [(j, target[j], ref[j]) for j in order[:top_n]]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mine_with_a_reference_ranks_by_lift_as_naive(seed: int) -> None:
    rng = np.random.default_rng(seed)
    words = _unit_rows(rng.normal(size=(120, 16)))
    images = _unit_rows(rng.normal(size=(29, 16)) + 2 * words[:1])  # the target images lean to word 0
    reference = _unit_rows(rng.normal(size=(41, 16)))
    got = mine(images, words, top_k=7, top_n=15, reference_emb=reference, chunk=8)
    assert got.reference_count is not None
    assert list(zip(got.index.tolist(), got.count.tolist(), got.reference_count.tolist(), strict=True)) == \
        naive_lift(images, reference, words, 7, 15)
    assert got.index[0] == 0  # the word the target images lean to leads


def test_mine_with_a_reference_drops_words_as_common_there() -> None:
    words = np.eye(4, dtype=np.float32)
    # every image, target or not, is nearest word 0; the target images alone also near word 1
    images = _unit_rows(np.array([[1.0, 0.9, 0.0, 0.0]] * 3))
    reference = _unit_rows(np.array([[1.0, 0.0, 0.2, 0.0]] * 5))
    got = mine(images, words, top_k=2, top_n=4, reference_emb=reference)
    assert got.index.tolist() == [1]  # word 0 is in every image's top 2 on both sides: lift 0, dropped
    plain = mine(images, words, top_k=2, top_n=4)
    assert plain.index.tolist() == [0, 1] and plain.reference_count is None


def test_mine_ties_break_by_vocabulary_index() -> None:
    rng = np.random.default_rng(3)
    base = _unit_rows(rng.normal(size=(6, 8)))
    # Words 2, 3, 4 are identical: every image sees them with equal similarity.
    words = np.concatenate([base[:2], np.repeat(base[2:3], 3, axis=0), base[3:]])
    images = np.repeat(base[2:3], 4, axis=0)  # images identical to the tied word
    got = mine(images, words, top_k=2, top_n=5)
    assert got.index.tolist() == [2, 3]  # the two lowest indices of the tie, in order
    assert got.count.tolist() == [4, 4]
    assert top_k_indices(np.array([[0.5, 0.9, 0.9, 0.9]]), 2).tolist() == [[1, 2]]


def test_residual_matches_projection_matrix() -> None:
    rng = np.random.default_rng(0)
    e = rng.normal(size=(20, 12))
    c = unit(rng.normal(size=12))
    projector = np.eye(12) - np.outer(c, c)
    expected = np.linalg.norm(e @ projector, axis=1)
    np.testing.assert_allclose(residual(e, c), expected, rtol=1e-10, atol=1e-12)
    assert residual(c[None] * 3.0, c)[0] == pytest.approx(0.0, abs=1e-7)


def naive_refine(e: np.ndarray, c: np.ndarray, alpha: float) -> list[bool]:
    n = len(e)
    projector = np.eye(len(c)) - np.outer(c, c)
    d = []
    for i in range(n):
        centroid = np.mean([e[j] for j in range(n) if j != i], axis=0)
        d.append(float(np.sum((centroid @ projector) ** 2)))
    out = []
    for i in range(n):
        m = np.mean([d[j] for j in range(n) if j != i])
        out.append(d[i] > (1 + alpha) * m)
    return out


@pytest.mark.parametrize(("n", "alpha"), [(2, 0.0), (3, 0.01), (7, 0.01), (15, 0.1), (40, 0.5)])
def test_refine_closed_form_matches_naive(n: int, alpha: float) -> None:
    rng = np.random.default_rng(n)
    c = unit(rng.normal(size=10))
    e = rng.normal(size=(n, 10)) + rng.normal(size=(n, 1)) * c  # varied lean toward c
    got = refine_cluster(e, c, alpha)
    assert got.remove.tolist() == naive_refine(e, c, alpha)


def test_refine_removes_the_word_leaning_toward_the_target() -> None:
    c = np.array([1.0, 0.0, 0.0])
    benign = np.array([[0.1, 1.0, 0.0], [0.1, 0.0, 1.0], [0.1, 0.7, 0.7]])
    harmful = np.array([[1.0, 0.05, 0.0]])
    result = refine_cluster(np.vstack([benign, harmful]), c, alpha=0.01)
    # Leaving the harmful word out leaves a centroid with a LARGER orthogonal part.
    assert result.remove.tolist() == [False, False, False, True]
    assert refine_cluster(harmful, c, 0.01).remove.tolist() == [False]  # a lone word stays


def test_decide_clusters_drops_extremes() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    res = np.array([0.9, 0.9, 0.1, 0.2, 0.5, 0.5, 0.6, 0.7])
    decisions = {d.cluster: d for d in decide_clusters(labels, res, drop_extremes=1)}
    assert [decisions[c].kept for c in range(4)] == [False, False, True, True]
    assert "lowest" in decisions[1].reason and "highest" in decisions[0].reason
    # k is capped at n_clusters // 2; with k = 0 nothing is dropped.
    assert all(d.kept for d in decide_clusters(labels, res, drop_extremes=0))
    capped = decide_clusters(labels, res, drop_extremes=5)
    assert not any(d.kept for d in capped)
    three = decide_clusters(np.array([0, 1, 2]), np.array([0.3, 0.1, 0.2]), drop_extremes=3)
    assert [d.kept for d in three] == [False, False, True]  # k_eff = 1


def test_perplexity_adapts_to_few_words() -> None:
    assert adapted_perplexity(100) == 30.0
    for n in (3, 4, 10, 31, 60):
        assert 1.0 <= adapted_perplexity(n) < n
    points = embed_2d(np.random.default_rng(0).normal(size=(5, 8)), seed=42)  # would fail at 30
    assert points.shape == (5, 2) and np.isfinite(points).all()


def test_cluster_space() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(12, 8))
    points = embed_2d(x, seed=42)
    assert cluster_space(x, points, "tsne") is points
    rows = cluster_space(x, points, "embedding")
    np.testing.assert_allclose(rows, np.array([v / np.sqrt((v * v).sum()) for v in x]), rtol=1e-12)
    with pytest.raises(ValueError, match="unknown clustering space"):
        cluster_space(x, points, "umap")
    # three groups of directions, scaled arbitrarily: cosine geometry recovers them
    centres = rng.normal(size=(3, 8))
    members = np.repeat(np.arange(3), 6)
    y = (centres[members] + 0.05 * rng.normal(size=(18, 8))) * rng.uniform(0.1, 10.0, size=(18, 1))
    labels = kmeans_labels(cluster_space(y, embed_2d(y, seed=42), "embedding"), 3, seed=42)
    assert len({(int(a), int(b)) for a, b in zip(members, labels, strict=True)}) == 3


def test_embedding_space_ignores_float_noise() -> None:
    """A change in the 7th digit (float32 rounding, another CPU) must not regroup the words."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(23, 64))  # no clear cluster structure, like ~20 mined words
    base = kmeans_labels(cluster_space(x, np.zeros((23, 2)), "embedding"), 4, seed=42)
    for _ in range(5):
        noisy = x * (1 + 1e-6 * rng.standard_normal(x.shape))
        labels = kmeans_labels(cluster_space(noisy, np.zeros((23, 2)), "embedding"), 4, seed=42)
        np.testing.assert_array_equal(labels, base)


def test_clustering_is_deterministic_for_a_seed() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 16))
    a = kmeans_labels(embed_2d(x, seed=42), 4, seed=42)
    b = kmeans_labels(embed_2d(x, seed=42), 4, seed=42)
    np.testing.assert_array_equal(a, b)
