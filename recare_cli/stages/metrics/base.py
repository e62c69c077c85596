"""What a metric of ``recare score`` is, and the registries the stage reads.

A metric is one object (one module, registered with :func:`register`): its name, the ``--help``
paragraph that describes it, the per-image feature extractors it ``needs``, the fields of
``ScoreOptions`` it reads, a ``validate`` that refuses options or inputs it cannot use, and a
``compute`` that turns the run's per-image features into one row per image and a summary.

An extractor is a model loaded once per run that turns every image into features: CLIP image
embeddings, NudeNet detections, and whatever a new metric brings (Inception features for FID). The
stage loads each extractor that a requested metric needs, once, passes over the images in batches
(split over the processes of a multi-process launch), and hands the features to every metric. Its
identity goes into the summary's provenance under the extractor's name.

Nothing here imports numpy or a model at module load, so ``recare --help`` stays fast.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from recare_cli.stages.score import ScoreOptions


@dataclass(frozen=True)
class ImageItem:
    path: Path
    prompt: str | None
    sha256: str | None = None
    source: str = ""  # where the image was named (manifest file and line) for messages
    line: int | None = None
    record: dict[str, Any] = field(default_factory=dict)


class Extractor(Protocol):
    """A model loaded once per run that turns each image into features."""

    def features(self, batch: Sequence[ImageItem], images: list[Any]) -> Any:
        """The features of one batch (``images`` are the decoded RGB images of ``batch``), in order."""
        ...

    def join(self, parts: Sequence[Any]) -> Any:
        """Consecutive parts' features (batches, or the processes' slices) as one, in order."""
        ...

    def identity(self) -> dict[str, Any]:
        """How the summary's provenance names the model."""
        ...


ExtractorLoader = Callable[["ScoreOptions", str], Extractor]  # (options, resolved device) -> loaded extractor


@dataclass
class Run:
    """What a metric computes from: the images, the options, each needed extractor's per-image
    features, and the loaded extractors themselves (a metric may ask more of a model: CLIP text
    embeddings of its labels)."""

    items: Sequence[ImageItem]
    opts: ScoreOptions
    features: dict[str, Any]
    extractors: dict[str, Extractor]


@dataclass
class Scored:
    rows: list[Any]  # one per image: the image's per-image row holds it under the metric's name
    summary: dict[str, Any]  # made by summary()


class Metric(Protocol):
    name: str  # what --metric and the gates call it
    help: str  # its paragraph in `recare score --help`, after "NAME: "
    needs: tuple[str, ...]  # the extractors whose features it reads
    options: tuple[str, ...]  # the ScoreOptions fields it reads

    def validate(self, opts: ScoreOptions, items: Sequence[ImageItem]) -> None:
        """Raise UsageError for options it cannot use, BadInputError for an image it cannot score.
        Called once with no items before the input is read, and again with the items."""
        ...

    def compute(self, run: Run) -> Scored: ...


REGISTRY: dict[str, Metric] = {}
EXTRACTORS: dict[str, ExtractorLoader] = {}


def register(metric: Metric) -> Metric:
    """Make ``metric`` available to ``--metric``, the gates and the stage."""
    if metric.name in REGISTRY:
        raise ValueError(f"a metric named '{metric.name}' is registered already")
    REGISTRY[metric.name] = metric
    return metric


def register_extractor(name: str, loader: ExtractorLoader) -> ExtractorLoader:
    """Make the per-image extractor ``name`` available to the metrics that need it."""
    if name in EXTRACTORS:
        raise ValueError(f"an extractor named '{name}' is registered already")
    EXTRACTORS[name] = loader
    return loader


def summary(metric: str, value: float, count: int, ci: Any, params: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A metric's entry in the summary's results: metric, value, count, ci, any extra (hits), params."""
    return {"metric": metric, "value": value, "count": count, "ci": ci.to_json() if ci is not None else None,
            **extra, "params": params}


def choices(names: Sequence[str]) -> str:
    """``a, b, c or d``."""
    names = list(names)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
