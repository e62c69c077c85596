"""Every option with a fixed set of values refuses another value the same way: exit 2, one line naming the
option, the value given and the choices (errors.check_choice), before any model is loaded or file written."""

from __future__ import annotations

from pathlib import Path

import pytest

from recare_cli.errors import UsageError, check_choice
from tests.helpers import invoke


def test_check_choice_accepts_members_and_names_everything_otherwise() -> None:
    check_choice("--x", "b", ("a", "b"), "thing")
    check_choice("--x", "b", {"a": 1, "b": 2}, "thing")  # a mapping's keys
    with pytest.raises(UsageError) as err:
        check_choice("--x", "c", ("a", "b"), "thing")
    assert str(err.value) == "--x: unknown thing 'c' (choose a, b)"


ERASE = ["erase", "--target", "t", "--model", "m", "-o", "OUT"]
INVERT = ["invert", "imgs", "--target", "t", "--model", "m", "-o", "OUT"]
CASES = [  # (arguments, the option refused, its value)
    ([*ERASE, "--method", "esd", "--precision", "fp8"], "--precision", "fp8"),
    ([*ERASE, "--method", "esd", "--save-dtype", "int8"], "--save-dtype", "int8"),
    ([*ERASE, "--method", "magic"], "--method", "magic"),
    ([*INVERT, "--property", "colour"], "--property", "colour"),
    ([*INVERT, "--train-method", "attn"], "--train-method", "attn"),
    (["sample", "PROMPTS", "--out", "OUT", "--model", "m", "--scheduler", "heun"], "--scheduler", "heun"),
    (["score", "IMGS", "--metric", "kid"], "--metric", "kid"),
    (["score", "IMGS", "--metric", "clip", "--label-set", "imagenet"], "--label-set", "imagenet"),
    (["demo", "--task", "unicorn", "--out", "OUT"], "--task", "unicorn"),
]


@pytest.mark.parametrize(("args", "option", "value"), CASES, ids=[f"{c[0][0]} {c[1]}" for c in CASES])
def test_a_value_outside_the_choices_is_one_usage_line(tmp_path: Path, args: list[str], option: str,
                                                        value: str) -> None:
    (tmp_path / "prompts.txt").write_text("a red car\n", "utf-8")
    (tmp_path / "imgs").mkdir()
    real = [a.replace("PROMPTS", str(tmp_path / "prompts.txt")).replace("OUT", str(tmp_path / "out"))
            .replace("IMGS", str(tmp_path / "imgs")).replace("imgs", str(tmp_path / "imgs")) for a in args]
    result = invoke(real)
    assert result.code == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{option}: unknown " in lines[0] and f"'{value}' (choose " in lines[0], lines
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("gamma", ["0", "-5", "of"])
def test_snr_gamma_must_be_positive(tmp_path: Path, gamma: str) -> None:
    result = invoke(["toyworld", "train", "--out", str(tmp_path / "tw"), "--snr-gamma", gamma])
    assert result.code == 2, result.stderr
    want = f"recare toyworld: error: --snr-gamma: must be above 0 or 'off' (got {gamma})"
    assert result.stderr.strip().splitlines() == [want]
    assert not (tmp_path / "tw").exists()
