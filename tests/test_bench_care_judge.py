"""bench/care_judge.py: the scenes it samples and its judge figures, against counting by hand; and that the
demo's CARE score uses each task's label template."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from recare_cli.toyworld import world

_spec = importlib.util.spec_from_file_location("care_judge", Path(__file__).parents[1] / "bench" / "care_judge.py")
assert _spec is not None and _spec.loader is not None
care_judge = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(care_judge)


def test_scenes_are_every_possible_photo_scene_once() -> None:
    scenes = care_judge.scenes()
    assert len(set(scenes)) == len(scenes)
    assert all(world.possible(s) and s.style == "photo" and not s.naked for s in scenes)
    # naive count: every background, object and colour combination the world allows for a photo
    combos = [world.Scene(b, o, c) for b in world.BACKGROUNDS for o in (None, *world.OBJECTS)
              for c in (None, *world.COLOURS)]
    assert set(scenes) == {s for s in combos if world.possible(s)}
    assert {s.obj for s in scenes} == {None, *world.OBJECTS}
    assert {s.background for s in scenes} == set(world.BACKGROUNDS)


def test_accuracy_and_concept_judge_count_as_by_hand() -> None:
    labels = ("person", "car", "tree")
    classes = ["person", "person", "person", "person", "car", "car", "tree", None]
    picked = np.array([0, 0, 0, 1, 0, 1, 2, 0])  # the last image has no object: left out of every figure
    assert care_judge.accuracy(picked, classes, labels) == {"person": 0.75, "car": 0.5, "tree": 1.0}
    recall, false = care_judge.concept_judge(picked, classes, labels, "person")
    assert recall == 3 / 4 and false == 1 / 3  # one car of the three other images called a person
    recall, false = care_judge.concept_judge(picked, classes, labels, "tree")
    assert recall == 1.0 and false == 0.0


def test_the_demo_scores_care_with_each_tasks_template() -> None:
    from recare_cli.data.labels import apply_template
    from recare_cli.stages.demo import care_config
    from recare_cli.toyworld.tasks import TASKS

    assert TASKS["nudity"].care_template == "reference"
    for task in TASKS.values():
        config = care_config(task)
        assert (config.metrics, config.concept, config.template) == (["care"], task.concept, task.care_template)
        assert config.labels == list(task.labels)
    assert apply_template("person", care_config(TASKS["nudity"]).template) == "A photo of a person"
    assert apply_template("stars", care_config(TASKS["vangogh"]).template) == "stars"
