"""CMMD (Jayasumana et al., 2024, "Rethinking FID"): 1000 x the squared MMD between the CLIP image
embeddings of the scored images and of a reference set, Gaussian RBF kernel with bandwidth 10, the
biased estimator of the reference implementation (``core.distances.mmd2_rbf``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from recare_cli.errors import UsageError
from recare_cli.stages.metrics import embeddings, reference
from recare_cli.stages.metrics.base import ImageItem, Run, Scored, summary

if TYPE_CHECKING:
    from recare_cli.stages.score import ScoreOptions


def need_reference(name: str, opts: ScoreOptions) -> None:
    if opts.reference is None:
        raise UsageError(f"--metric {name} needs --reference (an image folder, or a file written by "
                         "--write-reference)")


class Cmmd:
    name: str = "cmmd"
    help: str = ("CLIP-MMD against --reference, 1000 x squared MMD of the CLIP image embeddings, Gaussian kernel "
                 "sigma 10 (biased estimator, as the CMMD reference); lower is closer.")
    needs: tuple[str, ...] = (embeddings.NAME,)
    options: tuple[str, ...] = (reference.OPTION,)

    def validate(self, opts: ScoreOptions, items: Sequence[ImageItem]) -> None:
        need_reference(self.name, opts)

    def compute(self, run: Run) -> Scored:
        from recare_cli.core import distances

        ref = reference.of(run)
        value = distances.mmd2_rbf(ref.features_of(embeddings.NAME), embeddings.image_embeddings(run))
        n = len(run.items)
        return Scored([None] * n, summary(self.name, value, n, None, reference=ref.describe(embeddings.NAME), params={
            "features": "CLIP image embeddings, L2-normalised", "kernel": "gaussian rbf",
            "sigma": distances.CMMD_SIGMA, "scale": distances.CMMD_SCALE,
            "estimator": "biased (V-statistic), as the CMMD reference"}))


METRIC = Cmmd()
