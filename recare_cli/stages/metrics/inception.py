"""The ``inception`` extractor: each image's 2048 Inception features as clean-fid's "clean" mode computes
them (``core.inception``), the per-image features of the fid metric.

Each file is read as clean-fid reads it, ``np.array(Image.open(path).convert("RGB"))``: no EXIF
rotation, an alpha channel dropped rather than composited onto white (the other metrics' reading,
``io.images.load_image``, does both). For the RGB PNGs that ``recare sample`` writes and ordinary
JPEGs the two readings give the same pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from recare_cli.errors import BadInputError
from recare_cli.stages.metrics.base import ImageItem, Run

if TYPE_CHECKING:
    import numpy as np

    from recare_cli.stages.score import ScoreOptions

NAME = "inception"
OPTION = "inception"  # the ScoreOptions field naming the weights


def read_rgb(item: ImageItem) -> np.ndarray:
    """The image as clean-fid reads it: (H, W, 3) uint8."""
    import numpy as np
    from PIL import Image

    try:
        with Image.open(item.path) as image:
            return np.array(image.convert("RGB"))
    except (OSError, ValueError, SyntaxError) as err:
        raise BadInputError(f"image {item.path} is unreadable ({err})", source=item.source or str(item.path),
                            line=item.line, field="path") from err


class InceptionFeatures:
    def __init__(self, bundle: Any) -> None:
        self.bundle = bundle

    def features(self, batch: Sequence[ImageItem], images: list[Any]) -> np.ndarray:
        from recare_cli.core.inception import clean_resize, inception_features

        return inception_features(self.bundle.model, [clean_resize(read_rgb(item)) for item in batch],
                                  self.bundle.device)

    def join(self, parts: Sequence[np.ndarray]) -> np.ndarray:
        import numpy as np

        from recare_cli.core.inception import DIM

        return np.concatenate(parts) if len(parts) else np.zeros((0, DIM), np.float32)

    def identity(self) -> dict[str, Any]:
        return dict(self.bundle.identity())


def load(opts: ScoreOptions, device: str) -> InceptionFeatures:
    from recare_cli.models.inception import load_inception

    return InceptionFeatures(load_inception(opts.inception, device=device))


def inception_features(run: Run) -> np.ndarray:
    """The (N, 2048) Inception features of the run's images, in order."""
    return run.features[NAME]
