"""Prompt files: CSV (as the field publishes them), JSONL, plain text, or stdin.

* CSV: a header row with a ``prompt`` column; optional ``evaluation_seed`` (an integer; ``"42.0"``
  as pandas writes it is accepted) and ``case_number``. Other named columns are kept as ``extra``
  (e.g. ``class``, ``artist``); an unnamed column (pandas' leading index) is ignored. Quoted fields
  may hold commas and newlines.
* JSONL: one object per line with a ``prompt`` string and the same optional keys.
* Text: every non-blank line is one prompt (surrounding whitespace stripped).

``--format auto`` picks by extension (``.csv``, ``.jsonl``/``.json``, ``.txt``); for stdin or any
other name, a first line starting with ``{`` means JSONL, a first line that parses as a CSV header
with a ``prompt`` column means CSV, anything else plain text.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from recare_cli.errors import BadInputError, check_choice
from recare_cli.io.streams import STDIO, display_name, read_bytes

FORMATS = ("auto", "csv", "jsonl", "text")
PROMPT = "prompt"
SEED = "evaluation_seed"
CASE = "case_number"
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class PromptRow:
    index: int  # 0-based position among the prompts read
    line: int  # 1-based line in the source where the record starts
    prompt: str
    seed: int | None = None
    case_number: int | str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def read_prompts(src: str | os.PathLike[str], *, fmt: str = "auto") -> list[PromptRow]:
    """Read prompts from a file or ``-``; raises :class:`BadInputError` naming file, line, column."""
    check_choice("--format", fmt, FORMATS, "prompt format")
    data = read_bytes(src)
    name = display_name(src)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise BadInputError(f"not UTF-8 text (byte {err.start})", source=name) from err
    if fmt == "auto":
        fmt = detect_format(str(src), text)
    rows = {"csv": parse_csv, "jsonl": parse_jsonl, "text": parse_text}[fmt](text, name)
    if not rows:
        raise BadInputError(f"no prompts found (read as {fmt})", source=name)
    return rows


def detect_format(src: str, text: str) -> str:
    suffix = Path(src).suffix.lower() if src != STDIO else ""
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    if suffix == ".txt":
        return "text"
    first = next((line for line in text.splitlines() if line.strip()), "")
    if first.lstrip().startswith("{"):
        return "jsonl"
    header = next(csv.reader([first]), [])
    if PROMPT in {h.strip() for h in header}:
        return "csv"
    return "text"


def _seed(value: Any, name: str, line: int, column: str) -> int | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    seed: int | None = None
    if isinstance(value, bool):
        seed = None
    elif isinstance(value, int):
        seed = value
    elif isinstance(value, float) and value.is_integer():
        seed = int(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            seed = int(text)
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                number = float("nan")
            seed = int(number) if number.is_integer() else None
    if seed is None or not 0 <= seed <= MAX_SEED:
        raise BadInputError(f"expected a non-negative integer seed, got {value!r}", source=name, line=line,
                            field=column)
    return seed


def _case(value: Any) -> int | str | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    text = str(value).strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        return text


def _prompt(value: Any, name: str, line: int) -> str:
    if not isinstance(value, str):
        raise BadInputError(f"expected a string, got {type(value).__name__}", source=name, line=line,
                            field=PROMPT)
    prompt = value.strip()
    if not prompt:
        raise BadInputError("empty prompt", source=name, line=line, field=PROMPT)
    return prompt


def parse_csv(text: str, name: str) -> list[PromptRow]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        return []
    except csv.Error as err:
        raise BadInputError(f"not valid CSV ({err})", source=name, line=1) from err
    columns = [h.strip() for h in header]
    if PROMPT not in columns:
        shown = ", ".join(c or "(unnamed)" for c in columns)
        raise BadInputError(f"no '{PROMPT}' column in the CSV header (columns: {shown})", source=name, line=1)
    named = [(i, c) for i, c in enumerate(columns) if c]
    dupes = sorted({c for _, c in named if columns.count(c) > 1})
    if dupes:
        raise BadInputError(f"duplicate column(s) {', '.join(dupes)} in the CSV header", source=name, line=1)
    rows: list[PromptRow] = []
    start = reader.line_num + 1
    while True:
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            raise BadInputError(f"not valid CSV ({err})", source=name, line=start) from err
        line, start = start, reader.line_num + 1
        if not any(cell.strip() for cell in record):
            continue
        if len(record) != len(columns):
            raise BadInputError(f"{len(record)} fields, the header has {len(columns)} (unquoted comma?)",
                                source=name, line=line)
        values = {c: record[i] for i, c in named}
        rows.append(_row(values, len(rows), line, name))
    return rows


def _row(values: dict[str, Any], index: int, line: int, name: str) -> PromptRow:
    if PROMPT not in values:
        raise BadInputError("missing", source=name, line=line, field=PROMPT)
    extra = {k: v for k, v in values.items() if k not in (PROMPT, SEED, CASE)}
    return PromptRow(index=index, line=line, prompt=_prompt(values[PROMPT], name, line),
                     seed=_seed(values.get(SEED), name, line, SEED), case_number=_case(values.get(CASE)),
                     extra=extra)


def parse_jsonl(text: str, name: str) -> list[PromptRow]:
    rows: list[PromptRow] = []
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError as err:
            raise BadInputError(f"not valid JSON ({err.msg}); was the line cut off?", source=name,
                                line=line) from err
        if not isinstance(value, dict):
            raise BadInputError("expected a JSON object with a 'prompt' field", source=name, line=line)
        rows.append(_row(value, len(rows), line, name))
    return rows


def parse_text(text: str, name: str) -> list[PromptRow]:
    return [PromptRow(index=i, line=line, prompt=prompt)
            for i, (line, prompt) in enumerate((n, s.strip()) for n, s in enumerate(text.splitlines(), 1)
                                               if s.strip())]


def truncation_note(lengths: Sequence[int], limit: int) -> str | None:
    """The one warning for prompts longer than the text encoder's ``limit`` tokens (``lengths``: tokens
    per prompt, BOS and EOS included), or None when every prompt fits."""
    over = [n for n in lengths if n > limit]
    if not over:
        return None
    if len(over) == 1:
        return f"1 prompt is longer than CLIP's {limit} tokens ({over[0]}) and is truncated"
    return f"{len(over)} prompts are longer than CLIP's {limit} tokens (longest {max(over)}) and are truncated"
