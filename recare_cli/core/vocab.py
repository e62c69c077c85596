"""Candidate vocabularies for mining (method.md §1)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

WORD_END = "</w>"
_ALPHA = re.compile(r"[a-z]+")

TokenizeFn = Callable[[str], list[int]]


@dataclass(frozen=True)
class Vocabulary:
    """Words to embed; ``token_ids[i]`` is the sequence (without BOS/EOS) that spells ``words[i]``."""

    words: list[str]
    token_ids: list[list[int]]

    def __len__(self) -> int:
        return len(self.words)


def whole_word_vocabulary(vocab: dict[str, int]) -> Vocabulary:
    """Whole-word entries of a CLIP BPE vocabulary: ``…</w>``, ASCII-alphabetic, deduplicated.

    Each word is represented by its own single token id, never re-tokenised as a string (which
    would split ``cat</w>`` into ``cat``, ``</``, ``w``, ``>``). Ordered by token id.
    """
    words: list[str] = []
    ids: list[list[int]] = []
    seen: set[str] = set()
    for token, index in sorted(vocab.items(), key=lambda kv: kv[1]):
        if not token.endswith(WORD_END):
            continue
        word = token[: -len(WORD_END)]
        if _ALPHA.fullmatch(word) and word not in seen:
            seen.add(word)
            words.append(word)
            ids.append([index])
    return Vocabulary(words, ids)


def word_list_vocabulary(words: Iterable[str], tokenize: TokenizeFn) -> Vocabulary:
    """A user word list; each entry tokenised as text (multi-token words allowed), deduplicated."""
    out_words: list[str] = []
    out_ids: list[list[int]] = []
    seen: set[str] = set()
    for word in words:
        if word in seen:
            continue
        seen.add(word)
        out_words.append(word)
        out_ids.append(tokenize(word))
    return Vocabulary(out_words, out_ids)

