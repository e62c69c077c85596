"""The Fréchet distance between Gaussians fitted to the CLIP image embeddings of the scored images
and of a reference set: FID's formula on CLIP features (``core.distances.frechet_distance``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from recare_cli.errors import BadInputError
from recare_cli.stages.metrics import embeddings, reference
from recare_cli.stages.metrics.base import ImageItem, Run, Scored, summary
from recare_cli.stages.metrics.cmmd import need_reference

if TYPE_CHECKING:
    from recare_cli.stages.score import ScoreOptions


class ClipFd:
    name: str = "clipfd"
    help: str = ("Frechet distance between Gaussians of the CLIP image embeddings of the images and of "
                 "--reference (FID's formula on CLIP features); lower is closer.")
    needs: tuple[str, ...] = (embeddings.NAME,)
    options: tuple[str, ...] = (reference.OPTION,)

    def validate(self, opts: ScoreOptions, items: Sequence[ImageItem]) -> None:
        need_reference(self.name, opts)
        if len(items) == 1:
            raise BadInputError("clipfd needs at least 2 images (a covariance), got 1", source=opts.source)

    def compute(self, run: Run) -> Scored:
        from recare_cli.core import distances

        ref = reference.of(run)
        mean, cov = distances.gaussian(embeddings.image_embeddings(run))
        value = distances.frechet_distance(mean, cov, *ref.gaussian_of(embeddings.NAME))
        n = len(run.items)
        return Scored([None] * n, summary(self.name, value, n, None, reference=ref.describe(embeddings.NAME), params={
            "features": "CLIP image embeddings, L2-normalised", "covariance": "unbiased (N - 1)",
            "matrix square root": "symmetric eigendecomposition"}))


METRIC = ClipFd()
