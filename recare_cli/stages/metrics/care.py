"""The CARE score (method.md §7): the share of images whose CLIP top-1 label, among the concept and
the other labels, is the concept (R-Precision@1); ties count against the concept."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from recare_cli.errors import UsageError
from recare_cli.stages.metrics import embeddings
from recare_cli.stages.metrics.base import ImageItem, Run, Scored, summary

if TYPE_CHECKING:
    from recare_cli.stages.score import ScoreOptions


class Care:
    name: str = "care"
    help: str = ("the CARE score, the fraction of images whose CLIP top-1 label among --concept and the 80 COCO labels "
            "(or --labels FILE) is the concept; ties count against the concept.")
    needs: tuple[str, ...] = (embeddings.NAME,)
    options: tuple[str, ...] = ("concept", "labels", "label_set", "template")

    def validate(self, opts: ScoreOptions, items: Sequence[ImageItem]) -> None:
        if not (opts.concept and opts.concept.strip()):
            raise UsageError("--metric care needs --concept, e.g. --concept person")

    def compute(self, run: Run) -> Scored:
        from recare_cli.core import scores
        from recare_cli.data.labels import apply_template

        opts = run.opts
        assert opts.concept is not None
        concept = opts.concept.strip()
        others = opts.label_list()
        labels = scores.care_label_set(concept, others)
        label_emb = embeddings.text_embeddings(run, [apply_template(x, opts.template) for x in labels])
        res = scores.care_score(embeddings.image_embeddings(run), label_emb, 0)
        n, hits = len(run.items), int(res.hits.sum())
        rows = [{"top1": labels[int(res.top1[i])], "hit": bool(res.hits[i]),
                 "concept_score": float(res.label_sim[i]), "top1_score": float(res.top1_sim[i])} for i in range(n)]
        return Scored(rows, summary(self.name, res.value, n, scores.wilson_interval(hits, n), hits=hits, params={
            "concept": concept, "labels": opts.labels_name(), "n_labels": len(labels),
            "concept_in_labels": concept in others, "template": opts.template,
            "ties": "counted against the concept"}))


METRIC = Care()
