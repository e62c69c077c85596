"""Per-image features as NPY, to re-score without the model.

``--features DIR`` writes, for every extractor whose features are an array with one row per image
(CLIP image embeddings, classifier logits, Inception features), ``DIR/NAME.npy`` with the rows in
input order (the order of the per-image JSONL), and ``DIR/features.json``: ``{"format":
"recare.features", "version": 1, "source", "count", "extractors": {NAME: {"file", "shape", "dtype",
"identity"}}, "images": [{"path", "sha256"}]}``.

``--from-features DIR`` reads them back instead of running those extractors. The input's images must
be the ones the features were computed from, in the same order: each image's sha256 (the manifest's,
or of the file for folder input) must equal the recorded one. The model is loaded only if a metric
asks it for more than the stored features (CLIP text embeddings for care, clip or classify; a
reference folder's images), and must then be the model that made them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recare_cli.errors import BadInputError
from recare_cli.stages.metrics import embeddings
from recare_cli.stages.metrics.base import EXTRACTORS, Extractor, ImageItem
from recare_cli.stages.metrics.reference import same_model, short

if TYPE_CHECKING:
    import numpy as np

    from recare_cli.stages.score import ScoreOptions

FORMAT = "recare.features"
VERSION = 1
SIDECAR = "features.json"


def digests(items: Sequence[ImageItem]) -> list[str]:
    """Each image's sha256: the manifest's, else of the file."""
    from recare_cli.io.digest import sha256_file

    out = []
    for item in items:
        if item.sha256 is None and not item.path.is_file():
            raise BadInputError(f"image {item.path} does not exist", source=item.source or str(item.path),
                                line=item.line, field="path")
        out.append(item.sha256 or sha256_file(item.path))
    return out


def arrays(features: dict[str, Any], names: Sequence[str], count: int) -> dict[str, np.ndarray]:
    """The features among ``names`` that are an array of one row per image."""
    import numpy as np

    return {name: features[name] for name in names
            if isinstance(features.get(name), np.ndarray) and features[name].shape[:1] == (count,)}


def write(folder: Path, items: Sequence[ImageItem], features: dict[str, np.ndarray],
          identities: dict[str, dict[str, Any]], *, source: str | None) -> None:
    """Write ``features`` (name -> (N, ...) array, rows in the order of ``items``) and the sidecar."""
    import numpy as np

    from recare_cli.io.atomic import atomic_path, atomic_write_bytes
    from recare_cli.io.jsonl import dumps_json

    try:
        folder.mkdir(exist_ok=True)
    except OSError as err:
        raise BadInputError(f"cannot make the features folder ({err.strerror})", source=str(folder)) from err
    entries = {}
    for name, array in features.items():
        with atomic_path(folder / f"{name}.npy") as tmp, open(tmp, "wb") as fh:
            np.save(fh, array, allow_pickle=False)
        entries[name] = {"file": f"{name}.npy", "shape": list(array.shape), "dtype": str(array.dtype),
                         "identity": identities[name]}
    sidecar = {"format": FORMAT, "version": VERSION, "source": source, "count": len(items), "extractors": entries,
               "images": [{"path": str(item.path), "sha256": digest}
                          for item, digest in zip(items, digests(items), strict=True)]}
    atomic_write_bytes(folder / SIDECAR, dumps_json(sidecar))  # last: it vouches for the arrays beside it


def read(folder: Path, items: Sequence[ImageItem]) -> tuple[dict[str, np.ndarray], dict[str, dict[str, Any]]]:
    """The stored features of ``items`` and their extractors' identities; refuses other images."""
    import numpy as np
    import orjson

    from recare_cli.io.streams import read_bytes

    where = str(folder / SIDECAR)
    try:
        meta = orjson.loads(read_bytes(folder / SIDECAR))
    except orjson.JSONDecodeError as err:
        raise BadInputError(f"not JSON ({err})", source=where) from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise BadInputError(f"not a {FORMAT} file", source=where, field="format")
    if meta.get("version") != VERSION:
        raise BadInputError(f"{FORMAT} version {meta.get('version')} is not supported (expected {VERSION})",
                            source=where, field="version")
    images = meta.get("images") or []
    if len(images) != len(items):
        raise BadInputError(f"features of {len(images)} images, but the input has {len(items)}", source=where)
    for i, (item, digest, recorded) in enumerate(zip(items, digests(items), images, strict=True)):
        if digest != recorded.get("sha256"):
            raise BadInputError(f"image {item.path} is not image {i + 1} of the stored features {where} "
                                "(sha256 differs)", source=item.source or str(item.path), line=item.line,
                                field="sha256")
    features, identities = {}, {}
    for name, entry in (meta.get("extractors") or {}).items():
        path = folder / str(entry.get("file"))
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise BadInputError(f"unreadable ({err})", source=str(path)) from err
        if list(array.shape) != entry.get("shape") or array.shape[:1] != (len(items),):
            raise BadInputError(f"shape {list(array.shape)}, but {where} records {entry.get('shape')} for "
                                f"{len(items)} images", source=str(path))
        features[name], identities[name] = array, dict(entry.get("identity") or {})
    return features, identities


def _loaded(name: str, made: dict[str, Any], extractor: Extractor, source: str) -> Extractor:
    if not same_model(made, extractor.identity()):
        raise BadInputError(f"features made with {name} {short(made)}, but this run's {name} is "
                            f"{short(extractor.identity())}", source=source)
    return extractor


class StoredClip(embeddings.ClipEmbeddings):
    """The clip extractor of a run whose image embeddings were read back: CLIP loads on first use."""

    def __init__(self, identity: dict[str, Any], load: Callable[[], Extractor], source: str) -> None:
        self._identity, self._load, self._source = identity, load, source
        self._bundle: Any = None

    @property
    def bundle(self) -> Any:
        if self._bundle is None:
            loaded = _loaded(embeddings.NAME, self._identity, self._load(), self._source)
            assert isinstance(loaded, embeddings.ClipEmbeddings)
            self._bundle = loaded.bundle
        return self._bundle

    def identity(self) -> dict[str, Any]:
        return dict(self._identity)


class Stored:
    """Any other extractor whose features were read back: the model loads on first use."""

    def __init__(self, name: str, identity: dict[str, Any], load: Callable[[], Extractor], source: str) -> None:
        self.name, self._identity, self._load, self._source = name, identity, load, source
        self._model: Extractor | None = None

    def model(self) -> Extractor:
        if self._model is None:
            self._model = _loaded(self.name, self._identity, self._load(), self._source)
        return self._model

    def features(self, batch: Sequence[ImageItem], images: list[Any]) -> Any:
        return self.model().features(batch, images)

    def join(self, parts: Sequence[Any]) -> Any:
        return self.model().join(parts)

    def identity(self) -> dict[str, Any]:
        return dict(self._identity)


def extractor(name: str, identity: dict[str, Any], opts: ScoreOptions, device: str, folder: Path) -> Extractor:
    """The stand-in for extractor ``name`` whose features of the run's images were read from ``folder``."""
    def load() -> Extractor:
        return EXTRACTORS[name](opts, device)

    source = str(folder / SIDECAR)
    return StoredClip(identity, load, source) if name == embeddings.NAME else Stored(name, identity, load, source)
