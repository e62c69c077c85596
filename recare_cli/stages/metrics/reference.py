"""The reference set of the distribution metrics (cmmd, clipfd, fid): a folder of images embedded in
the same run, or a reference file written earlier by ``recare score --write-reference``.

A reference file is NumPy's own ``.npz`` (read with ``allow_pickle=False``): an entry ``meta``, a JSON
string ``{"format": "recare.reference", "version": 1, "count", "source", "extractors": {name:
identity}, "provenance"}``, and per extractor ``NAME.mean`` (D,) and ``NAME.cov`` (D, D), float64
(``core.distances.gaussian``), and ``NAME.features`` (N, D) unless the extractor is in
:data:`STATS_ONLY` (the Gaussian is all its metrics read). A reference made by another model than
the run's (its fingerprint differs) is refused.

The stage resolves the reference once per run and hands it to the metrics in ``Run.features`` under
:data:`KEY`; a metric reads it with :func:`of`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recare_cli.errors import BadInputError
from recare_cli.stages.metrics import embeddings, inception
from recare_cli.stages.metrics.base import REGISTRY, ImageItem, Run

if TYPE_CHECKING:
    import numpy as np

    from recare_cli.stages.score import ScoreOptions

FORMAT = "recare.reference"
VERSION = 1
KEY = "reference"  # where the stage puts the resolved reference in Run.features
OPTION = "reference"  # a metric that lists this ScoreOptions field compares with a reference
# Extractors whose reference keeps only the mean and covariance: FID reads nothing else, and the
# Inception features of 30,000 COCO images would add 245 MB to the file.
STATS_ONLY = frozenset({inception.NAME})


def needs(metrics: Sequence[str] | None = None) -> list[str]:
    """The extractors whose features the reference metrics among ``metrics`` (all registered ones when
    None) compare, in order of first need."""
    names = list(REGISTRY) if metrics is None else list(metrics)
    out: list[str] = []
    for name in names:
        metric = REGISTRY[name]
        if OPTION in metric.options:
            out += [need for need in metric.needs if need not in out]
    return out


def written(opts: ScoreOptions) -> list[str]:
    """The extractors whose features ``--write-reference`` stores: those of the requested distance metrics,
    else CLIP's; and Inception's when ``--inception`` names its weights."""
    names = needs(opts.metrics) or [embeddings.NAME]
    if getattr(opts, inception.OPTION) is not None:
        names.append(inception.NAME)
    return list(dict.fromkeys(names))


def short(identity: dict[str, Any]) -> str:
    """``NAME (sha256:0123456789ab…)``: a model's identity in one short phrase."""
    fingerprint = str(identity.get("fingerprint", "?"))
    return f"{identity.get('name', '?')} ({fingerprint[:19]}…)"


