"""Messages and progress on stderr only; stdout is reserved for data.

Progress bars appear only when stderr is a terminal; otherwise a few plain lines. ``--quiet``
silences everything but errors. ``NO_COLOR`` is honoured by rich.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

from rich.console import Console

_state = {"quiet": False}


def stderr_console() -> Console:
    # Created on use so tests that swap sys.stderr see the messages.
    return Console(file=sys.stderr, highlight=False, soft_wrap=True)


def plural(n: int, noun: str) -> str:
    """``1 image``, ``2 images``, ``1,024 words``."""
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"


def set_quiet(quiet: bool) -> None:
    _state["quiet"] = quiet


def info(message: str) -> None:
    if not _state["quiet"]:
        stderr_console().print(message, markup=False)


def warn(message: str) -> None:
    if not _state["quiet"]:
        stderr_console().print(f"warning: {message}", style="yellow", markup=False)


@contextlib.contextmanager
def progress(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``. A live bar on a terminal; otherwise one line at start and end."""
    console = stderr_console()
    if _state["quiet"]:
        yield lambda n: None
        return
    if not console.is_terminal:
        console.print(f"{description}…", markup=False)
        yield lambda n: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    # redirect_stdout=False: rich's live display would otherwise capture stdout, breaking pipes.
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=console, transient=True,
                  redirect_stdout=False, redirect_stderr=False) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)
