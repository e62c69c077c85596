"""JSON Lines with orjson: one record per line, line numbers in every error."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import IO, Any

import orjson

from recare_cli.errors import BadInputError
from recare_cli.io.streams import decode_lines, display_name, read_bytes

DUMP_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE


def dumps_line(record: Any) -> bytes:
    return orjson.dumps(record, option=DUMP_OPTIONS)


def dumps_json(record: Any) -> bytes:
    """Pretty JSON document (2-space indent, trailing newline), stable key order."""
    return orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_INDENT_2
                        | orjson.OPT_APPEND_NEWLINE)


def write_jsonl(out: IO[bytes], records: Iterable[Any]) -> None:
    for record in records:
        out.write(dumps_line(record))


def read_jsonl(src: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)``; blank lines are skipped, anything else must be an object."""
    return parse_jsonl(read_bytes(src), display_name(src))


def parse_jsonl(data: bytes, name: str) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, line in decode_lines(data, name):
        if not line.strip():
            continue
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError as err:
            raise BadInputError(f"not valid JSON ({err.msg}); was the line cut off?",
                                source=name, line=number) from err
        if not isinstance(value, dict):
            raise BadInputError("expected a JSON object", source=name, line=number)
        yield number, value


def loads_json(data: bytes, *, source: str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as err:
        raise BadInputError(f"not valid JSON ({err.msg}) at line {err.lineno}", source=source) from err
