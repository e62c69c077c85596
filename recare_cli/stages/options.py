"""The calling convention of every stage: one options object (a dataclass) per stage.

An option's default is written once, as the field's default here; the CLI command takes its
defaults from the fields (``= EraseOptions.iterations``), and ``tests/test_option_defaults.py``
enumerates every command's options against its options object. Provenance records the fields, in
declaration order, through :func:`recorded`: a field is recorded unless its metadata says otherwise
(:func:`run_control` for settings that do not shape the output, such as ``--resume`` or
``--quiet``; :func:`recorded_if_set` for options that are recorded only when given, so files made
without them keep their bytes; :func:`recorded_when` for the options of one method of a command with
several, recorded only in that method's files).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from enum import Enum
from typing import Any

_RECORD = "record"
_IF_SET = "if-set"


def run_control(default: Any = None) -> Any:
    """A field that steers the run but not its result: never recorded in provenance."""
    return dataclasses.field(default=default, metadata={_RECORD: False})


def recorded_if_set(default: Any = None) -> Any:
    """A field recorded in provenance only when it differs from ``None``."""
    return dataclasses.field(default=default, metadata={_RECORD: _IF_SET})


def recorded_when(condition: Callable[[Any], bool], default: Any = None) -> Any:
    """A field recorded in provenance only when ``condition(opts)`` holds (e.g. the options of one erase
    method): the files of the other methods keep their bytes."""
    return dataclasses.field(default=default, metadata={_RECORD: condition})


def plain(value: Any) -> Any:
    """A value as provenance stores it: paths as strings, enums as their value."""
    if isinstance(value, Enum):
        return value.value
    if hasattr(value, "__fspath__"):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def recorded(opts: Any) -> dict[str, Any]:
    """The parameters provenance records for ``opts``, in field order."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(opts):
        rule = f.metadata.get(_RECORD, True)
        value = getattr(opts, f.name)
        if rule is False or (rule == _IF_SET and value is None) or (callable(rule) and not rule(opts)):
            continue
        out[f.name] = plain(value)
    return out


def defaults(cls: type) -> dict[str, Any]:
    """Each field's default (fields without one are left out)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out