def same_model(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two identities name the same model: the fingerprints (the weights) decide, not the names."""
    if "fingerprint" in a and "fingerprint" in b:
        return bool(a["fingerprint"] == b["fingerprint"])
    return a == b


@dataclass
class Reference:
    path: str
    kind: str  # "folder" or "file"
    count: int
    identities: dict[str, dict[str, Any]]  # per extractor
    features: dict[str, np.ndarray] = field(default_factory=dict)
    stats: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    sha256: str | None = None  # of the file

    def describe(self, extractor: str) -> dict[str, Any]:
        """What a result records about the reference it was computed against."""
        out: dict[str, Any] = {"path": self.path, "kind": self.kind, "count": self.count}
        if self.sha256 is not None:
            out["sha256"] = self.sha256
        out["extractor"] = self.identities[extractor]
        return out

    def features_of(self, extractor: str) -> np.ndarray:
        if extractor not in self.features:
            raise BadInputError(f"holds only the mean and covariance of its {extractor} features, not the "
                                "features themselves", source=self.path)
        return self.features[extractor]

    def gaussian_of(self, extractor: str) -> tuple[np.ndarray, np.ndarray]:
        from recare_cli.core.distances import gaussian

        if extractor not in self.stats:
            if self.count < 2:
                raise BadInputError(f"a Gaussian needs at least 2 reference images, got {self.count}",
                                    source=self.path)
            self.stats[extractor] = gaussian(self.features[extractor])
        return self.stats[extractor]

    def check(self, extractor: str, identity: dict[str, Any]) -> None:
        """Refuse a reference whose ``extractor`` features are missing or made by another model."""
        if extractor not in self.identities:
            held = ", ".join(self.identities) or "none"
            raise BadInputError(f"holds no {extractor} features (it has: {held}); --write-reference stores them "
                                f"when its run uses {extractor}", source=self.path)
        made = self.identities[extractor]
        if not same_model(made, identity):
            raise BadInputError(f"reference made with {extractor} {short(made)}, but this run's {extractor} is "
                                f"{short(identity)}", source=self.path)


def of(run: Run) -> Reference:
    """The run's resolved reference."""
    ref = run.features.get(KEY)
    assert isinstance(ref, Reference), "the stage resolves the reference before the metrics compute"
    return ref


def folder_items(path: Path) -> list[ImageItem]:
    from recare_cli.io.images import list_images

    images = list_images(path)
    if not images:
        raise BadInputError("no image files found in the reference folder", source=str(path))
    return [ImageItem(path=p, prompt=None, source=str(p)) for p in images]


def load(path: Path) -> tuple[Reference, list[ImageItem]]:
    """The reference at ``path`` and, for a folder, its images (the stage embeds them and fills in the
    features and identities); a file is read whole now."""
    if path.is_dir():
        items = folder_items(path)
        return Reference(str(path), "folder", len(items), {}), items
    return read(path), []


def read(path: Path) -> Reference:
    """A reference file written by :func:`write`; anything else is refused (exit 3)."""
    import zipfile

    import numpy as np

    from recare_cli.io.digest import sha256_file
    from recare_cli.io.streams import read_bytes

    source = str(path)
    read_bytes(path)  # a missing file or a folder: one line
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise BadInputError(f"not a reference file written by recare score --write-reference ({err})",
                            source=source) from err
    try:
        meta = json.loads(str(arrays.pop("meta")))
    except (KeyError, json.JSONDecodeError) as err:
        raise BadInputError("no 'meta' entry: not a reference file written by recare score --write-reference",
                            source=source) from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise BadInputError(f"not a {FORMAT} file", source=source, field="format")
    if meta.get("version") != VERSION:
        raise BadInputError(f"{FORMAT} version {meta.get('version')} is not supported (expected {VERSION})",
                            source=source, field="version")
    try:
        count, identities = int(meta["count"]), {str(k): dict(v) for k, v in meta["extractors"].items()}
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise BadInputError("'meta' lacks a count or the extractors' identities", source=source,
                            field="meta") from err
    ref = Reference(source, "file", count, identities, sha256=sha256_file(path))
    for name in identities:
        feats = arrays.get(f"{name}.features")
        mean, cov = arrays.get(f"{name}.mean"), arrays.get(f"{name}.cov")
        if mean is None or cov is None:
            raise BadInputError(f"entries {name}.mean and {name}.cov are not both present", source=source, field=name)
        if mean.ndim != 1 or cov.shape != (len(mean), len(mean)) or (
                feats is not None and feats.shape != (count, len(mean))):
            shapes = f"features {feats.shape}, " if feats is not None else ""
            raise BadInputError(f"{name} entries do not fit: {shapes}mean {mean.shape}, covariance {cov.shape} for "
                                f"{count} images", source=source, field=name)
        if feats is not None:
            ref.features[name] = feats
        ref.stats[name] = (mean, cov)
    return ref


def write(path: Path, features: dict[str, np.ndarray], identities: dict[str, dict[str, Any]], *, source: str | None,
          provenance: dict[str, Any]) -> None:
    """Write the features of ``identities``' extractors (and their Gaussians; only the Gaussians for
    :data:`STATS_ONLY`) as a reference file, atomically."""
    import numpy as np

    from recare_cli.core.distances import gaussian
    from recare_cli.io.atomic import atomic_path

    count = len(next(iter(features.values())))
    if count < 2:
        raise BadInputError(f"a reference needs at least 2 images, got {count}", source=source)
    meta = {"format": FORMAT, "version": VERSION, "count": count, "source": source, "extractors": identities,
            "provenance": provenance}
    arrays: dict[str, np.ndarray] = {"meta": np.asarray(json.dumps(meta))}
    for name in identities:
        if name not in STATS_ONLY:
            arrays[f"{name}.features"] = features[name]
        arrays[f"{name}.mean"], arrays[f"{name}.cov"] = gaussian(features[name])
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)  # type: ignore[arg-type]
