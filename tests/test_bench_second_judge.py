"""bench/second_judge.py: the listing of every model and erase seed of a demo folder."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("second_judge", Path(__file__).parents[1] / "bench" / "second_judge.py")
assert _spec is not None and _spec.loader is not None
judge = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(judge)


def test_models_lists_every_erase_seed_with_its_own_care() -> None:
    results = {"settings": {"seed": 42},
               "results": {"base": {"care": 0.5},
                           "recare": {"care": 0.8, "per_seed": [{"seed": 42, "care": 0.7}, {"seed": 43, "care": 0.9}]}}}
    assert judge.models(results) == [("base", 0.5), ("recare", 0.7), ("recare-seed43", 0.9)]
