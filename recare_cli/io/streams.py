"""Inputs and outputs that may be a path or ``-`` (stdin/stdout).

Data goes to stdout; never anything else. Binary formats refuse a terminal.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from recare_cli.errors import BadInputError, PipeClosedError, RefusedError
from recare_cli.io.atomic import atomic_path

STDIO = "-"


def display_name(src: str | os.PathLike[str]) -> str:
    return "<stdin>" if str(src) == STDIO else str(src)


def read_bytes(src: str | os.PathLike[str]) -> bytes:
    if str(src) == STDIO:
        return sys.stdin.buffer.read()
    path = Path(src)
    if not path.exists():
        raise BadInputError("no such file", source=str(path))
    if path.is_dir():
        raise BadInputError("is a directory, expected a file", source=str(path))
    try:
        return path.read_bytes()
    except OSError as err:
        raise BadInputError(f"cannot read: {err.strerror}", source=str(path)) from err


def read_text_lines(src: str | os.PathLike[str]) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` for every line of a UTF-8 text input, 1-based."""
    return decode_lines(read_bytes(src), display_name(src))


def decode_lines(data: bytes, name: str) -> Iterator[tuple[int, str]]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise BadInputError(f"not UTF-8 text (byte {err.start})", source=name) from err
    yield from enumerate(text.splitlines(), start=1)


@contextlib.contextmanager
def open_output(dest: str | os.PathLike[str], *, binary: bool) -> Iterator[IO[bytes]]:
    """Open ``dest`` for writing bytes: stdout for ``-``, else an atomic temporary file.

    Binary data is refused on a terminal (exit 5). The file appears only if the body of the
    ``with`` block completes.
    """
    if str(dest) == STDIO:
        if binary:
            check_binary_destination(dest)
        out = sys.stdout.buffer
        try:
            yield out
            out.flush()
        except BrokenPipeError as err:
            # Raised as our own error: Click turns a BrokenPipeError into exit 1.
            raise PipeClosedError("stdout closed") from err
        return
    with atomic_path(dest) as tmp, open(tmp, "wb") as fh:
        yield fh
        fh.flush()
        os.fsync(fh.fileno())


def check_binary_destination(dest: str | os.PathLike[str]) -> None:
    """Refuse (exit 5) binary output to stdout when stdout is a terminal. ``open_output`` checks this
    itself; commands that train before they write call it first, so the refusal comes before the work."""
    if str(dest) == STDIO and stdout_is_terminal():
        raise RefusedError("refusing to write binary data to a terminal: use -o FILE or a pipe")


def stdout_is_terminal() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError, io.UnsupportedOperation):
        return False
