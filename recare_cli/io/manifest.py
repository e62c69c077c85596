"""The image manifest written by ``recare sample`` and read by ``recare score`` (JSONL).

One record per image, in job order (prompt order, then image index). Manifests of the shards of a
run (``--shard 0/n`` … ``--shard n-1/n``) concatenate, in shard order, to the manifest of the
single-process run. Fields: see docs/evaluation.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recare_cli import __version__
from recare_cli.errors import BadInputError
from recare_cli.io.jsonl import parse_jsonl
from recare_cli.io.streams import STDIO, display_name, read_bytes

FORMAT = "recare.manifest"
VERSION = 1


def make_record(*, path: str, sha256: str, prompt: str, prompt_index: int, case_number: int | str | None,
                image_index: int, seed: int, extra: dict[str, Any], sampling: dict[str, Any],
                model: dict[str, Any], weights: list[dict[str, Any]], embeddings: list[dict[str, Any]],
                config: str) -> dict[str, Any]:
    return {"format": FORMAT, "version": VERSION, "path": path, "sha256": sha256, "prompt": prompt,
            "prompt_index": prompt_index, "case_number": case_number, "image_index": image_index,
            "seed": seed, "extra": extra, "sampling": sampling, "model": model, "weights": weights,
            "embeddings": embeddings, "config": config, "recare": __version__}


@dataclass(frozen=True)
class ManifestEntry:
    line: int
    path: Path  # resolved
    prompt: str | None
    sha256: str | None
    record: dict[str, Any]


def resolve_image_path(raw: str, *, manifest: str, root: Path | None) -> Path:
    """Relative paths: under ``root`` when given; else as seen from the current directory when that
    file exists; else next to the manifest file."""
    path = Path(raw)
    if path.is_absolute():
        return path
    if root is not None:
        return root / path
    if path.exists() or manifest == STDIO:
        return path
    beside = Path(manifest).parent / path
    return beside if beside.exists() else path


def read_manifest(src: str | os.PathLike[str], *, root: Path | None = None) -> list[ManifestEntry]:
    name = display_name(src)
    entries: list[ManifestEntry] = []
    for line, record in parse_jsonl(read_bytes(src), name):
        fmt = record.get("format", FORMAT)
        if fmt != FORMAT:
            raise BadInputError(f"not a {FORMAT} record (format {fmt!r})", source=name, line=line, field="format")
        version = record.get("version", VERSION)
        if not isinstance(version, int) or version > VERSION:
            raise BadInputError(f"manifest version {version!r} is newer than this recare reads ({VERSION}); "
                                "upgrade recare", source=name, line=line, field="version")
        raw = record.get("path")
        if not isinstance(raw, str) or not raw:
            raise BadInputError("missing or not a string", source=name, line=line, field="path")
        prompt = record.get("prompt")
        if prompt is not None and not isinstance(prompt, str):
            raise BadInputError("not a string", source=name, line=line, field="prompt")
        digest = record.get("sha256")
        if digest is not None and not isinstance(digest, str):
            raise BadInputError("not a string", source=name, line=line, field="sha256")
        entries.append(ManifestEntry(line, resolve_image_path(raw, manifest=str(src), root=root), prompt,
                                     digest, record))
    if not entries:
        raise BadInputError("the manifest has no records", source=name)
    return entries
