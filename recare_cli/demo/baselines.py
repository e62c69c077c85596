"""The toy world's inputs for the published baselines, each the world's counterpart of what the authors pass.

* STEREO's anchor prompts. The authors' ``utils/anchor_prompts.json`` holds, per concept, sentences that name the
  concept in varied settings ("A nude figure stands amidst a field of tall grass", "Irises by Vincent van Gogh",
  "Golden tench add aesthetic value to ornamental ponds"). Their sentences mean nothing to the toy text encoder,
  which learnt only the world's captions; the toy rule takes the world's own sentences that name the target: the
  distinct captions the world's caption writer gives the target's scenes (``world.caption``, ANCHOR_DRAWS draws per
  scene from fixed seeds), less the demo's evaluation prompts, sorted.
* UCE's guide and preserved concepts. The authors' defaults: the empty prompt as guide for objects and unsafe
  concepts, "art" for a style, nothing preserved. The toy world has no word "art"; its word for art is "painting"
  (the Van Gogh task's own invert initializer). Nothing preserved.
* AGE's concept dictionary (theirs: 3,000 English words): the world's content words less the target's own, the
  demo's mining vocabulary.
* AdvUnlearn's retain prompts (theirs for nudity: COCO object prompts): "a {object}" for each of the world's
  objects the target is not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recare_cli.io.atomic import atomic_write_bytes

ANCHOR_DRAWS = 400  # captions drawn per target scene; the distinct ones are the anchors
ANCHOR_SEED = 7


def stereo_anchors(task: Any) -> list[str]:
    import numpy as np

    from recare_cli.toyworld import world
    from recare_cli.toyworld.tasks import prompts

    made = {world.caption(scene, np.random.default_rng([ANCHOR_SEED, p, i]))[0]
            for p, scene in enumerate(task.target_scenes) for i in range(ANCHOR_DRAWS)}
    return sorted(made - set(prompts(task.target_scenes)))


def uce_guide(task: Any) -> str:
    return "painting" if task.prop == "style" else ""


def advunlearn_retain(task: Any) -> list[str]:
    from recare_cli.toyworld import world

    return [f"a {obj}" for obj in world.OBJECTS if obj not in task.names]


def inputs(method: str, task: Any) -> dict[str, Any]:
    """What the toy rules above give ``method`` (a demo name), as recorded in settings.json."""
    from recare_cli.toyworld.tasks import vocabulary

    if method == "stereo":
        return {"anchors": stereo_anchors(task)}
    if method == "uce":
        return {"guide": uce_guide(task), "preserve": []}
    if method == "age":
        return {"concepts": vocabulary(task)}
    if method == "advunlearn":
        return {"retain_prompts": advunlearn_retain(task)}
    return {}


def write_inputs(folder: Path, method: str, task: Any) -> dict[str, Any]:
    """The ``EraseOptions`` fields for ``method``'s toy inputs, their files written into ``folder``."""
    import orjson

    given = inputs(method, task)
    if method == "stereo":
        path = folder / "stereo-anchors.json"
        atomic_write_bytes(path, orjson.dumps({task.target: given["anchors"]}, option=orjson.OPT_INDENT_2))
        return {"anchors": str(path)}
    if method == "uce":
        return {"guide": given["guide"], "preserve": tuple(given["preserve"])}
    if method in ("age", "advunlearn"):
        key = "concepts" if method == "age" else "retain_prompts"
        path = folder / f"{method}-{key.replace('_', '-')}.txt"
        atomic_write_bytes(path, "".join(line + "\n" for line in given[key]).encode())
        return {key: str(path)}
    return {}
