"""Sampling one model on the task's prompts and judging the samples as the demo reports them."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from recare_cli.demo.settings import KINDS, DemoSettings
from recare_cli.demo.steps import sample_prompts

FIGURES = ("target_rate", "target_detected", "care", "clip_unrelated")


def _ci(interval: dict[str, Any] | None) -> list[float] | None:
    return None if interval is None else [round(interval["low"], 4), round(interval["high"], 4)]


def per_prompt(prompts: list[str], values: Any) -> dict[str, float]:
    """The mean of ``values`` (one per image) per prompt, prompts in the order first seen."""
    groups: dict[str, list[float]] = {}
    for prompt, value in zip(prompts, values, strict=True):
        groups.setdefault(prompt, []).append(float(value))
    return {prompt: float(np.mean(v)) for prompt, v in groups.items()}


def image_share(shown: Any, prompts: list[str]) -> tuple[float, list[float] | None, dict[str, float]]:
    """The share of images judged ``shown`` (one verdict per image), its 95% Wilson interval, and per prompt."""
    from recare_cli.core.scores import wilson_interval

    interval = wilson_interval(int(np.sum(shown)), len(shown))
    return (float(np.mean(shown)), _ci(None if interval is None else interval.to_json()), per_prompt(prompts, shown))


def target_verdicts(records: list[dict[str, Any]], task: Any, scenes: list[Any], *, judge: Any,
                    detector: Any) -> tuple[Any, Any]:
    """Per target sample, whether it shows the target, by the toy CLIP ``judge`` (tasks.shows_target) and by
    the world's ``detector`` (toyworld.detector, the part NudeNet and the paper's classifiers play); the
    images are read once for both."""
    from PIL import Image

    from recare_cli.toyworld.detector import predict, target_shown
    from recare_cli.toyworld.tasks import shows_target

    images = [Image.open(r["path"]).convert("RGB") for r in records]
    by_clip = shows_target(judge, judge.images(images), task, scenes)
    by_detector = target_shown(task, predict(detector, np.stack([np.asarray(im) for im in images])))
    return by_clip, by_detector


def score_records(records: list[dict[str, Any]], config: Any,
                  clip: str) -> tuple[float, list[float] | None, dict[str, float]]:
    """The first metric of ``config`` (care or clip) over ``records`` (run_score), with its 95% interval, and
    per prompt (CARE: the share of hits)."""
    from recare_cli.stages.score import ImageItem, run_score

    items = [ImageItem(path=Path(r["path"]), prompt=r["prompt"], sha256=r.get("sha256")) for r in records]
    result = run_score(items, dataclasses.replace(config, clip=clip, device="cpu", dtype="fp32", source="demo"))
    assert result is not None
    summary = result.summary["results"][0]
    metric = config.metrics[0]
    values = [row[metric]["hit"] if metric == "care" else row[metric] for row in result.per_image]
    return float(summary["value"]), _ci(summary["ci"]), per_prompt([row["prompt"] for row in result.per_image],
                                                                    values)


def care_config(task: Any) -> Any:
    """The demo's CARE score of ``task``'s benign concept: ``score --metric care`` among the world's words of its
    kind, with the task's label template."""
    from recare_cli.stages.score import ScoreOptions

    return ScoreOptions(metrics=["care"], concept=task.concept, labels=list(task.labels), labels_source="toy world",
                       template=task.care_template)


def measure_model(task: Any, folder: Path, *, sd: str, weights: list[Path], clip: str, judge: Any, detector: Any,
                  images: dict[str, int], seed: int, s: DemoSettings) -> tuple[dict[str, Any], dict[str, Any]]:
    """Sample one model (``weights`` on the base ``sd``) on the task's target, benign and unrelated prompts
    (``images[kind]`` per prompt, seeds from ``seed``) into ``folder/KIND`` and judge them as the demo does
    (the target by the toy CLIP ``judge`` and by the ``detector``).
    Returns the figures with their 95% intervals, and the sample records per kind."""
    from recare_cli.stages.score import ScoreOptions
    from recare_cli.toyworld.tasks import UNRELATED_SCENES, prompts

    made: dict[str, list[dict[str, Any]]] = {}
    for kind, scenes in zip(KINDS, (task.target_scenes, task.benign_scenes, UNRELATED_SCENES), strict=True):
        made[kind] = sample_prompts(prompts(scenes), folder / kind, folder / f"{kind}.jsonl", model=sd,
                                    weights=weights, embeddings=[], n=images[kind], seed=seed, s=s)
    asked = [task.target_scenes[r["prompt_index"]] for r in made["target"]]
    by_clip, by_detector = target_verdicts(made["target"], task, asked, judge=judge, detector=detector)
    target_prompts = [r["prompt"] for r in made["target"]]
    rate, rate_ci, rate_each = image_share(by_clip, target_prompts)
    detected, detected_ci, detected_each = image_share(by_detector, target_prompts)
    care_value, care_ci, care_each = score_records(made["benign"], care_config(task), clip)
    clip_value, clip_ci, clip_each = score_records(made["unrelated"], ScoreOptions(metrics=["clip"]), clip)
    return {"target_rate": rate, "target_rate_ci": rate_ci, "target_detected": detected,
            "target_detected_ci": detected_ci, "care": care_value, "care_ci": care_ci,
            "clip_unrelated": clip_value, "clip_unrelated_ci": clip_ci,
            "per_prompt": {"target_rate": rate_each, "target_detected": detected_each, "care": care_each,
                           "clip_unrelated": clip_each}}, made
