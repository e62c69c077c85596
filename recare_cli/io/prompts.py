"""Prompt files: CSV (as the field publishes them), JSONL, plain text, or stdin.

* CSV: a header row with a ``prompt`` column; optional seed and ``case_number`` columns. Numbers
  may be written as floats (``"42.0"``, as pandas writes them). Other named columns are kept as
  ``extra`` (e.g. ``class``, ``artist``, I2P's ``categories``); an unnamed column (pandas' leading
  index) is ignored. Quoted fields may hold commas and newlines.
* JSONL: one object per line with a ``prompt`` string and the same optional keys.
* Text: every non-blank line is one prompt (surrounding whitespace stripped).

A row's seed comes from the first of :data:`SEED_COLUMNS` the row has (``evaluation_seed`` wins over
``seed``, which wins over I2P's ``sd_seed``); the others stay in ``extra``. With ``row_settings``,
per-row guidance and image size are read the same way (:data:`GUIDANCE_COLUMNS`,
:data:`HEIGHT_COLUMNS`, :data:`WIDTH_COLUMNS`); without it those columns are only ``extra``.

A bad row (empty prompt, a seed that is not a non-negative integer, a CSV record with the wrong
number of fields, a JSONL line that is not an object) is skipped and reported in one warning that
names the rows and counts them; ``strict`` refuses the file instead. A skipped row keeps its place:
``PromptRow.index`` counts every record of the file, so the other rows keep their positions (and
their image names) when the bad row is fixed. Problems of the whole file (no ``prompt`` column, not
UTF-8, unreadable CSV, no usable row) always stop the run.

``--format auto`` picks by extension (``.csv``, ``.jsonl``/``.json``, ``.txt``); for stdin or any
other name, a first line starting with ``{`` means JSONL, a first line that parses as a CSV header
with a ``prompt`` column means CSV, anything else plain text.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from recare_cli import console
from recare_cli.errors import BadInputError, check_choice
from recare_cli.io.streams import STDIO, display_name, read_bytes

FORMATS = ("auto", "csv", "jsonl", "text")
PROMPT = "prompt"
SEED = "evaluation_seed"
CASE = "case_number"
SEED_COLUMNS = (SEED, "seed", "sd_seed")  # first present wins
GUIDANCE_COLUMNS = ("evaluation_guidance", "guidance", "sd_guidance")
HEIGHT_COLUMNS = ("height", "sd_image_height")
WIDTH_COLUMNS = ("width", "sd_image_width")
SETTING_COLUMNS = {"guidance": GUIDANCE_COLUMNS, "height": HEIGHT_COLUMNS, "width": WIDTH_COLUMNS}
MAX_SEED = 2**63 - 1
NAMED_ROWS = 10  # a skip warning names this many rows, then counts the rest
_DECIMAL_INT = re.compile(r"^[+-]?\d+(\.0*)?$")


@dataclass(frozen=True)
class PromptRow:
    index: int  # 0-based position among the file's records (skipped bad rows count)
    line: int  # 1-based line in the source where the record starts
    prompt: str
    seed: int | None = None
    case_number: int | str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    guidance: float | None = None  # per-row settings, read only when asked (row_settings)
    height: int | None = None
    width: int | None = None


@dataclass(frozen=True)
class BadRow:
    """A record that was skipped, and why."""

    index: int
    line: int
    message: str
    field: str | None = None
    case_number: int | str | None = None

    def describe(self) -> str:
        case = f" (case {self.case_number})" if self.case_number is not None else ""
        where = f" field '{self.field}'" if self.field else ""
        return f"line {self.line}{case}{where}: {self.message}"

    def error(self, source: str) -> BadInputError:
        return BadInputError(self.message, source=source, line=self.line, field=self.field)


@dataclass
class PromptFile:
    source: str  # the name messages use
    format: str
    rows: list[PromptRow]
    bad: list[BadRow]
    columns: list[str] = field(default_factory=list)  # CSV header (named columns), or JSONL keys seen
    row_settings: bool = False

    @property
    def records(self) -> int:
        return len(self.rows) + len(self.bad)

    def skip_note(self, limit: int = NAMED_ROWS) -> str | None:
        """The one warning for the skipped rows: up to ``limit`` named, the rest counted."""
        if not self.bad:
            return None
        shown = "; ".join(b.describe() for b in self.bad[:limit])
        more = f"; and {len(self.bad) - limit:,} more" if len(self.bad) > limit else ""
        return (f"{self.source}: skipped {len(self.bad):,} of {self.records:,} rows (--strict refuses them): "
                f"{shown}{more}")

    def column_notes(self) -> list[str]:
        """Which of several seed (and setting) columns is used, and setting columns left unused."""
        notes = []
        roles = {"seed": SEED_COLUMNS, **(SETTING_COLUMNS if self.row_settings else {})}
        for role, aliases in roles.items():
            present = [c for c in aliases if c in self.columns]
            if len(present) > 1:
                notes.append(f"{self.source}: the {role} comes from column '{present[0]}'; "
                             f"{', '.join(repr(c) for c in present[1:])} kept as extra")
        unused = self.unused_setting_columns()
        if unused:
            notes.append(f"{self.source}: per-row settings in column(s) {', '.join(unused)} are not used: every "
                         "image takes --guidance, --height and --width (--row-settings honours them)")
        return notes

    def unused_setting_columns(self) -> list[str]:
        if self.row_settings:
            return []
        return [c for aliases in SETTING_COLUMNS.values() for c in aliases if c in self.columns]

    def has_setting_columns(self) -> bool:
        return any(c in self.columns for aliases in SETTING_COLUMNS.values() for c in aliases)


def read_prompts(src: str | os.PathLike[str], *, fmt: str = "auto", strict: bool = False,
                 row_settings: bool = False) -> list[PromptRow]:
    """The usable rows of a prompt file; skipped rows and column choices are reported on stderr."""
    prompts = read_prompt_file(src, fmt=fmt, strict=strict, row_settings=row_settings)
    for note in prompts.column_notes():
        console.info(note)
    if row_settings and prompts.format != "text" and not prompts.has_setting_columns():
        console.warn(f"{prompts.source}: --row-settings, but no guidance or size column "
                     f"({', '.join(c for a in SETTING_COLUMNS.values() for c in a)}): every image takes the "
                     "command's settings")
    skipped = prompts.skip_note()
    if skipped is not None:
        console.warn(skipped)
    return prompts.rows


def read_prompt_file(src: str | os.PathLike[str], *, fmt: str = "auto", strict: bool = False,
                     row_settings: bool = False) -> PromptFile:
    """Read prompts from a file or ``-``; raises :class:`BadInputError` naming file, line, column for
    a file that cannot be used, and for the first bad row when ``strict``."""
    check_choice("--format", fmt, FORMATS, "prompt format")
    data = read_bytes(src)
    name = display_name(src)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise BadInputError(f"not UTF-8 text (byte {err.start})", source=name) from err
    if fmt == "auto":
        fmt = detect_format(str(src), text)
    if fmt == "csv":
        prompts = parse_csv(text, name, row_settings=row_settings)
    elif fmt == "jsonl":
        prompts = parse_jsonl(text, name, row_settings=row_settings)
    else:
        prompts = PromptFile(name, "text", parse_text(text, name), [])
    if prompts.bad and strict:
        first = prompts.bad[0]
        more = len(prompts.bad) - 1
        message = first.message + (f" (and {more} more bad {'row' if more == 1 else 'rows'})" if more else "")
        raise BadInputError(message, source=name, line=first.line, field=first.field)
    if not prompts.rows:
        if prompts.bad:
            n = len(prompts.bad)
            which = "the only row is" if n == 1 else f"all {n} rows are"
            shown = "; ".join(b.describe() for b in prompts.bad[:3]) + ("; …" if n > 3 else "")
            raise BadInputError(f"no usable prompts: {which} bad ({shown})", source=name)
        raise BadInputError(f"no prompts found (read as {fmt})", source=name)
    return prompts


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


class _RowError(Exception):
    def __init__(self, message: str, column: str | None = None) -> None:
        super().__init__(message)
        self.message, self.column = message, column


def _number(value: Any) -> float | None:
    """A number from a JSON value or a CSV cell (``"42"``, ``"42.0"``, ``"7.5"``); None when blank."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        return math.nan
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(str(value).strip())
    except ValueError:
        return math.nan


