"""Errors that end a command with one line on stderr and a documented exit code.

The exit codes are part of the CLI contract (README, "Exit codes"):

====  ==========================================================
0     success
1     internal error (a bug: please report it with ``--debug`` output)
2     usage error (unknown option, bad option value) — Click's own code
3     bad input data (unreadable file, malformed record, mismatched model)
4     model not available (no such folder, hub unreachable)
5     refused to write (binary to a terminal, output exists without --force)
6     a quality gate failed (``recare score --fail-under`` / ``--fail-over``)
130   interrupted (Ctrl-C); no partial output is left behind
141   downstream pipe closed (e.g. ``| head``); ends quietly
====  ==========================================================
"""

from __future__ import annotations

from collections.abc import Iterable

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_BAD_INPUT = 3
EXIT_MODEL_UNAVAILABLE = 4
EXIT_REFUSED = 5
EXIT_GATE_FAILED = 6
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141


class RecareError(Exception):
    """Base class: ``str(err)`` is the single line shown to the user."""

    exit_code = EXIT_INTERNAL


class UsageError(RecareError):
    exit_code = EXIT_USAGE


def check_choice(option: str, value: str, choices: Iterable[str], what: str) -> None:
    """A :class:`UsageError` naming the option, the value and the choices unless ``value`` is one of them:
    ``--timesteps: unknown timestep draw 'sorted' (choose uniform, stratified)``."""
    allowed = list(choices)
    if value not in allowed:
        raise UsageError(f"{option}: unknown {what} '{value}' (choose {', '.join(allowed)})")


class BadInputError(RecareError):
    """Input data is unusable. Name the file, line and field in the message."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, message: str, *, source: str | None = None, line: int | None = None,
                 field: str | None = None) -> None:
        where = []
        if source is not None:
            where.append(f"{source}:{line}" if line is not None else source)
        if field is not None:
            where.append(f"field '{field}'")
        prefix = " ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)
        self.source, self.line, self.field = source, line, field


class ModelUnavailableError(RecareError):
    exit_code = EXIT_MODEL_UNAVAILABLE


class RefusedError(RecareError):
    exit_code = EXIT_REFUSED


class GateFailedError(RecareError):
    """A score fell on the wrong side of a ``--fail-under``/``--fail-over`` gate."""

    exit_code = EXIT_GATE_FAILED


class InterruptedRunError(RecareError):
    """Ctrl-C during a run that keeps a checkpoint: the message says what was kept and how to resume."""

    exit_code = EXIT_INTERRUPTED


class PipeClosedError(RecareError):
    """The reader of stdout went away (``| head``): stop quietly."""

    exit_code = EXIT_BROKEN_PIPE
