"""The ``recare`` command: subcommands, and one place that turns failures into exit codes."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence

import typer

from recare_cli import __version__
from recare_cli.errors import (
    EXIT_BROKEN_PIPE,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    PipeClosedError,
    RecareError,
)

# Typer ≥ 0.25 vendors Click; take the exception classes from wherever Typer's own come from.
click_exceptions = importlib.import_module(typer.BadParameter.__module__)

app = typer.Typer(
    name="recare",
    help="Concept unlearning for text-to-image diffusion models that keeps what co-occurs (ReCARE).\n\n"
         "Each subcommand reads and writes plain files or stdin/stdout, so stages pipe together:\n\n"
         "  recare mine imgs/ --target nudity | recare cluster -n 6 | recare refine > care.json",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"recare {__version__}\n")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", envvar="RECARE_DEBUG",
                               help="Show tracebacks for errors."),
) -> None:
    if debug:
        os.environ["RECARE_DEBUG"] = "1"


def _register() -> None:
    from recare_cli.cli import attack as attack_cmd
    from recare_cli.cli import cluster, demo, mine, refine
    from recare_cli.cli import erase as erase_cmd
    from recare_cli.cli import export as export_cmd
    from recare_cli.cli import invert as invert_cmd
    from recare_cli.cli import prompts as prompts_cmd
    from recare_cli.cli import report as report_cmd
    from recare_cli.cli import sample as sample_cmd
    from recare_cli.cli import score as score_cmd
    from recare_cli.cli import toyworld as toyworld_cmd

    app.command("mine", help=mine.HELP, no_args_is_help=True)(mine.mine)
    app.command("cluster", help=cluster.HELP)(cluster.cluster)
    app.command("refine", help=refine.HELP)(refine.refine)
    app.command("demo", help=demo.HELP)(demo.demo)
    app.command("prompts", help=prompts_cmd.HELP, no_args_is_help=True)(prompts_cmd.prompts)
    app.command("sample", help=sample_cmd.HELP, no_args_is_help=True)(sample_cmd.sample)
    app.command("score", help=score_cmd.HELP, no_args_is_help=True)(score_cmd.score)
    app.command("report", help=report_cmd.HELP, no_args_is_help=True)(report_cmd.report)
    app.command("invert", help=invert_cmd.HELP, no_args_is_help=True)(invert_cmd.invert)
    app.command("erase", help=erase_cmd.HELP, no_args_is_help=True)(erase_cmd.erase)
    app.command("attack", help=attack_cmd.HELP, no_args_is_help=True)(attack_cmd.attack)
    app.command("export", help=export_cmd.HELP, no_args_is_help=True)(export_cmd.export)
    app.add_typer(toyworld_cmd.app, name="toyworld", help=toyworld_cmd.HELP)


_register()


def _debug() -> bool:
    return os.environ.get("RECARE_DEBUG", "").lower() in ("1", "true", "yes", "on")


def _fail(prefix: str, message: str, code: int) -> int:
    sys.stderr.write(f"{prefix}: error: {message}\n")
    sys.stderr.flush()
    return code


def _silence_stdout() -> None:
    """After a closed pipe, point stdout at /dev/null so interpreter shutdown cannot complain."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def run(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return the exit code (see recare_cli.errors for the table)."""
    command = typer.main.get_command(app)
    args = list(sys.argv[1:] if argv is None else argv)
    prefix = "recare"
    try:
        rv = command.main(args=args, prog_name="recare", standalone_mode=False)
        # Non-standalone Typer returns the code of an Exit (Ctrl-C becomes Exit(130)) instead of raising.
        code = rv if isinstance(rv, int) and not isinstance(rv, bool) else 0
        if code == EXIT_INTERRUPTED:
            return _fail(_command_path(args), "interrupted; no partial output was written", code)
        return code
    except click_exceptions.UsageError as err:
        if err.ctx is not None:
            prefix = err.ctx.command_path
        if not err.format_message().strip():  # no_args_is_help: the help was printed already
            return EXIT_USAGE
        hint = f" (see {prefix} --help)"
        return _fail(prefix, err.format_message().replace("\n", " ") + hint, EXIT_USAGE)
    except typer.Exit as err:
        return int(err.exit_code or 0)
    except typer.Abort:
        return _fail(prefix, "interrupted", EXIT_INTERRUPTED)
    except KeyboardInterrupt:
        return _fail(prefix, "interrupted; no partial output was written", EXIT_INTERRUPTED)
    except (BrokenPipeError, PipeClosedError):
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except RecareError as err:
        if _debug():
            import traceback

            traceback.print_exc()
        return _fail(_command_path(args), str(err), err.exit_code)
    except Exception as err:  # a bug: one line unless --debug
        if _debug():
            raise
        message = f"internal error: {type(err).__name__}: {err} (rerun with --debug for the traceback)"
        return _fail(_command_path(args), message.replace("\n", " "), EXIT_INTERNAL)


def _command_path(args: Sequence[str]) -> str:
    sub = next((a for a in args if not a.startswith("-")), None)
    return f"recare {sub}" if sub else "recare"


def main() -> None:
    code = run()
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
        code = EXIT_BROKEN_PIPE
    sys.exit(code)
