"""Every option's default is declared once: in the stage's options object.

Each command module names its options object (``OPTIONS``) and the parameters that only steer the
command line itself (``CLI_ONLY``: --quiet, input listing flags); every other parameter must be a
field of the options object with the same default. A default written twice would show up here as a
parameter that is not a field, or as a field whose default differs.
"""

from __future__ import annotations

import dataclasses
import sys
from enum import Enum
from typing import Any

import pytest


def commands() -> list[tuple[str, Any]]:
    import typer

    from recare_cli.cli.app import app

    root = typer.main.get_command(app)
    out: list[tuple[str, Any]] = []

    def walk(group: Any, prefix: str) -> None:  # Typer vendors Click: groups are known by their commands
        for name, cmd in sorted(group.commands.items()):
            if hasattr(cmd, "commands"):
                walk(cmd, f"{prefix}{name} ")
            else:
                out.append((f"{prefix}{name}", cmd))

    walk(root, "")
    return out


def plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if hasattr(value, "__fspath__"):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def options_of(cmd: Any) -> tuple[type, set[str]]:
    module = sys.modules[cmd.callback.__module__]  # type: ignore[union-attr]
    table = getattr(module, "OPTIONS", None)
    if isinstance(table, dict):  # a module with several commands: {callback name: options class}
        table = table.get(cmd.callback.__name__)  # type: ignore[union-attr]
    only = getattr(module, "CLI_ONLY", ())
    if isinstance(only, dict):
        only = only.get(cmd.callback.__name__, ())  # type: ignore[union-attr]
    assert table is not None, f"{module.__name__} names no options object (OPTIONS)"
    return table, set(only)


@pytest.mark.parametrize("name,cmd", commands(), ids=[n for n, _ in commands()])
def test_every_default_comes_from_the_options_object(name: str, cmd: Any) -> None:
    cls, cli_only = options_of(cmd)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for param in cmd.params:
        if param.name in cli_only or param.name in ("help",):
            continue
        assert param.name in fields, (f"recare {name}: parameter '{param.name}' is neither a field of "
                                      f"{cls.__name__} nor listed in CLI_ONLY")
        field = fields[param.name]
        if field.default is not dataclasses.MISSING:
            expected = field.default
        elif field.default_factory is not dataclasses.MISSING:
            expected = field.default_factory()
        else:
            continue  # a required field: the command must require it too
        default = param.default if not callable(param.default) else param.default()
        if param.multiple and default is None:
            default = []
        assert plain(default) == plain(expected), (
            f"recare {name} --{param.name}: CLI default {default!r} differs from {cls.__name__}.{param.name} "
            f"= {expected!r}")


def test_the_check_catches_a_default_written_twice() -> None:
    """The rule itself: a command whose default is a copy that drifted is caught."""
    import typer

    @dataclasses.dataclass
    class Opts:
        steps: int = 50

    def cmd(steps: int = typer.Option(40, "--steps")) -> None:  # drifted copy
        pass

    app = typer.Typer()
    app.command()(cmd)
    click_cmd = typer.main.get_command(app)
    param = next(p for p in click_cmd.params if p.name == "steps")
    assert plain(param.default) != dataclasses.fields(Opts)[0].default
