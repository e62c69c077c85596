"""One task of the demo end to end: its stages, every model sampled, attacked and judged, results.json, grid.png and
radar.png."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from recare_cli import console
from recare_cli.demo import paper, steps
from recare_cli.demo.judge import FIGURES, measure_model
from recare_cli.demo.paper import PAPER_FIGURES
from recare_cli.demo.settings import (
    EXTRA_METHODS,
    KINDS,
    LABELS,
    METHODS,
    DemoSettings,
    erase_lr,
    method_seeds,
    methods,
    model_tag,
    retain_weight,
    scaled_recipe,
)
from recare_cli.errors import RefusedError

T = TypeVar("T")


@dataclass
class TaskResult:
    task: str
    rows: dict[str, dict[str, Any]]  # method → figures
    careset: list[str]
    files: dict[str, str]


def check_settings(folder: Path, record: dict[str, Any]) -> None:
    import orjson

    path = folder / "settings.json"
    if path.is_file():
        try:
            old = orjson.loads(path.read_bytes())
        except orjson.JSONDecodeError:
            old = None
        if old != record:
            raise RefusedError(f"'{folder}' holds a demo run with other settings; pass another --out or delete it")
    folder.mkdir(parents=True, exist_ok=True)
    steps.write_json(path, record)


@dataclass
class StageClock:
    """The seconds each stage took in this run, ``None`` for a stage this run did not compute from scratch: its
    file, or the checkpoint of an interrupted run, was already there."""

    seconds: dict[str, float | None] = field(default_factory=dict)

    def run(self, key: str, made: list[Path], fn: Callable[..., T], *args: Any) -> T:
        reused = any(p.exists() for p in made)
        started = time.perf_counter()
        value = fn(*args)
        self.seconds[key] = None if reused else round(time.perf_counter() - started, 1)
        return value

    def cost(self, method: str, tag: str) -> float | None:
        """The seconds a method's own stages took in this run: the erasure, and for the methods that use them the
        CARE-set and the adversarial tokens (one computation, counted for both); ``None`` when any of them was
        reused. The base model has none: 0."""
        if method == "base":
            return 0.0
        shared = ["careset", "invert"] if method in steps.USES_CARESET else ["invert"] if method in steps.USES_TOKENS \
            else []
        times = [self.seconds.get(key) for key in [*shared, tag]]
        return None if any(t is None for t in times) else round(sum(t for t in times if t is not None), 1)


def _grid_images(made: dict[str, list[dict[str, Any]]], per_prompt: int) -> list[Any]:
    """The first ``per_prompt`` samples of each target prompt, then of each benign prompt."""
    from PIL import Image

    return [Image.open(r["path"]).convert("RGB") for kind in ("target", "benign")
            for r in sorted(made[kind], key=lambda r: (r["prompt_index"], r["image_index"]))
            if r["image_index"] < per_prompt]


def run_task(out: Path, task_name: str, s: DemoSettings, *, clip: str, sd: str) -> TaskResult:
    import orjson

    from recare_cli.demo.grid import labelled_grid
    from recare_cli.io.careset import parse_careset
    from recare_cli.models.clip import load_clip
    from recare_cli.toyworld.detector import load as load_detector
    from recare_cli.toyworld.evaluate import Judge
    from recare_cli.toyworld.tasks import TASKS, prompts

    task = TASKS[task_name]
    folder = out / task.name
    # erase_seeds and extra_methods are left out: more seeds or methods on a finished folder add erasures, the
    # others stay valid. Every eraser's recipe is in: a changed method never reuses an old file of its name.
    check_settings(folder, {"task": task.name, "settings": {k: v for k, v in asdict(s).items()
                                                            if k not in ("erase_seeds", "extra_methods")},
                            "erase_lr": erase_lr(task, s), "retain_weight": retain_weight(task, s),
                            "recipes": recipes(task, s), "clip": clip, "sd": sd})
    clock = StageClock()
    console.info(f"demo [{task.name}]: sampling target images from the base model")
    target_prompts = prompts(task.target_scenes)
    mined = steps.sample_prompts(target_prompts, folder / "target-images", folder / "target-images.jsonl",
                                 model=sd, weights=[], embeddings=[], n=s.mine_images, seed=10_000, s=s,
                                 for_mining=True)
    images = [Path(r["path"]) for r in mined]
    console.info(f"demo [{task.name}]: CARE-set (mine → cluster → refine)")
    care = clock.run("careset", [steps.careset_path(folder)], steps.careset, folder, task, images, clip, s)
    console.info(f"demo [{task.name}]: adversarial tokens (invert)")
    adv_file = steps.invert_path(folder)
    adv = clock.run("invert", [adv_file, Path(f"{adv_file}.ckpt")], steps.invert, folder, task, images, sd, s)
    weights: dict[str, list[Path]] = {"base": []}
    for method in methods(s)[1:]:
        for seed in method_seeds(method, s):
            tag = model_tag(method, seed, s)
            console.info(f"demo [{task.name}]: erase ({LABELS[method]}" + (f", seed {seed})" if tag != method else ")"))
            made = steps.erase_path(folder, method, seed, s)
            weights[tag] = [clock.run(tag, [made, Path(f"{made}.ckpt")], steps.erase, folder, task, method, care,
                                      adv, sd, s, seed)]

    judge = Judge(load_clip(clip, device="cpu", dtype="fp32"))
    detector = load_detector()
    per_prompt = min(2, s.eval_images)  # samples of each prompt in the grid (the same seeds in every row)
    per_seed: dict[str, list[dict[str, Any]]] = {}
    unrelated: dict[str, list[dict[str, Any]]] = {}  # each model's unrelated samples, by tag
    grid: list[tuple[str, list[Any]]] = []
    for method in methods(s):
        console.info(f"demo [{task.name}]: sampling and scoring the {LABELS[method]}")
        per_seed[method] = []
        for seed in method_seeds(method, s):
            tag = model_tag(method, seed, s)
            figures, made_samples = measure_model(task, folder / "samples" / tag, sd=sd, weights=weights[tag],
                                                  clip=clip, judge=judge, detector=detector,
                                                  images=dict.fromkeys(KINDS, s.eval_images), seed=0, s=s)
            per_seed[method].append({"seed": seed, **figures, "seconds": clock.cost(method, tag),
                                     "images": {k: len(v) for k, v in made_samples.items()}})
            unrelated[tag] = made_samples["unrelated"]
            if seed == s.seed:
                grid.append((LABELS[method], _grid_images(made_samples, per_prompt)))
    labelled_grid(grid, [("target prompts", target_prompts), ("benign prompts", prompts(task.benign_scenes))],
                  per_prompt=per_prompt, scale=3).save(folder / "grid.png")
    # The paper's columns come after every figure above, which they leave as they were
    reference = paper.reference_folder(folder, s)
    rows: dict[str, dict[str, Any]] = {}
    for method in methods(s):
        for row in per_seed[method]:
            tag = model_tag(method, row["seed"], s)
            console.info(f"demo [{task.name}]: CCE against the {LABELS[method]}"
                         + (f" (erase seed {row['seed']})" if tag != method else ""))
            token = steps.attack_path(folder, tag)
            clock.run(f"attack-{tag}", [token, Path(f"{token}.ckpt")], steps.attack, folder, task, images, sd,
                      weights[tag], tag, s)
            figures, made_attack = paper.measure_attack(task, folder / "samples" / tag, sd=sd, weights=weights[tag],
                                                        token_file=token, judge=judge, detector=detector, seed=0,
                                                        s=s)
            row["per_prompt"].update(figures.pop("per_prompt"))
            row.update(figures)
            row.update(paper.distances(unrelated[tag], reference, clip))
            row["images"]["attack"] = len(made_attack)
            row["attack_seconds"] = clock.seconds[f"attack-{tag}"]
        rows[method] = mean_over_seeds(per_seed[method])
    ratio = paper.add_ratio(rows, folder / "radar.png")
    careset = parse_careset(orjson.loads(care.read_bytes()), source=str(care)).words
    result = TaskResult(task.name, rows, list(careset), {
        "care": str(care), "adversarial": str(adv), "grid": str(folder / "grid.png"),
        **{tag: str(paths[0]) for tag, paths in weights.items() if paths},
        "radar": str(folder / "radar.png"), "reference": str(reference),
        **{f"cce-{tag}": str(steps.attack_path(folder, tag)) for tag in weights}})
    steps.write_json(folder / "results.json", {"format": "recare.demo", "version": 1, "task": task.name,
                                                "target": task.target, "concept": task.concept,
                                                "settings": {**asdict(s), "erase_lr": erase_lr(task, s),
                                                             "retain_weight": retain_weight(task, s),
                                                             "care_template": task.care_template},
                                                "careset": result.careset, "results": rows, "ratio": ratio,
                                                "files": result.files})
    return result


def recipes(task: Any, s: DemoSettings) -> dict[str, dict[str, Any]]:
    """Every eraser's settings by the scaling rule, with the SHA-256 of its toy inputs (STEREO's anchors, UCE's
    guide, …): what settings.json records so that a changed recipe is refused, not silently reused."""
    import orjson

    from recare_cli.demo.baselines import inputs
    from recare_cli.io.digest import sha256_bytes

    return {m: {**scaled_recipe(m, task, s), "inputs": sha256_bytes(orjson.dumps(inputs(m, task)))}
            for m in (*METHODS[1:], *EXTRA_METHODS)}


def mean_over_seeds(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """One eraser's row from its rows per erase seed: one seed is its row; several give the mean of each
    figure (overall and per prompt) and of each time (``None`` if any seed's is), no interval (each seed's own
    interval is in ``per_seed``)."""
    if len(per_seed) == 1:
        return {k: v for k, v in per_seed[0].items() if k != "seed"}
    keys = [key for key in (*FIGURES, *PAPER_FIGURES) if key in per_seed[0]]
    row: dict[str, Any] = {key: float(np.mean([r[key] for r in per_seed])) for key in keys}
    row.update({f"{key}_ci": None for key in keys if f"{key}_ci" in per_seed[0]})
    row["per_prompt"] = {key: {prompt: float(np.mean([r["per_prompt"][key][prompt] for r in per_seed]))
                               for prompt in each} for key, each in per_seed[0]["per_prompt"].items()}
    for clock in ("seconds", "attack_seconds"):
        if clock in per_seed[0]:
            times = [r[clock] for r in per_seed]
            row[clock] = None if None in times else round(float(np.mean(times)), 1)
    row["images"] = per_seed[0]["images"]
    row["per_seed"] = per_seed
    return row
