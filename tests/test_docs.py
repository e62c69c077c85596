"""docs/cli.md is generated from --help; it must match the code."""

from __future__ import annotations

from pathlib import Path

from recare_cli.cli.docs import render

ROOT = Path(__file__).resolve().parents[1]


def test_cli_reference_is_current() -> None:
    expected = render()
    actual = (ROOT / "docs" / "cli.md").read_text("utf-8")
    assert actual == expected, "docs/cli.md is stale: run `just docs` (python -m recare_cli.cli.docs > docs/cli.md)"


def test_every_exit_code_is_documented() -> None:
    from recare_cli import errors

    readme = (ROOT / "README.md").read_text("utf-8")
    codes = {v for k, v in vars(errors).items() if k.startswith("EXIT_")}
    for code in codes:
        assert f"| {code} |" in readme, f"exit code {code} missing from the README table"
