"""NumPy ``.npy`` files: written atomically, never pickled."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from recare_cli.errors import BadInputError, UsageError
from recare_cli.io.atomic import atomic_path, check_output_dir
from recare_cli.io.streams import STDIO


def check_npy_destination(path: str, option: str, *, output: str | None = None) -> None:
    """Refuse, before any work, a ``.npy`` destination that cannot be written: stdout (the stream's), the
    command's own ``--output``, a folder, or a file in a folder that does not exist."""
    if path == STDIO:
        raise UsageError(f"{option} needs a file: stdout carries the command's stream")
    if output is not None and output != STDIO and os.path.abspath(path) == os.path.abspath(output):
        raise UsageError(f"{option} and --output name the same file '{path}'")
    if Path(path).is_dir():
        raise BadInputError("is a folder; name a .npy file", source=path)
    check_output_dir(Path(path))


def write_npy(path: str | os.PathLike[str], array: Any) -> None:
    """``np.save`` without pickles, through a temporary file renamed on success (no half file)."""
    import numpy as np

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, np.asarray(array), allow_pickle=False)
