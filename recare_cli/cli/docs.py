"""Generate docs/cli.md from every subcommand's ``--help`` (checked in CI so it cannot drift).

    python -m recare_cli.cli.docs > docs/cli.md
"""

from __future__ import annotations

import os
import subprocess
import sys

# A fixed terminal so the rendering is the same on every machine.
HELP_ENV = {"TERMINAL_WIDTH": "100", "COLUMNS": "100", "NO_COLOR": "1", "TERM": "dumb"}


def command_names() -> list[str]:
    import typer

    from recare_cli.cli.app import app

    group = typer.main.get_command(app)
    return list(getattr(group, "commands", {}))


def help_text(args: list[str]) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR",)}
    env.update(HELP_ENV)
    done = subprocess.run([sys.executable, "-m", "recare_cli", *args, "--help"], env=env,
                          capture_output=True, text=True, check=True)
    return "\n".join(line.rstrip() for line in done.stdout.strip("\n").splitlines())


def render() -> str:
    parts = ["# CLI reference", "",
             "Generated from `--help` by `python -m recare_cli.cli.docs > docs/cli.md`; "
             "a test fails when this file and the code disagree.", ""]
    for args in ([], *([name] for name in command_names())):
        title = " ".join(["recare", *args])
        parts += [f"## `{title}`", "", "```text", help_text(args), "```", ""]
    return "\n".join(parts)


if __name__ == "__main__":
    sys.stdout.write(render())
