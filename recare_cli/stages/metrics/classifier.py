"""Top-k accuracy of a real image classifier (``--classifier``: any transformers image-classification
model, e.g. a fine-tuned style classifier, or a torchvision ResNet-50 weights file such as the
reference's object classifier ``resnet50-11ad3fa6.pth``): the share of images whose true label is
among the model's k highest logits, the true label from --target (one for every image) or
--label-field (a manifest field), named as in the model's ``id2label`` (torchvision's ImageNet
category names for a ``.pth`` file).

The extractor (``classifier``) runs the model once per run and keeps each image's logits, so
``--features`` stores them and ``--from-features`` re-scores (another --top-k, another truth) without
the model.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from recare_cli.errors import BadInputError, UsageError
from recare_cli.stages.metrics.base import ImageItem, Run, Scored, summary

if TYPE_CHECKING:
    import numpy as np

    from recare_cli.stages.score import ScoreOptions

NAME = "classifier"  # the extractor and the metric


class Unmatched(ValueError):
    """A label that names no class, or several."""


def match_label(value: str, labels: Sequence[str]) -> int:
    """The class index ``value`` names among ``labels``: the label itself; else, ignoring case, the label
    or one of its comma-separated names (ImageNet's ``tench, Tinca tinca`` is ``tench``); else a class
    index written as digits. Raises :class:`Unmatched` for no class or several."""
    exact = [i for i, label in enumerate(labels) if label == value]
    if not exact:
        wanted = value.strip().lower()
        exact = [i for i, label in enumerate(labels)
                 if label.lower() == wanted or wanted in (part.strip().lower() for part in label.split(","))]
    if len(exact) == 1:
        return exact[0]
    if len(exact) > 1:
        named = "; ".join(f"{i} '{labels[i]}'" for i in exact[:5])
        raise Unmatched(f"'{value}' names {len(exact)} classes ({named}): give a class index")
    if value.strip().isdigit() and int(value) < len(labels):
        return int(value)
    close = difflib.get_close_matches(value, labels, n=3, cutoff=0.6)
    hint = f"; close: {', '.join(repr(c) for c in close)}" if close else ""
    raise Unmatched(f"'{value}' is not among the classifier's {len(labels)} labels{hint}")


def record_label(item: ImageItem, key: str) -> Any:
    """The manifest field ``key`` of an image: a top-level field or one of its ``extra`` columns."""
    value = item.record.get(key, item.record.get("extra", {}).get(key))
    if value is None:
        raise BadInputError("missing (needed by --label-field)", source=item.source or str(item.path),
                            line=item.line, field=key)
    return value


def true_classes(opts: ScoreOptions, items: Sequence[ImageItem], labels: Sequence[str]) -> list[int]:
    """Each image's true class index; a label the classifier does not know stops the run (exit 3)."""
    if opts.target is not None:
        return [match_label(opts.target, labels)] * len(items)
    out = []
    for item in items:
        try:
            out.append(match_label(str(record_label(item, str(opts.label_field))), labels))
        except Unmatched as err:
            raise BadInputError(str(err), source=item.source or str(item.path), line=item.line,
                                field=opts.label_field) from err
    return out


def labels_of(opts: ScoreOptions) -> list[str]:
    from recare_cli.models.classifier import classifier_labels

    assert opts.classifier is not None
    return list(classifier_labels(opts.classifier))


class Logits:
    """The ``classifier`` extractor: each image's logits, (N, classes) float32."""

    def __init__(self, bundle: Any) -> None:
        self.bundle = bundle

    def features(self, batch: Sequence[ImageItem], images: list[Any]) -> np.ndarray:
        return self.bundle.logits(images)

    def join(self, parts: Sequence[np.ndarray]) -> np.ndarray:
        import numpy as np

        return np.concatenate(parts) if len(parts) else np.zeros((0, len(self.bundle.labels)), np.float32)

    def identity(self) -> dict[str, Any]:
        return self.bundle.identity()


def load(opts: ScoreOptions, device: str) -> Logits:
    from recare_cli.models.classifier import load_classifier
    from recare_cli.models.quiet import quiet_libraries

    assert opts.classifier is not None
    quiet_libraries()
    return Logits(load_classifier(opts.classifier, device=device, dtype=opts.dtype))


class Classifier:
    name: str = NAME
    help: str = ("top-k accuracy of an image classifier, --classifier MODEL (a transformers one, e.g. a style "
                 "classifier, or a torchvision ResNet-50 .pth file, the reference's object classifier), true label "
                 "from --target or --label-field among its labels.")
    needs: tuple[str, ...] = (NAME,)
    options: tuple[str, ...] = ("classifier", "target", "label_field", "top_k")

    def validate(self, opts: ScoreOptions, items: Sequence[ImageItem]) -> None:
        if not opts.classifier:
            raise UsageError("--metric classifier needs --classifier MODEL (an image-classification folder or hub id, "
                             "or a torchvision ResNet-50 .pth file)")
        if (opts.target is None) == (opts.label_field is None):
            raise UsageError("--metric classifier needs exactly one of --target LABEL and --label-field FIELD")
        labels = labels_of(opts)  # the config alone: an unknown label stops the run before any image is read
        if opts.target is not None:
            try:
                match_label(opts.target, labels)
            except Unmatched as err:
                raise UsageError(f"--target {err}") from err
        if not 1 <= opts.top_k <= len(labels):
            raise UsageError(f"--top-k must be between 1 and the classifier's number of labels ({len(labels)})")
        if opts.label_field is not None:
            true_classes(opts, items, labels)

    def compute(self, run: Run) -> Scored:
        from recare_cli.core import scores
        from recare_cli.models.classifier import labels_fingerprint

        opts = run.opts
        labels, k = labels_of(opts), opts.top_k
        identity = run.extractors[NAME].identity()
        if identity.get("labels") != labels_fingerprint(labels):  # stored logits of another model's classes
            raise BadInputError(f"the classifier logits are of other classes than those of --classifier "
                                f"{opts.classifier}", source=str(opts.from_features or opts.classifier))
        logits = run.features[NAME]
        truth = true_classes(opts, run.items, labels)
        res = scores.topk_accuracy(logits, truth, k=k)
        n, hits = len(run.items), int(res.hits.sum())
        rows = [{"label": labels[truth[i]], "top1": labels[int(res.top1[i])],
                 "topk": [labels[j] for j in scores.topk_labels(logits[i], k)],
                 "rank": int(res.ranks[i]), "hit": bool(res.hits[i])} for i in range(n)]
        params = {"top_k": k, "classifier": identity.get("name"), "fingerprint": identity.get("fingerprint"),
                  "n_labels": len(labels), "truth": opts.target or f"field {opts.label_field}"}
        if opts.target is not None:  # the class --target named, as the model calls it
            index = match_label(opts.target, labels)
            params["target_class"] = {"index": index, "label": labels[index]}
        params["ties"] = "counted against the true label"
        return Scored(rows, summary(self.name, res.value, n, scores.wilson_interval(hits, n), hits=hits,
                                    params=params))


METRIC = Classifier()
