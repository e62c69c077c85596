"""Side-by-side timing: variants measured in turn, round after round, so that all see the same machine."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Hashable
from typing import TypeVar

K = TypeVar("K", bound=Hashable)


def interleaved_medians(runs: dict[K, Callable[[], None]], calls: int, repeat: int,
                        before: Callable[[K], None] | None = None) -> dict[K, float]:
    """Median seconds per call of each variant: ``repeat`` rounds, each timing ``calls`` calls of every
    variant in turn (``before(key)``, untimed, first: e.g. switching a module's memory format)."""
    times: dict[K, list[float]] = {key: [] for key in runs}
    for _ in range(repeat):
        for key, run in runs.items():
            if before is not None:
                before(key)
            start = time.perf_counter()
            for _ in range(calls):
                run()
            times[key].append((time.perf_counter() - start) / calls)
    return {key: statistics.median(values) for key, values in times.items()}
