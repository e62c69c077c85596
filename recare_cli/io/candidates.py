"""The candidate-word stream (``recare.candidates``, JSONL) that flows mine → cluster → refine.

Line 1 is a header record, every further line a word record (see docs/formats.md). People may
delete or edit word lines between stages; everything is re-validated on read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np

from recare_cli.errors import BadInputError
from recare_cli.io.jsonl import dumps_line, parse_jsonl
from recare_cli.io.streams import display_name, read_bytes

FORMAT = "recare.candidates"
VERSION = 1


def strip_private(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if not k.startswith("_")}


@dataclass
class CandidateStream:
    header: dict[str, Any]
    words: list[dict[str, Any]] = field(default_factory=list)
    clusters: list[dict[str, Any]] = field(default_factory=list)
    source: str = "<memory>"

    @property
    def target(self) -> str:
        return str(self.header["target"])

    @property
    def target_embedding(self) -> np.ndarray:
        return np.asarray(self.header["target_embedding"], dtype=np.float32)

    def embeddings(self) -> np.ndarray:
        dim = int(self.header["embedding_dim"])
        if not self.words:
            return np.zeros((0, dim), dtype=np.float32)
        return np.asarray([w["embedding"] for w in self.words], dtype=np.float32)

    def write(self, out: IO[bytes]) -> None:
        out.write(dumps_line(self.header))
        for record in self.clusters:
            out.write(dumps_line(record))
        for record in self.words:
            out.write(dumps_line(strip_private(record)))


def make_header(*, target: str, target_embedding: np.ndarray, clip: dict[str, Any],
                mining: dict[str, Any], provenance: dict[str, Any]) -> dict[str, Any]:
    return {
        "record": "header", "format": FORMAT, "version": VERSION, "target": target,
        "embedding_dim": int(target_embedding.shape[0]),
        "target_embedding": np.asarray(target_embedding, dtype=np.float32),
        "clip": clip, "mining": mining, "provenance": [provenance],
    }


def _require(record: dict[str, Any], key: str, kinds: type | tuple[type, ...], src: str,
             line: int) -> Any:
    if key not in record:
        raise BadInputError("missing", source=src, line=line, field=key)
    value = record[key]
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        raise BadInputError(f"expected {kinds}, got a boolean", source=src, line=line, field=key)
    if not isinstance(value, kinds):
        names = "/".join(k.__name__ for k in (kinds if isinstance(kinds, tuple) else (kinds,)))
        raise BadInputError(f"expected {names}, got {type(value).__name__}", source=src, line=line,
                            field=key)
    return value


def _check_vector(value: Any, dim: int, src: str, line: int, key: str) -> None:
    if not isinstance(value, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                              for x in value):
        raise BadInputError("expected a list of numbers", source=src, line=line, field=key)
    if len(value) != dim:
        raise BadInputError(
            f"has {len(value)} values but the header says embedding_dim {dim}: "
            "was this made with a different CLIP model?", source=src, line=line, field=key)


def validate_header(record: dict[str, Any], src: str, line: int) -> None:
    if record.get("format") != FORMAT:
        raise BadInputError(f"expected a '{FORMAT}' header (is this the output of recare mine?)",
                            source=src, line=line, field="format")
    version = _require(record, "version", int, src, line)
    if version > VERSION:
        raise BadInputError(f"version {version} is newer than this recare understands ({VERSION})",
                            source=src, line=line, field="version")
    _require(record, "target", str, src, line)
    dim = _require(record, "embedding_dim", int, src, line)
    _check_vector(record.get("target_embedding"), dim, src, line, "target_embedding")
    if not np.any(np.asarray(record["target_embedding"], dtype=np.float64)):
        raise BadInputError("is all zeros", source=src, line=line, field="target_embedding")
    _require(record, "clip", dict, src, line)


def read_candidates(src: str | os.PathLike[str]) -> CandidateStream:
    return parse_candidates(read_bytes(src), display_name(src))


def parse_candidates(data: bytes, name: str) -> CandidateStream:
    stream: CandidateStream | None = None
    seen: dict[str, int] = {}
    for line, record in parse_jsonl(data, name):
        kind = record.get("record")
        if kind == "header":
            if stream is not None:
                raise BadInputError("a second header: concatenated streams cannot be mixed",
                                    source=name, line=line)
            validate_header(record, name, line)
            stream = CandidateStream(header=record, source=name)
            continue
        if stream is None:
            raise BadInputError("the first record must be the header (was the stream truncated "
                                "at the start?)", source=name, line=line)
        if kind == "cluster":
            stream.clusters.append(record)
            continue
        if kind != "word":
            raise BadInputError(f"unknown record type {kind!r}", source=name, line=line, field="record")
        word = _require(record, "word", str, name, line)
        if not word.strip():
            raise BadInputError("is empty", source=name, line=line, field="word")
        if word in seen:
            raise BadInputError(f"duplicate word (first on line {seen[word]})", source=name, line=line,
                                field="word")
        seen[word] = line
        _require(record, "count", int, name, line)
        _check_vector(record.get("embedding"), int(stream.header["embedding_dim"]), name, line,
                      "embedding")
        record["_line"] = line
        stream.words.append(record)
    if stream is None:
        raise BadInputError("empty input: expected a recare.candidates stream", source=name)
    return stream