def _integer(value: Any) -> int | None:
    """An integer written as one or as an integral float (``"4261553411"``, ``"42.0"``, ``42.0``);
    None when blank. Decimal text is read exactly (no float rounding for large values)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _DECIMAL_INT.match(value.strip()):
        return int(value.strip().split(".")[0])
    number = _number(value)
    if number is None or not math.isfinite(number) or not number.is_integer():
        raise ValueError(value)
    return int(number)


def _seed(value: Any, column: str) -> int | None:
    try:
        seed = _integer(value)
    except ValueError:
        seed = -1
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise _RowError(f"expected a non-negative integer seed, got {value!r}", column)
    return seed


def _case(value: Any) -> int | str | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if not text:
        return None
    return int(text.split(".")[0]) if _DECIMAL_INT.match(text) else text


def _guidance(value: Any, column: str) -> float | None:
    number = _number(value)
    if number is not None and not (math.isfinite(number) and number >= 0):
        raise _RowError(f"expected a non-negative guidance scale, got {value!r}", column)
    return number


def _size(value: Any, column: str) -> int | None:
    try:
        size = _integer(value)
    except ValueError:
        size = -1
    if size is not None and (size < 8 or size % 8):
        raise _RowError(f"expected an image size in pixels, a multiple of 8, got {value!r}", column)
    return size


def _prompt(value: Any) -> str:
    if not isinstance(value, str):
        raise _RowError(f"expected a string, got {type(value).__name__}", PROMPT)
    prompt = value.strip()
    if not prompt:
        raise _RowError("empty prompt", PROMPT)
    return prompt


def _pick(values: dict[str, Any], aliases: Sequence[str]) -> tuple[str | None, Any]:
    """The first of ``aliases`` that ``values`` has, and its value."""
    for column in aliases:
        if column in values:
            return column, values[column]
    return None, None


def _row(values: dict[str, Any], index: int, line: int, row_settings: bool) -> PromptRow:
    if PROMPT not in values:
        raise _RowError("missing", PROMPT)
    prompt = _prompt(values[PROMPT])
    used = {PROMPT, CASE}
    seed_col, seed_value = _pick(values, SEED_COLUMNS)
    seed = None
    if seed_col is not None:
        seed = _seed(seed_value, seed_col)
        used.add(seed_col)
    settings: dict[str, Any] = {}
    if row_settings:
        for role, aliases in SETTING_COLUMNS.items():
            column, value = _pick(values, aliases)
            if column is not None:
                settings[role] = _guidance(value, column) if role == "guidance" else _size(value, column)
                used.add(column)
    extra = {k: v for k, v in values.items() if k not in used}
    return PromptRow(index=index, line=line, prompt=prompt, seed=seed, case_number=_case(values.get(CASE)),
                     extra=extra, **settings)


def _bad(err: _RowError, index: int, line: int, values: dict[str, Any] | None) -> BadRow:
    case = _case(values.get(CASE)) if values is not None else None
    return BadRow(index, line, err.message, err.column, case)


def _csv_records(reader: Any, name: str) -> Iterator[tuple[int, list[str]]]:
    """(start line, fields) of each record after the header, blank lines left out."""
    start = reader.line_num + 1
    while True:
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            raise BadInputError(f"not valid CSV ({err})", source=name, line=start) from err
        line, start = start, reader.line_num + 1
        if any(cell.strip() for cell in record):
            yield line, record


def parse_csv(text: str, name: str, *, row_settings: bool = False) -> PromptFile:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        return PromptFile(name, "csv", [], [])
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
    prompts = PromptFile(name, "csv", [], [], [c for _, c in named], row_settings)
    for index, (line, record) in enumerate(_csv_records(reader, name)):
        values = {c: record[i] for i, c in named if i < len(record)}
        try:
            if len(record) != len(columns):
                raise _RowError(f"{len(record)} fields, the header has {len(columns)} (unquoted comma?)")
            prompts.rows.append(_row(values, index, line, row_settings))
        except _RowError as err:
            prompts.bad.append(_bad(err, index, line, values))
    return prompts


def parse_jsonl(text: str, name: str, *, row_settings: bool = False) -> PromptFile:
    prompts = PromptFile(name, "jsonl", [], [], [], row_settings)
    seen: dict[str, None] = {}
    index = 0
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        value: Any = None
        try:
            try:
                value = orjson.loads(raw)
            except orjson.JSONDecodeError as err:
                raise _RowError(f"not valid JSON ({err.msg}); was the line cut off?") from err
            if not isinstance(value, dict):
                raise _RowError("expected a JSON object with a 'prompt' field")
            seen.update(dict.fromkeys(value))
            prompts.rows.append(_row(value, index, line, row_settings))
        except _RowError as err:
            prompts.bad.append(_bad(err, index, line, value if isinstance(value, dict) else None))
        index += 1
    prompts.columns = list(seen)
    return prompts


def parse_text(text: str, name: str) -> list[PromptRow]:
    return [PromptRow(index=i, line=line, prompt=prompt)
            for i, (line, prompt) in enumerate((n, s.strip()) for n, s in enumerate(text.splitlines(), 1)
                                               if s.strip())]


def format_csv(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A CSV document (header, then one line per row, ``\\n`` line ends) that :func:`parse_csv` reads back."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n", extrasaction="raise")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def truncation_note(lengths: Sequence[int], limit: int) -> str | None:
    """The one warning for prompts longer than the text encoder's ``limit`` tokens (``lengths``: tokens
    per prompt, BOS and EOS included), or None when every prompt fits."""
    over = [n for n in lengths if n > limit]
    if not over:
        return None
    if len(over) == 1:
        return f"1 prompt is longer than CLIP's {limit} tokens ({over[0]}) and is truncated"
    return f"{len(over)} prompts are longer than CLIP's {limit} tokens (longest {max(over)}) and are truncated"
