"""Zero-shot classification: top-k accuracy of each image's true label among the classes (--labels
FILE), the truth from --target (one label for every image) or --label-field (a manifest field)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from recare_cli.errors import BadInputError, UsageError
from recare_cli.stages.metrics import embeddings
from recare_cli.stages.metrics.base import ImageItem, Run, Scored, summary

if TYPE_CHECKING:
    import numpy as np

    from recare_cli.stages.score import ScoreOptions


def true_labels(opts: ScoreOptions, items: Sequence[ImageItem], labels: list[str]) -> np.ndarray:
    import numpy as np

    index = {label: i for i, label in enumerate(labels)}
    out = []
    for item in items:
        if opts.target is not None:
            value: Any = opts.target
        else:
            key = str(opts.label_field)
            value = item.record.get(key, item.record.get("extra", {}).get(key))
            if value is None:
                raise BadInputError("missing (needed by --label-field)", source=item.source, line=item.line,
                                    field=key)
        if str(value) not in index:
            raise BadInputError(f"label '{value}' is not among the --labels", source=item.source or str(item.path),
                                line=item.line, field=opts.label_field or "target")
        out.append(index[str(value)])
    return np.asarray(out, dtype=np.int64)


class Classify:
    name: str = "classify"
    help: str = "zero-shot top-k accuracy over --labels FILE, true label from --target or --label-field."
    needs: tuple[str, ...] = (embeddings.NAME,)
    options: tuple[str, ...] = ("labels", "template", "target", "label_field", "top_k")

    def validate(self, opts: ScoreOptions, items: Sequence[ImageItem]) -> None:
        if not opts.labels:
            raise UsageError("--metric classify needs --labels FILE (the classes)")
        if (opts.target is None) == (opts.label_field is None):
            raise UsageError("--metric classify needs exactly one of --target LABEL and --label-field FIELD")
        if opts.target is not None and opts.target not in opts.labels:
            raise UsageError(f"--target '{opts.target}' is not among the labels")
        if not 1 <= opts.top_k <= len(opts.labels):
            raise UsageError(f"--top-k must be between 1 and the number of labels ({len(opts.labels)})")

    def compute(self, run: Run) -> Scored:
        from recare_cli.core import scores
        from recare_cli.data.labels import apply_template

        opts = run.opts
        assert opts.labels is not None
        labels, k = list(opts.labels), opts.top_k
        truth = true_labels(opts, run.items, labels)
        label_emb = embeddings.text_embeddings(run, [apply_template(x, opts.template) for x in labels])
        sims = scores.similarities(embeddings.image_embeddings(run), label_emb)
        res = scores.topk_accuracy(sims, truth, k=k)
        n, hits = len(run.items), int(res.hits.sum())
        rows = [{"label": labels[int(truth[i])], "top1": labels[int(res.top1[i])],
                 "topk": [labels[j] for j in scores.topk_labels(sims[i], k)],
                 "rank": int(res.ranks[i]), "hit": bool(res.hits[i])} for i in range(n)]
        return Scored(rows, summary(self.name, res.value, n, scores.wilson_interval(hits, n), hits=hits, params={
            "top_k": k, "labels": opts.labels_name(), "n_labels": len(labels), "template": opts.template,
            "truth": opts.target or f"field {opts.label_field}", "ties": "counted against the true label"}))


METRIC = Classify()
