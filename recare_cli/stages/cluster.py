"""Stage 2: global clustering with orthogonal residuals (method.md §2)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recare_cli import console
from recare_cli.core.clustering import SPACES, ClusterDecision
from recare_cli.errors import BadInputError
from recare_cli.io.candidates import CandidateStream
from recare_cli.io.provenance import provenance
from recare_cli.stages.options import recorded, run_control

__all__ = ["SPACES", "ClusterOptions", "run_clustering"]

REFERENCE_CLUSTERS = 7  # the reference code's --n_clusters default (the paper: 6)


@dataclass
class ClusterOptions:
    """Every option of ``recare cluster``; field order is the order provenance records them in."""

    candidates: str = "-"  # where the stream came from (file or -)
    clusters: int = 6  # the paper's n (the reference code's default is 7)
    drop_extremes: int = 1
    perplexity: float | None = None  # None: 30, lowered for few words (core.clustering.adapted_perplexity)
    space: str = "tsne"  # what k-means clusters: the t-SNE points (the reference) or the unit embeddings
    seed: int = 42
    output: str = run_control("-")
    embeddings_npy: str | None = run_control(None)


def run_clustering(stream: CandidateStream, opts: ClusterOptions) -> list[ClusterDecision]:
    """Annotate every word of ``stream`` in place with its 2-D point, cluster, residual and status.

    ``opts.space``: k-means on the t-SNE points (``tsne``, the reference) or on the unit embeddings
    (``embedding``); the 2-D points are written either way, for plots."""
    from recare_cli.core.clustering import (
        adapted_perplexity,
        cluster_space,
        decide_clusters,
        embed_2d,
        kmeans_labels,
    )
    from recare_cli.core.residual import residual, unit

    n_clusters, drop_extremes, seed, perplexity = opts.clusters, opts.drop_extremes, opts.seed, opts.perplexity
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
    as_reference = stream.header.get("mining", {}).get("tokenization") == "reference"
    if as_reference and n_clusters != REFERENCE_CLUSTERS:
        console.info(f"this stream was mined as the reference mines; its code clusters into {REFERENCE_CLUSTERS} "
                     f"(-n {REFERENCE_CLUSTERS}), the paper into 6")
    # The reference's t-SNE gets float32 embeddings: so does a stream mined its way, to give its clusters.
    points = embed_2d(emb, seed=seed, perplexity=perp, dtype=np.float32 if as_reference else np.float64)
    labels = kmeans_labels(cluster_space(emb, points, opts.space), n_clusters, seed=seed)
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
                                   "seed": seed, "perplexity": perp, "space": opts.space}
    if as_reference:
        stream.header["clustering"]["tsne_dtype"] = "float32"
    stream.header["provenance"] = [*stream.header.get("provenance", []), provenance("cluster", recorded(opts))]
    return decisions
