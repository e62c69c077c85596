"""Text as the ReCARE reference hands it to CLIP: OpenAI CLIP's own cleaning before BPE.

The reference (damilab/CARE ``utils/dictionary.py``) tokenises every vocabulary entry *as a string*
with OpenAI's ``clip.tokenize``, which cleans the text first: ``ftfy.fix_text``, HTML unescaping
(twice), stripping, whitespace collapsed to one space, lower-casing. transformers' ``CLIPTokenizer``
does the last two but neither ftfy nor the unescaping, so :func:`reference_clean` does them before
the tokenizer sees the text.

ftfy is not a dependency: what ftfy 6.3.1 (the version the reference pins) makes of the 49,408 CLIP
vocabulary entries is shipped as data (``data/clip_bpe/ftfy_fixes.json``: the 493 entries it
changes). An entry of another vocabulary goes through ftfy when it is installed, else it is taken
as written; :func:`unfixed` names the entries that were.
"""

from __future__ import annotations

import html
import json
import re
from functools import cache
from importlib import resources

FTFY_VERSION = "6.3.1"  # the version the reference's environment pins; the table below is its output
FIXES_FILE = "ftfy_fixes.json"
_SPACES = re.compile(r"\s+")


@cache
def _fixes() -> dict[str, str]:
    data = resources.files("recare_cli.data.clip_bpe").joinpath(FIXES_FILE).read_text("utf-8")
    table: dict[str, str] = json.loads(data)["fixes"]
    return table


@cache
def _standard_entries() -> frozenset[str]:
    from recare_cli.models.bpe import build_vocab, load_merges

    return frozenset(build_vocab(load_merges()))


def _ftfy() -> object | None:
    try:
        import ftfy
    except ImportError:
        return None
    return ftfy


def fix_text(text: str) -> str:
    """``ftfy.fix_text(text)`` as ftfy 6.3.1 gives it for CLIP's vocabulary entries (from the shipped table);
    other text through the installed ftfy, or unchanged without one."""
    if text in _standard_entries():
        return _fixes().get(text, text)
    ftfy = _ftfy()
    return ftfy.fix_text(text) if ftfy is not None else text  # type: ignore[attr-defined]


def unfixed(texts: list[str]) -> list[str]:
    """The texts :func:`fix_text` could not treat as the reference does (not CLIP entries, no ftfy here)."""
    if _ftfy() is not None:
        return []
    standard = _standard_entries()
    return [t for t in texts if t not in standard]


def reference_clean(text: str) -> str:
    """OpenAI CLIP's cleaning: ftfy, HTML unescaped twice, stripped, whitespace runs to one space, lower case."""
    text = html.unescape(html.unescape(fix_text(text))).strip()
    return _SPACES.sub(" ", text).strip().lower()


def ftfy_table(entries: list[str]) -> dict[str, str]:
    """The entries that the installed ftfy changes, with what it makes of them (how the shipped table is made:
    ``ftfy_table(list(build_vocab(load_merges())))`` under ftfy 6.3.1)."""
    import ftfy

    return {e: fixed for e in entries if (fixed := ftfy.fix_text(e)) != e}
