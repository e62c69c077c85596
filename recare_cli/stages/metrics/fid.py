"""FID: the Fréchet distance between Gaussians fitted to the Inception features of the scored images and
of a reference set, with clean-fid's "clean" preprocessing and weights (the ReCARE reference's
``metrics/fid_eval.py`` calls ``cleanfid.fid.compute_fid(..., mode="clean")``), so that the value is
clean-fid's on the same images. The paper's FID column."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from recare_cli.errors import BadInputError
from recare_cli.stages.metrics import inception, reference
from recare_cli.stages.metrics.base import ImageItem, Run, Scored, summary
from recare_cli.stages.metrics.cmmd import need_reference

if TYPE_CHECKING:
    from recare_cli.stages.score import ScoreOptions


class Fid:
    name: str = "fid"
    help: str = ("Frechet Inception Distance to --reference, the number clean-fid's clean mode gives (the paper's "
                 "FID); Inception weights from --inception, else cached, else downloaded once; lower is closer.")
    needs: tuple[str, ...] = (inception.NAME,)
    options: tuple[str, ...] = (reference.OPTION, inception.OPTION)

    def validate(self, opts: ScoreOptions, items: Sequence[ImageItem]) -> None:
        need_reference(self.name, opts)
        if len(items) == 1:
            raise BadInputError("fid needs at least 2 images (a covariance), got 1", source=opts.source)

    def compute(self, run: Run) -> Scored:
        from recare_cli.core import distances

        ref = reference.of(run)
        x, y = inception.inception_features(run), ref.features.get(inception.NAME)
        if y is not None and len(y) < len(x):  # the distance is symmetric: the cheaper side as samples
            value = distances.frechet_distance_to_samples(y, *distances.gaussian(x))
        else:
            value = distances.frechet_distance_to_samples(x, *ref.gaussian_of(inception.NAME))
        n = len(run.items)
        return Scored([None] * n, summary(self.name, value, n, None, reference=ref.describe(inception.NAME), params={
            "features": "Inception-v3 pool3 (2048), TorchScript inception-2015-12-05",
            "preprocessing": "clean-fid clean", "covariance": "unbiased (N - 1)",
            "matrix square root": "symmetric eigendecomposition (of the N x N form when N - 1 < 2048)"}))


METRIC = Fid()
