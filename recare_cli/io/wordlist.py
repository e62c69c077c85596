"""Word lists for mining: one word per line, ``#`` comments and blank lines ignored.

A CLIP model folder may carry its own list (:data:`VOCABULARY_FILE`) when its text tower knows only
some words (the toy world's CLIP was trained on its world's captions alone): ``recare mine`` then
mines over that list unless ``--vocab`` names another.
"""

from __future__ import annotations

import os
from pathlib import Path

from recare_cli.errors import BadInputError
from recare_cli.io.streams import display_name, read_text_lines

VOCABULARY_FILE = "recare-vocabulary.txt"


def read_word_list(src: str | os.PathLike[str]) -> list[tuple[int, str]]:
    """``(line number, word)`` for every word of the list, in file order; an empty list is refused."""
    words = [(n, line.strip()) for n, line in read_text_lines(src)
             if line.strip() and not line.lstrip().startswith("#")]
    if not words:
        raise BadInputError("the word list is empty", source=display_name(src))
    return words


def folder_vocabulary(model: str) -> Path | None:
    """The word list a local model folder ships (:data:`VOCABULARY_FILE`), if any."""
    candidate = Path(model) / VOCABULARY_FILE
    return candidate if candidate.is_file() else None
