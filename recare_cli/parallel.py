"""How work is split: contiguous parts for shards (``--shard I/N``) and for the processes of a
multi-process launch (``accelerate launch``, ``torchrun``). Every way of splitting gives each unit of
work to exactly one process, in the order a single process would take it."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

from recare_cli.errors import UsageError


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    @staticmethod
    def parse(spec: str) -> Shard:
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", spec)
        if not match:
            raise UsageError(f"--shard: expected I/N such as 0/4, got '{spec}'")
        index, count = int(match.group(1)), int(match.group(2))
        if count < 1 or not 0 <= index < count:
            raise UsageError(f"--shard {spec}: need 0 <= I < N")
        return Shard(index, count)


def part(n: int, index: int, count: int) -> range:
    """The ``index``-th of ``count`` contiguous, near-equal parts of ``range(n)``."""
    return range(index * n // count, (index + 1) * n // count)


def my_batches(n_jobs: int, batch_size: int, shard: Shard, process: int, processes: int) -> list[range]:
    batches = [range(s, min(s + batch_size, n_jobs)) for s in range(0, n_jobs, batch_size)]
    in_shard = [batches[i] for i in part(len(batches), shard.index, shard.count)]
    return [in_shard[i] for i in part(len(in_shard), process, processes)]


def distributed(device: str = "auto") -> tuple[int, int, Any]:
    """``(process index, process count, accelerate state or None)``; accelerate is used only when a
    launcher (``accelerate launch``, ``torchrun``) started several processes. Without a GPU (or with
    ``--device cpu``) the processes talk over gloo."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, None
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=device.strip().lower() == "cpu" or not torch.cuda.is_available())
    return state.process_index, state.num_processes, state
