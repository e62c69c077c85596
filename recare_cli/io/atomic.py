"""Atomic output: write to a temporary file beside the target, rename on success.

A crash, Ctrl-C or error in the middle leaves the previous file (if any) untouched and no
partial file behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from recare_cli.errors import BadInputError


def check_output_dir(path: Path) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise BadInputError(f"cannot write here: directory '{parent}' does not exist", source=str(path))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path in the target's directory; rename it onto ``path`` on success."""
    target = Path(path)
    check_output_dir(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent or ".")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes the file private (0600); give it the mode a plain open() would have.
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


@contextlib.contextmanager
def staged_folder(path: str | os.PathLike[str], *, replace: bool = False) -> Iterator[Path]:
    """Yield a new empty folder beside ``path``; when the block succeeds, it takes ``path``'s place.

    An existing ``path`` (an empty folder, or anything with ``replace``) is moved aside first and removed only
    once the new folder is in place. On failure or Ctrl-C the new folder is removed and ``path`` is untouched."""
    import shutil

    from recare_cli.errors import RefusedError

    target = Path(path)
    check_output_dir(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes the folder private
        if not (target.exists() or target.is_symlink()):
            os.replace(tmp, target)
            return
        if not replace and not (target.is_dir() and not any(target.iterdir())):
            raise RefusedError(f"'{target}' exists; refusing to overwrite it")
        aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
        os.replace(target, aside / target.name)
        try:
            os.replace(tmp, target)
        except BaseException:
            os.replace(aside / target.name, target)
            os.rmdir(aside)
            raise
        shutil.rmtree(aside, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
