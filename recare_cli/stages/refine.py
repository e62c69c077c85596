"""Stage 3: intra-cluster refinement and the CARE-set (method.md §3)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from recare_cli.core.vocab import WORD_END
from recare_cli.errors import BadInputError
from recare_cli.io.candidates import CandidateStream
from recare_cli.io.careset import CareSet
from recare_cli.io.provenance import provenance
from recare_cli.stages.options import recorded, run_control

LAYOUTS = ("recare", "reference")


@dataclass
class RefineOptions:
    """Every option of ``recare refine``; field order is the order provenance records them in."""

    source: str = "-"  # where the stream came from (file or -)
    alpha: float = 0.01  # the reference's removal margin
    min_cluster_size: int = 2
    property: str = "object"  # object: retain prompts 'A photo of …'; style: 'A painting of …'
    format: str = run_control("recare")  # the output layout: recare, or reference (damilab/CARE)
    target: str | None = run_control(None)  # which CARE-set of a reference file holding several
    output: str = run_control("-")


def run_refinement(stream: CandidateStream, opts: RefineOptions) -> CareSet:
    from recare_cli.core.refine import refine_cluster
    from recare_cli.core.residual import unit

    alpha, min_cluster_size = opts.alpha, opts.min_cluster_size
    target = unit(stream.target_embedding.astype(np.float64))
    removed: list[dict[str, Any]] = []
    details: list[dict[str, Any]] = []
    groups: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for record in stream.words:
        line = record.get("_line")
        for key in ("cluster", "status"):
            if key not in record:
                raise BadInputError("missing: run `recare cluster` before refine", source=stream.source,
                                    line=line, field=key)
        if record["status"] not in ("kept", "dropped"):
            raise BadInputError("must be 'kept' or 'dropped'", source=stream.source, line=line,
                                field="status")
        if not isinstance(record["cluster"], int) or isinstance(record["cluster"], bool):
            raise BadInputError("expected an integer", source=stream.source, line=line, field="cluster")
        if record["status"] == "dropped":
            removed.append({"word": record["word"], "stage": "cluster",
                            "reason": record.get("reason") or "dropped by hand"})
        else:
            groups[record["cluster"]].append(record)
    kept_words: list[str] = []
    for cluster_id in sorted(groups):
        members = groups[cluster_id]
        if len(members) < min_cluster_size:
            kept_words.extend(m["word"] for m in members)
            details.extend({"word": m["word"], "cluster": cluster_id, "d": None, "m": None,
                            "kept": True} for m in members)
            continue
        emb = np.asarray([m["embedding"] for m in members], dtype=np.float64)
        result = refine_cluster(emb, target, alpha)
        for m, d, mean, drop in zip(members, result.d, result.m, result.remove, strict=True):
            details.append({"word": m["word"], "cluster": cluster_id, "d": float(d), "m": float(mean),
                            "kept": not bool(drop)})
            if drop:
                removed.append({"word": m["word"], "stage": "refine",
                                "reason": f"leave-one-out residual d={d:.6g} > (1+{alpha:g})·m={mean:.6g}: "
                                          "removing it would raise the cluster's orthogonal part"})
            else:
                kept_words.append(m["word"])
    # CARE-set order: the mining rank (most frequent first), stable across cluster ids.
    rank = {r["word"]: i for i, r in enumerate(stream.words)}
    kept_words.sort(key=lambda w: rank[w])
    if stream.header.get("mining", {}).get("tokenization") == "reference":
        # Vocabulary entries, as the reference keeps them: its CARE words drop the word-end mark and nothing
        # else (``cat</w>`` and ``cat`` both give "cat", both kept).
        kept_words = [w.replace(WORD_END, "") for w in kept_words]
    prov = [*stream.header.get("provenance", []), provenance("refine", recorded(opts))]
    return CareSet.from_words(stream.target, opts.property, kept_words, removed=removed, details=details,
                              provenance=prov, clip=stream.header.get("clip"))
