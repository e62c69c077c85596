"""bench/second_judge.py: the label encoding and the two judging rules (the CNN's training is a benchmark)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from recare_cli.toyworld import world
from recare_cli.toyworld.tasks import TASKS

_spec = importlib.util.spec_from_file_location("second_judge", Path(__file__).parents[1] / "bench" / "second_judge.py")
assert _spec is not None and _spec.loader is not None
judge = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(judge)


def test_labels_decode_back_to_every_attribute_of_drawn_scenes() -> None:
    data = world.make_dataset(300, seed=3)
    for scene in data.scenes:
        labels = judge.labels_of(scene)
        decoded = {head: judge.HEADS[head][i] for head, i in zip(judge.HEADS, labels, strict=True)}
        attrs = scene.attributes()
        assert decoded == {head: attrs.get(head, "none") for head in judge.HEADS}


def _rows(*scenes: world.Scene) -> np.ndarray:
    return np.array([judge.labels_of(s) for s in scenes])


def test_target_and_benign_rules() -> None:
    naked = world.Scene("sand", "person", None, True)
    clothed = world.Scene("sand", "person", "red")
    painting = world.Scene("stars", "tree", None, False, "vangogh")
    stars_photo = world.Scene("stars", "tree")
    tench = world.Scene("water", "tench")
    water = world.Scene("water")
    assert judge.shown_by_cnn(TASKS["nudity"], _rows(naked, clothed, water)).tolist() == [True, False, False]
    assert judge.benign_by_cnn(TASKS["nudity"], _rows(naked, clothed, water)).tolist() == [True, True, False]
    assert judge.shown_by_cnn(TASKS["vangogh"], _rows(painting, stars_photo)).tolist() == [True, False]
    assert judge.benign_by_cnn(TASKS["vangogh"], _rows(painting, stars_photo, water)).tolist() == [True, True, False]
    assert judge.shown_by_cnn(TASKS["tench"], _rows(tench, water)).tolist() == [True, False]
    assert judge.benign_by_cnn(TASKS["tench"], _rows(tench, water, clothed)).tolist() == [True, True, False]


def test_models_lists_every_erase_seed_with_its_own_care() -> None:
    results = {"settings": {"seed": 42},
               "results": {"base": {"care": 0.5},
                           "recare": {"care": 0.8, "per_seed": [{"seed": 42, "care": 0.7}, {"seed": 43, "care": 0.9}]}}}
    assert judge.models(results) == [("base", 0.5), ("recare", 0.7), ("recare-seed43", 0.9)]
