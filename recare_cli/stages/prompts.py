"""Stage: the CARE evaluation prompts (method.md §7): prompts that name each CARE word, one row per image.

The reference scores CARE on images of prompts that contain the retained concept ``w*``
(``metrics/care_eval.py``: a file of prompts, ``--num_images 10`` per prompt, image ``i`` of every
prompt seeded ``seed + i`` with ``--seed 42``), and its CARE-set (``careset.json``) words each prompt
"A photo of {word}" (styles: "A painting of {word}"). This stage writes those prompts for the words of a
CARE-set and for ``--concept`` words, with the seeds spelled out: prompt ``p`` gives
``images_per_prompt`` rows with ``evaluation_seed`` = ``seed + i``, so ``recare sample`` with one image
per row makes exactly the reference's images (``evaluation_seed + 0``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from recare_cli.errors import BadInputError, UsageError
from recare_cli.io.careset import RETAIN_TEMPLATES, CareSet
from recare_cli.io.prompts import CASE, PROMPT, SEED

CONCEPT = "concept"
COLUMNS = (PROMPT, SEED, CASE, CONCEPT)
DEFAULT_TEMPLATE = RETAIN_TEMPLATES["object"]  # "A photo of {}": the reference's CARE-set prompt for objects


@dataclass(frozen=True)
class PromptsOptions:
    """Every option of ``recare prompts``; a field's default is the option's default."""

    careset: str | None = None  # a CARE-set file of either layout, or - for stdin
    concept: Sequence[str] = ()  # words named by --concept (e.g. person, the paper's w* for nudity)
    template: Sequence[str] = ()  # empty: the CARE-set's own retain prompts, else DEFAULT_TEMPLATE
    images_per_prompt: int = 10  # the reference's care_eval.py --num_images
    seed: int = 42  # image i of each prompt: seed + i, as the reference
    target: str | None = None  # which CARE-set of a reference file holding several
    output: str = "-"

    def validate(self) -> None:
        if self.images_per_prompt < 1:
            raise UsageError("--images-per-prompt must be at least 1")
        if self.seed < 0:
            raise UsageError("--seed must be a non-negative integer")
        for template in self.template:
            if template.count("{}") != 1:
                raise UsageError(f"--template '{template}': needs exactly one {{}} where the word goes")
        for word in self.concept:
            if not word.strip():
                raise UsageError("--concept: an empty word")
        if self.careset is None and not self.concept:
            raise UsageError("give a CARE-set file, or --concept WORD (or both)")


def word_prompts(opts: PromptsOptions, care: CareSet | None) -> list[tuple[str, str]]:
    """(word, prompt) pairs, CARE-set words first, then --concept words; repeats left out."""
    pairs: list[tuple[str, str]] = []
    if care is not None:
        if opts.template:
            pairs += [(w, t.format(w)) for w in care.words for t in opts.template]
        else:
            pairs += list(zip(care.words, care.retain_prompts, strict=True))
    templates = list(opts.template) or [care.retain_template if care is not None else DEFAULT_TEMPLATE]
    pairs += [(w.strip(), t.format(w.strip())) for w in opts.concept for t in templates]
    return list(dict.fromkeys(pairs))


def care_prompts(opts: PromptsOptions, care: CareSet | None) -> list[dict[str, Any]]:
    """One row per image: ``images_per_prompt`` rows per prompt, seeds ``seed + i``, case numbers 0, 1, …"""
    opts.validate()
    pairs = word_prompts(opts, care)
    if not pairs:
        raise BadInputError("the CARE-set has no words and no --concept was given: no prompts to write",
                            source=opts.careset, field="words")
    rows: list[dict[str, Any]] = []
    for word, prompt in pairs:
        for i in range(opts.images_per_prompt):
            rows.append({PROMPT: prompt, SEED: opts.seed + i, CASE: len(rows), CONCEPT: word})
    return rows
