"""How much does the CARE-set depend on the last digits of the word embeddings?

Reads a candidates JSONL (`recare mine` output), then reruns cluster + refine exactly as the
commands do (same seed, perplexity, drop and alpha) on copies of the embeddings multiplied by
(1 + eps·N(0, 1)) — a perturbation the size of float32 rounding or of another CPU's matmul
order — and reports how many distinct partitions and distinct CARE-sets come out, and how often
each word is kept. Prints a table and the command to reproduce it.

    python -m experiments.cluster_stability recare-demo/nudity/candidates.jsonl -n 4 --prop object
"""

from __future__ import annotations

import argparse
import copy
from collections import Counter
from pathlib import Path

import numpy as np

from recare_cli import console
from recare_cli.core.clustering import SPACES
from recare_cli.io.candidates import CandidateStream, read_candidates
from recare_cli.stages.cluster import ClusterOptions, run_clustering
from recare_cli.stages.refine import RefineOptions, run_refinement


def careset_of(stream: CandidateStream, args: argparse.Namespace) -> tuple[frozenset[frozenset[str]], tuple[str, ...]]:
    run_clustering(stream, ClusterOptions(clusters=args.clusters, drop_extremes=args.drop_extremes, seed=args.seed,
                                          space=args.space))
    groups: dict[int, set[str]] = {}
    for record in stream.words:
        groups.setdefault(int(record["cluster"]), set()).add(record["word"])
    care = run_refinement(stream, RefineOptions(alpha=args.alpha, property=args.prop))
    return frozenset(frozenset(g) for g in groups.values()), tuple(sorted(care.words))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("candidates", type=Path)
    parser.add_argument("-n", "--clusters", type=int, default=6)
    parser.add_argument("--drop-extremes", type=int, default=1)
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--prop", default="object")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--space", choices=SPACES, default="tsne", help="as recare cluster --space")
    parser.add_argument("--eps", type=float, default=1e-6, help="relative size of the perturbation")
    parser.add_argument("--trials", type=int, default=20)
    args = parser.parse_args(argv)
    console.set_quiet(True)

    original = read_candidates(args.candidates)
    base_partition, base_care = careset_of(copy.deepcopy(original), args)
    rng = np.random.default_rng(0)
    partitions: Counter[frozenset[frozenset[str]]] = Counter()
    caresets: Counter[tuple[str, ...]] = Counter()
    kept: Counter[str] = Counter()
    for _ in range(args.trials):
        stream = copy.deepcopy(original)
        for record in stream.words:
            e = np.asarray(record["embedding"], dtype=np.float64)
            record["embedding"] = (e * (1 + args.eps * rng.standard_normal(e.shape))).astype(np.float32).tolist()
        partition, care = careset_of(stream, args)
        partitions[partition] += 1
        caresets[care] += 1
        kept.update(care)
    words = [w["word"] for w in original.words]
    print(f"{args.candidates}: {len(words)} words, -n {args.clusters}, --space {args.space}, eps {args.eps:g}, "
          f"{args.trials} trials")
    print(f"unperturbed CARE-set: {', '.join(base_care)}")
    print(f"distinct partitions: {len(partitions)} (the unperturbed one {partitions[base_partition]} times)")
    print(f"distinct CARE-sets: {len(caresets)} (the unperturbed one {caresets[base_care]} times)\n")
    print("| word | kept in | unperturbed |")
    print("|---|---|---|")
    for word in sorted(words, key=lambda w: (-kept[w], w)):
        print(f"| {word} | {kept[word]}/{args.trials} | {'kept' if word in base_care else 'dropped'} |")
    print(f"\nReproduce: python -m experiments.cluster_stability {args.candidates} -n {args.clusters} "
          f"--drop-extremes {args.drop_extremes} --alpha {args.alpha} --prop {args.prop} --seed {args.seed} "
          f"--space {args.space} --eps {args.eps:g} --trials {args.trials}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
