"""The experiments' own logic (experiments/*.py), imported as the package they are."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from experiments import care_judge, careset_grid, demo_sweep, lora_toy, second_judge
from recare_cli.stages.erase import EraseOptions
from recare_cli.toyworld import world
from recare_cli.toyworld.tasks import STOP_WORDS, TASKS

# care_judge: the scenes it samples and its judge figures, against counting by hand; and that the demo's CARE
# score uses each task's label template


def test_care_judge_scenes_are_every_possible_photo_scene_once() -> None:
    scenes = care_judge.scenes()
    assert len(set(scenes)) == len(scenes)
    assert all(world.possible(s) and s.style == "photo" and not s.naked for s in scenes)
    # naive count: every background, object and colour combination the world allows for a photo
    combos = [world.Scene(b, o, c) for b in world.BACKGROUNDS for o in (None, *world.OBJECTS)
              for c in (None, *world.COLOURS)]
    assert set(scenes) == {s for s in combos if world.possible(s)}
    assert {s.obj for s in scenes} == {None, *world.OBJECTS}
    assert {s.background for s in scenes} == set(world.BACKGROUNDS)


def test_care_judge_accuracy_and_concept_judge_count_as_by_hand() -> None:
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
    from recare_cli.demo.judge import care_config

    assert TASKS["nudity"].care_template == "reference"
    for task in TASKS.values():
        config = care_config(task)
        assert (config.metrics, config.concept, config.template) == (["care"], task.concept, task.care_template)
        assert config.labels == list(task.labels)
    assert apply_template("person", care_config(TASKS["nudity"]).template) == "A photo of a person"
    assert apply_template("stars", care_config(TASKS["vangogh"]).template) == "stars"


# careset_grid: which world captions count as the target's, and which words are 'spurious'


def test_careset_grid_shows_target_marks_each_tasks_target_scenes_and_not_its_benign_ones() -> None:
    for task in TASKS.values():
        assert all(careset_grid.shows_target(s, task) for s in task.target_scenes), task.name
        assert not any(careset_grid.shows_target(s, task) for s in task.benign_scenes), task.name


def test_careset_grid_target_words_are_the_words_of_target_captions_only() -> None:
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


# demo_sweep: what each configuration string asks of erase


def _options(config: str) -> EraseOptions:
    opts: EraseOptions = demo_sweep.erase_options(config, 43, target="a tench", source=Path("demo/tench"), sd="sd",
                                                  ddim_steps=20, output=Path("w.safetensors"))
    opts.validate()
    return opts


def test_demo_sweep_passes_every_field_to_erase() -> None:
    opts = _options("recare:xattn:5e-5:100:3:stratified:linear:2:0:1.5")
    assert (opts.method, opts.train_method, opts.lr, opts.iterations) == ("recare", "xattn", 5e-5, 100)
    assert (opts.retain_weight, opts.timesteps, opts.lr_schedule, opts.xt_batch) == (3.0, "stratified", "linear", 2)
    assert (opts.num_adversarial, opts.guidance, opts.seed) == (0, 1.5, 43)
    assert opts.care == str(Path("demo/tench/care.json"))
    assert opts.adversarial == str(Path("demo/tench/adv.safetensors"))


def test_demo_sweep_fields_left_out_take_erases_defaults_and_esd_takes_no_careset() -> None:
    opts = _options("esd:xattn:2e-4:100")
    defaults = EraseOptions(target="x", output="-")
    assert opts.care is None and opts.adversarial is None and opts.retain_weight == 1.0
    assert (opts.timesteps, opts.lr_schedule, opts.xt_batch) == (defaults.timesteps, defaults.lr_schedule,
                                                                 defaults.xt_batch)
    assert (opts.num_adversarial, opts.guidance) == (defaults.num_adversarial, defaults.guidance) == (2, 2.0)
    assert opts.lora is None


def test_demo_sweep_lora_field_is_erases_lora_rank() -> None:
    assert _options("recare:xattn:5e-5:100:1:uniform:constant:1:1:2:4").lora == 4
    assert _options("recare:xattn:5e-5:100:1:uniform:constant:1:1:2:-").lora is None


def test_demo_sweep_reuses_a_cached_erasure_only_when_made_alike(tmp_path: Path) -> None:
    import torch

    from recare_cli.io.digest import sha256_file
    from recare_cli.models.weights import save_unet_weights

    (tmp_path / "care.json").write_text("{}")
    (tmp_path / "adv.safetensors").write_bytes(b"token")
    opts = demo_sweep.erase_options("recare:xattn:5e-5:100:1:uniform:constant:1:1:2:4", 43, target="a tench",
                                    source=tmp_path, sd="sd", ddim_steps=20, output=tmp_path / "w.safetensors")

    def cached(**hyper: object) -> Path:
        path = tmp_path / "w.safetensors"
        save_unet_weights(path, {"w": torch.zeros(1)}, base_unet="x", careset_sha256=sha256_file(opts.care),
                          adversarial={"sha256": sha256_file(opts.adversarial)},
                          hyperparameters={**opts.hyperparameters(32), **hyper})
        return path

    demo_sweep._check_cached(cached(), opts)  # made alike: reused
    with pytest.raises(SystemExit, match="another lora"):
        demo_sweep._check_cached(cached(lora=8), opts)


# lora_toy: the demo's ReCARE erasure with adapters


def test_lora_toy_trains_the_demos_recare_erasure_with_adapters(tmp_path: Path) -> None:
    from recare_cli.demo.settings import DemoSettings, erase_lr, retain_weight

    task, s = TASKS["nudity"], DemoSettings()
    opts = lora_toy.lora_options(task, s, Path("demo/nudity"), "sd", 4, erase_lr(task, s), retain_weight(task, s),
                                 tmp_path / "r4")
    opts.validate()
    assert (opts.method, opts.target, opts.lora, opts.lr) == ("recare", task.target, 4, task.erase_lr)
    assert (opts.train_method, opts.iterations, opts.ddim_steps, opts.seed) == (s.train_method, s.erase_iterations,
                                                                               s.ddim_steps, s.seed)
    assert (opts.retain_weight, opts.resolution) == (task.retain_weight, 32)
    assert opts.care == str(Path("demo/nudity/care.json")) and opts.output == str(tmp_path / "r4/weights.safetensors")


# second_judge: the listing of every model and erase seed of a demo folder


def test_second_judge_lists_every_erase_seed_with_its_own_care() -> None:
    results = {"settings": {"seed": 42},
               "results": {"base": {"care": 0.5},
                           "recare": {"care": 0.8, "per_seed": [{"seed": 42, "care": 0.7}, {"seed": 43, "care": 0.9}]}}}
    assert second_judge.models(results) == [("base", 0.5), ("recare", 0.7), ("recare-seed43", 0.9)]
