"""What an interrupted long job (erase, invert) leaves behind, said in one line."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from recare_cli.errors import InterruptedRunError


@contextlib.contextmanager
def checkpoint_kept_on_interrupt(checkpoint: Path | None) -> Iterator[None]:
    """On Ctrl-C, name the checkpoint a rerun with ``--resume`` continues from, if one exists: the
    output itself is never half-written, but the checkpoint is kept on purpose."""
    try:
        yield
    except KeyboardInterrupt:
        if checkpoint is not None and checkpoint.exists():
            raise InterruptedRunError(
                f"interrupted; the output was not written, the checkpoint {checkpoint} was kept: rerun the same "
                "command with --resume to continue from it, or delete it to start over") from None
        raise
