"""CLIP score: the mean raw cosine between each image and its prompt (not x100, not clipped at 0),
with a seeded bootstrap interval."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from recare_cli.errors import BadInputError
from recare_cli.stages.metrics import embeddings
from recare_cli.stages.metrics.base import ImageItem, Run, Scored, summary

if TYPE_CHECKING:
    from recare_cli.stages.score import ScoreOptions


class Clip:
    name: str = "clip"
    help: str = "mean cosine between each image and its prompt (raw, not x100)."
    needs: tuple[str, ...] = (embeddings.NAME,)
    options: tuple[str, ...] = ("prompt", "seed")

    def validate(self, opts: ScoreOptions, items: Sequence[ImageItem]) -> None:
        for item in items:
            if not item.prompt:
                raise BadInputError("no prompt for the clip metric (give --prompt for an image folder)",
                                    source=item.source or str(item.path), line=item.line, field="prompt")

    def compute(self, run: Run) -> Scored:
        from recare_cli.core import scores

        n = len(run.items)
        prompts = [str(item.prompt) for item in run.items]
        unique = list(dict.fromkeys(prompts))
        text_emb = embeddings.text_embeddings(run, unique)
        where = {p: i for i, p in enumerate(unique)}
        values = scores.clip_scores(embeddings.image_embeddings(run), text_emb[[where[p] for p in prompts]])
        ci = scores.bootstrap_mean_interval(values, seed=run.opts.seed)
        return Scored([float(v) for v in values],
                      summary(self.name, float(values.mean()) if n else float("nan"), n, ci,
                              params={"scale": "raw cosine", "prompts": len(unique)}))


METRIC = Clip()
