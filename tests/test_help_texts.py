"""Help texts reach the reader whole: rich renders them as markup, so a bracketed phrase such as
"(default: 30)" written in square brackets would vanish from --help."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import invoke
from tests.test_option_defaults import commands


def _texts(cmd: Any) -> list[tuple[str, str]]:
    found = [("help", cmd.help or "")]
    found += [(f"--{p.name}", getattr(p, "help", None) or "") for p in cmd.params]
    return found


@pytest.mark.parametrize("name,cmd", commands(), ids=[n for n, _ in commands()])
def test_no_help_text_holds_square_brackets(name: str, cmd: Any) -> None:
    bracketed = [where for where, text in _texts(cmd) if "[" in text.replace("\\[", "")]
    assert not bracketed, f"recare {name}: square brackets in the help of {bracketed} (rich eats them as markup)"


@pytest.mark.parametrize(("args", "phrase"), [
    (["cluster", "--help"], "default: 30, lowered for few words"),
    (["mine", "--help"], "default: $XDG_CACHE_HOME/recare"),
    (["erase", "--help"], "default: OUTPUT.ckpt"),
])
def test_defaults_written_in_help_are_shown(args: list[str], phrase: str) -> None:
    result = invoke(args)
    assert result.code == 0
    # a narrow terminal wraps the text inside rich's panel: read it without the borders and line breaks
    flat = " ".join(result.text.translate({ord(c): " " for c in "│╭╮╰╯─"}).split())
    assert phrase in flat, result.text
