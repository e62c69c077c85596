"""recare cluster: t-SNE + k-means over candidate words; drop the extreme-residual clusters."""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING, Annotated

import typer

from recare_cli import console
from recare_cli.cli.options import EmbeddingsNpy, Output, Quiet, Seed
from recare_cli.stages.cluster import SPACES
from recare_cli.stages.cluster import ClusterOptions as O

if TYPE_CHECKING:
    from recare_cli.core.clustering import ClusterDecision
    from recare_cli.io.candidates import CandidateStream

Space = Enum("Space", {name: name for name in SPACES}, type=str)  # type: ignore[misc]  # the choices, for --help
OPTIONS = O
CLI_ONLY = ("quiet",)


HELP = """Cluster candidate words and mark the extreme-residual clusters as dropped.

Reads a recare.candidates stream (from `recare mine`, a file or - for stdin) and writes the same stream with each word's 2-D point, cluster, residual and kept/dropped status with a reason. A summary table goes to stderr.

Example:

  recare mine imgs/ --target nudity | recare cluster -n 6 > clustered.jsonl
"""


def cluster(
    candidates: Annotated[str, typer.Argument(help="Candidate stream (JSONL), or - for stdin.")] = O.candidates,
    clusters: Annotated[int, typer.Option("--clusters", "-n", min=2,
                                          help="k-means clusters (paper: 6; the reference code: 7).")] = O.clusters,
    drop_extremes: Annotated[int, typer.Option(
        "--drop-extremes", min=0,
        help="Clusters dropped at each end of the mean-residual ranking "
             "(effective min(k, clusters // 2)).")] = O.drop_extremes,
    perplexity: Annotated[float | None, typer.Option(
        "--perplexity", min=1.0, help="t-SNE perplexity (default: 30, lowered for few words).",
        show_default=False)] = O.perplexity,
    space: Annotated[Space, typer.Option(
        "--space", help="What k-means clusters: the t-SNE points (the reference's method) or the unit "
                        "embeddings, which a change in the last digits of the embeddings cannot regroup "
                        "(t-SNE of a few dozen words can be; see docs/benchmarks.md).")] = Space(O.space),
    seed: Seed = O.seed,
    output: Output = O.output,
    embeddings_npy: EmbeddingsNpy = O.embeddings_npy,
    quiet: Quiet = False,
) -> None:
    opts = O(**{k: v for k, v in locals().items() if k not in CLI_ONLY})
    opts.space = Space(space).value
    console.set_quiet(quiet)
    from recare_cli.io.arrays import check_npy_destination, write_npy
    from recare_cli.io.candidates import read_candidates
    from recare_cli.io.streams import open_output
    from recare_cli.stages.cluster import run_clustering

    if embeddings_npy is not None:
        check_npy_destination(embeddings_npy, "--embeddings-npy", output=output)
    stream = read_candidates(candidates)
    decisions = run_clustering(stream, opts)
    with open_output(output, binary=False) as out:
        stream.write(out)
    if embeddings_npy is not None:
        write_npy(embeddings_npy, stream.embeddings())
    if not quiet:
        _summary(stream, decisions)


def _summary(stream: CandidateStream, decisions: list[ClusterDecision]) -> None:
    from rich.table import Table

    words = stream.words
    table = Table(title=f"clusters for '{stream.target}' (by mean residual)")
    for col in ("rank", "cluster", "words", "mean residual", "status", "top words"):
        table.add_column(col)
    for d in sorted(decisions, key=lambda d: d.rank):
        top = [w["word"] for w in words if w["cluster"] == d.cluster][:8]
        table.add_row(str(d.rank + 1), str(d.cluster), str(d.size), f"{d.mean_residual:.4f}",
                      "kept" if d.kept else "dropped", ", ".join(top))
    console.stderr_console().print(table)
