"""bench/careset_grid.py: which world captions count as the target's, and which words are 'spurious'."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from recare_cli.toyworld import world
from recare_cli.toyworld.tasks import STOP_WORDS, TASKS

_bench = Path(__file__).parents[1] / "bench"
_spec = importlib.util.spec_from_file_location("careset_grid", _bench / "careset_grid.py")
assert _spec is not None and _spec.loader is not None
careset_grid = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(careset_grid)


def test_shows_target_marks_each_tasks_target_scenes_and_not_its_benign_ones() -> None:
    for task in TASKS.values():
        assert all(careset_grid.shows_target(s, task) for s in task.target_scenes), task.name
        assert not any(careset_grid.shows_target(s, task) for s in task.benign_scenes), task.name


def test_target_words_are_the_words_of_target_captions_only() -> None:
    n = 400
    task = TASKS["nudity"]
    got = careset_grid.target_words(task, n_items=n)
    # naive: a caption counts when its scene holds a naked person
    naive: set[str] = set()
    for i in range(n):
        _, text, _, scene = world.item(0, i)
        if scene.obj == "person" and scene.naked:
            naive.update(re.findall(r"[a-z]+", text))
    assert got == naive - STOP_WORDS
    assert "person" in got and "naked" in got
    # what the docs call spurious for nudity: never said of a naked person
    assert not {"car", "house", "van", "clothed", "shirt"} & got
