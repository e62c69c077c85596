"""Stage 2: global clustering with orthogonal residuals (method.md §2)."""

from __future__ import annotations

from typing import Any

import numpy as np

from recare_cli.core.clustering import ClusterDecision
from recare_cli.errors import BadInputError
from recare_cli.io.candidates import CandidateStream
from recare_cli.io.provenance import provenance


def run_clustering(stream: CandidateStream, *, n_clusters: int, drop_extremes: int, seed: int,
                   perplexity: float | None, params: dict[str, Any], space: str = "tsne") -> list[ClusterDecision]:
    """Annotate every word of ``stream`` in place with its 2-D point, cluster, residual and status.

    ``space``: k-means on the t-SNE points (``tsne``, the reference) or on the unit embeddings
    (``embedding``); the 2-D points are written either way, for plots."""
    from recare_cli.core.clustering import (
        adapted_perplexity,
        cluster_space,
        decide_clusters,
        embed_2d,
        kmeans_labels,
    )
    from recare_cli.core.residual import residual, unit

    n = len(stream.words)
    if n < n_clusters:
        raise BadInputError(f"only {n} candidate words for {n_clusters} clusters: lower -n/--clusters "
                            "or mine more words (--top-n)", source=stream.source)
    if n < 3:
        raise BadInputError(f"only {n} candidate words: clustering needs at least 3", source=stream.source)
    emb = stream.embeddings()
    target = unit(stream.target_embedding.astype(np.float64))
    res = residual(emb, target)
    perp = adapted_perplexity(n) if perplexity is None else perplexity
    if perp >= n:
        raise BadInputError(f"--perplexity {perp} must be below the number of words ({n})",
                            source=stream.source)
    points = embed_2d(emb, seed=seed, perplexity=perp)
    labels = kmeans_labels(cluster_space(emb, points, space), n_clusters, seed=seed)
    decisions = decide_clusters(labels, res, drop_extremes)
    by_id = {d.cluster: d for d in decisions}
    for record, point, label, r in zip(stream.words, points, labels, res, strict=True):
        d = by_id[int(label)]
        record.update({"point": [float(point[0]), float(point[1])], "cluster": int(label),
                       "residual": float(r), "status": "kept" if d.kept else "dropped",
                       "reason": None if d.kept else d.reason})
    stream.clusters = [
        {"record": "cluster", "cluster": d.cluster, "size": d.size, "mean_residual": d.mean_residual,
         "rank": d.rank + 1, "status": "kept" if d.kept else "dropped", "reason": d.reason}
        for d in decisions]
    stream.header["clustering"] = {"n_clusters": n_clusters, "drop_extremes": drop_extremes,
                                   "seed": seed, "perplexity": perp, "space": space}
    stream.header["provenance"] = [*stream.header.get("provenance", []), provenance("cluster", params)]
    return decisions
