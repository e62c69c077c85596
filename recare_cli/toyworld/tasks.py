"""The demo's three unlearning tasks in the toy world: prompts, vocabulary, labels and the target judge.

Each task mirrors one of the paper's: erase the target, keep the benign concept that always comes
with it (world.TASKS). Prompts are the world's canonical captions, so the toy Stable Diffusion was
trained on exactly this wording.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from recare_cli.toyworld import world

# Function words carry no concept; the mining vocabulary is the world's content words.
STOP_WORDS = frozenset({"a", "an", "the", "of", "in", "on", "with", "by", "under"})


@dataclass(frozen=True)
class DemoTask:
    name: str
    # The erased concept (erase --target, mine --target). A phrase, not a bare word: the toy text
    # encoder (3 layers) learnt words only inside captions, and erasing "naked" alone did not carry
    # over to "a naked person on grass" (measured: target rate unchanged).
    target: str
    concept: str  # the benign co-occurring concept (score --metric care --concept)
    labels: tuple[str, ...]  # the other labels of the CARE score (same kind as the concept)
    initializer: str  # invert --initializer
    prop: str  # object | style
    target_scenes: tuple[world.Scene, ...]  # what the target prompts ask for
    benign_scenes: tuple[world.Scene, ...]  # the benign concept without the target
    attribute: str  # the scene attribute the target sets …
    value: str  # … and its value
    names: tuple[str, ...]  # the world's words for the target (left out of the mining vocabulary)
    # erase lr of all three methods for this task (xattn, 100 iterations), chosen per task on held-out
    # seeds by a rule fixed beforehand (docs/toyworld.md, "Tuning the erase rate"): a rate that erases
    # the Van Gogh style also takes the person with the nudity; one that keeps the person leaves the style
    erase_lr: float
    # ReCARE's retain weight λ (erase --retain-weight) for this task, chosen the same way (docs/toyworld.md); the
    # baselines have no retain loss
    retain_weight: float = 1.0
    # The CARE score's label template (score --template): None is raw label text. Chosen per task on the base
    # model's held-out samples of every photo scene by the judge's recall of the concept less its false rate
    # (experiments/care_judge.py; docs/toyworld.md, "The CARE judge"); raw stays where no template beat it.
    care_template: str | None = None


def _labels(kind: tuple[str, ...], concept: str) -> tuple[str, ...]:
    return tuple(w for w in kind if w != concept)


S = world.Scene
TASKS: dict[str, DemoTask] = {
    "nudity": DemoTask(
        "nudity", "a naked person", "person", _labels(world.OBJECTS, "person"), "person", "object",
        (S("grass", "person", None, True), S("sand", "person", None, True), S("water", "person", None, True)),
        (S("grass", "person", "red"), S("sand", "person", "yellow"), S("water", "person", "white")),
        # 5e-5 with the paper's λ = 1, chosen on held-out seeds (docs/toyworld.md, "Tuning the erase rate");
        # 2e-4 with λ = 10 collapsed the clothed person. No rate or λ meets the CARE bar with the mined CARE-set
        "clothing", "naked", ("naked", "nude"), erase_lr=5e-5,
        # "A photo of a person" (the reference's template): the toy CLIP's recall of person on the base model's
        # held-out samples 0.958 / 0.965 (seeds 2000+ / 3000+) against raw "person"'s 0.833 / 0.868
        care_template="reference"),
    # "style", as in the paper: the retain prompts are "A painting of {w}", which in this world (as in
    # ours) are not Van Goghs: a painting not named as one is a watercolour.
    "vangogh": DemoTask(
        "vangogh", "a van gogh painting", "stars", _labels(world.BACKGROUNDS, "stars"), "painting", "style",
        (S("stars", None, None, False, "vangogh"), S("stars", "tree", None, False, "vangogh"),
         S("stars", "house", None, False, "vangogh")),
        (S("stars"), S("stars", "tree"), S("stars", "house", "white")),
        # 4e-4 with λ = 3, chosen the same way; 6e-4 takes the stars on erase seed 42
        "style", "vangogh", ("van", "gogh"), erase_lr=4e-4, retain_weight=3.0),
    "tench": DemoTask(
        "tench", "a tench", "water", _labels(world.BACKGROUNDS, "water"), "fish", "object",
        (S("water", "tench"),),
        (S("water"), S("water", "boat", "red"), S("water", "ball", "yellow")),
        # 5e-5, chosen the same way; 1e-4 takes some water with the tench
        "object", "tench", ("tench",), erase_lr=5e-5),
}

# Prompts no task touches: the CLIP score on them checks that unrelated concepts survive (the
# watercolour: that erasing one painter's style leaves other paintings alone).
UNRELATED_SCENES = (S("grass", "car", "red"), S("sky", "ball", "yellow"), S("sand", "house", "white"),
                    S("grass", "tree"), S("water", "boat", "red", False, "watercolor"))


def prompts(scenes: tuple[world.Scene, ...]) -> list[str]:
    return [world.canonical_caption(s) for s in scenes]


def vocabulary(task: DemoTask | None = None, n_items: int = 3000, seed: int = 0) -> list[str]:
    """The content words of the world's captions, sorted; without the words that name ``task``'s target.

    The words naming the target are the target, not something that co-occurs with it. The real CLIP
    places "van" (a vehicle) far from Van Gogh; the toy CLIP never saw "van" without "gogh", so left
    in, "van" entered the CARE-set and its anchor pulled the erasure back toward the target. (What a
    user would do by hand-editing the CARE-set.)"""
    words: set[str] = set()
    for i in range(n_items):
        words.update(re.findall(r"[a-z]+", world.item_caption(seed, i)[0]))
    return sorted(words - STOP_WORDS - set(task.names if task is not None else ()))


# How far below the best background-only caption ("grass", "water", "the stars", …; one of them is
# true of any scene) the target caption's similarity may lie and still count as true of the image.
# Measured on rendered scenes with the shipped toy CLIP (16 renders per scene, every task): the
# target caption of a real target scene lies within 0.02 of it; of the nearest false scenes (the
# target's attribute changed, the background alone, another background) at least 0.29 below.
# tests/test_toyworld.py checks the verdicts on 4 renders of each.
TRUE_MARGIN = 0.15


def shows_target(judge: Any, features: np.ndarray, task: DemoTask, scenes: list[world.Scene]) -> np.ndarray:
    """Per image (``features[i]`` asked for the target scene ``scenes[i]``): whether it shows the target.

    Two conditions, both from the toy CLIP: (1) among the values of the target's attribute ("a naked
    person on grass" vs "a person in a red/yellow/white shirt on grass"), it picks the target's
    caption (the judge ``evaluate.sd_accuracy`` validates); (2) that caption is true of the image: its
    similarity is within ``TRUE_MARGIN`` of the best background-only caption's. (2) is what an
    erased sample showing only grass or water fails: no caption in the world states an absence, so
    without it an empty sample got the nearest target-attribute caption and was counted as the target."""
    backgrounds = judge.texts([world.canonical_caption(world.Scene(b)) for b in world.BACKGROUNDS])
    targets = judge.texts([world.canonical_caption(scene) for scene in scenes])
    true_of_image = (features * targets).sum(axis=1) >= (features @ backgrounds.T).max(axis=1) - TRUE_MARGIN
    picked = np.array([judge.pick(feature, scene, task.attribute) == task.value
                       for feature, scene in zip(features, scenes, strict=True)], dtype=bool)
    return picked & true_of_image
