"""recare score's metric registry: a metric defined here (with its own per-image extractor) becomes a
choice of --metric and of the gates, and is computed by the stage, without a change to the stage."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from recare_cli.errors import UsageError
from recare_cli.stages.metrics import (
    EXTRACTORS,
    REGISTRY,
    ImageItem,
    Run,
    Scored,
    register,
    register_extractor,
    summary,
)
from recare_cli.stages.score import ScoreOptions, per_image_pass, run_score
from tests.helpers import invoke


class MeanPixel:
    """A toy extractor: each image's mean pixel value in [0, 1]."""

    loads = 0

    def features(self, batch: Sequence[ImageItem], images: list[Any]) -> np.ndarray:
        return np.array([np.asarray(im, dtype=np.float64).mean() / 255 for im in images])

    def join(self, parts: Sequence[np.ndarray]) -> np.ndarray:
        return np.concatenate(parts) if len(parts) else np.zeros(0)

    def identity(self) -> dict[str, Any]:
        return {"name": "mean-pixel", "version": "1"}


def load_mean_pixel(opts: ScoreOptions, device: str) -> MeanPixel:
    MeanPixel.loads += 1
    return MeanPixel()


@dataclasses.dataclass
class Brightness:
    name: str = "brightness"
    help: str = "mean pixel value."
    needs: tuple[str, ...] = ("mean-pixel",)
    options: tuple[str, ...] = ()
    validated: int = 0

    def validate(self, opts: ScoreOptions, items: Sequence[ImageItem]) -> None:
        self.validated += 1
        if opts.concept == "refuse":
            raise UsageError("--metric brightness refuses this concept")

    def compute(self, run: Run) -> Scored:
        values = run.features["mean-pixel"]
        return Scored([float(v) for v in values], summary(self.name, float(values.mean()), len(values), None,
                                                          params={"scale": "0-1"}))


@dataclasses.dataclass
class Dark(Brightness):
    name: str = "dark"
    help: str = "share of images darker than half."

    def compute(self, run: Run) -> Scored:
        dark = [bool(v < 0.5) for v in run.features["mean-pixel"]]
        hits = sum(dark)
        return Scored([{"dark": d} for d in dark], summary(self.name, hits / len(dark), len(dark), None,
                                                           hits=hits, params={}))


@pytest.fixture()
def toys() -> Iterator[tuple[Brightness, Dark]]:
    metrics = (Brightness(), Dark())
    register_extractor("mean-pixel", load_mean_pixel)
    for metric in metrics:
        register(metric)
    MeanPixel.loads = 0
    try:
        yield metrics
    finally:
        for metric in metrics:
            REGISTRY.pop(metric.name)
        EXTRACTORS.pop("mean-pixel")


@pytest.fixture()
def manifest(target_images: Path, tmp_path: Path) -> tuple[Path, list[Path]]:
    images = sorted(target_images.glob("*.png"))[:7]
    path = tmp_path / "manifest.jsonl"
    path.write_text("".join(json.dumps({"path": str(p), "prompt": "a photo"}) + "\n" for p in images), "utf-8")
    return path, images


def naive_means(images: list[Path]) -> list[float]:
    from PIL import Image

    return [float(np.asarray(Image.open(p).convert("RGB"), dtype=np.float64).mean() / 255) for p in images]


def test_a_registered_metric_is_a_choice_of_metric_and_gates(toys: tuple[Brightness, Dark],
                                                             manifest: tuple[Path, list[Path]],
                                                             tmp_path: Path) -> None:
    path, images = manifest
    per_image = tmp_path / "per.jsonl"
    res = invoke(["score", str(path), "-m", "brightness", "-m", "dark", "--batch-size", "3",
                  "--per-image", str(per_image), "--fail-under", "brightness=0", "--fail-over", "dark=1"])
    assert res.code == 0, res.stderr
    summary_ = json.loads(res.stdout)
    brightness, dark = summary_["results"]
    means = naive_means(images)
    assert (brightness["metric"], dark["metric"]) == ("brightness", "dark")
    assert brightness["value"] == pytest.approx(np.mean(means)) and brightness["count"] == len(images)
    assert dark["hits"] == sum(m < 0.5 for m in means)
    rows = [json.loads(line) for line in per_image.read_text().splitlines()]
    assert [r["brightness"] for r in rows] == pytest.approx(means)  # in order over three batches
    assert [r["dark"]["dark"] for r in rows] == [m < 0.5 for m in means]
    assert MeanPixel.loads == 1  # one extractor for both metrics, loaded once
    assert toys[0].validated == 2  # the options alone, then with the images
    assert summary_["provenance"]["models"] == {"mean-pixel": {"name": "mean-pixel", "version": "1"}}

    failed = invoke(["score", str(path), "-m", "brightness", "--fail-under", "brightness=1.01"])
    assert failed.code == 6 and "gate failed: brightness" in failed.stderr
    refused = invoke(["score", str(path), "-m", "dark", "--concept", "refuse"])
    assert refused.code == 2 and "refuses this concept" in refused.stderr


def test_an_unregistered_metric_is_refused(manifest: tuple[Path, list[Path]]) -> None:
    path, _ = manifest
    for args in (["-m", "brightness"], ["-m", "care", "--concept", "x", "--fail-under", "brightness=0"]):
        res = invoke(["score", str(path), *args])
        assert res.code == 2 and "brightness" in res.stderr, res.stderr


def test_register_refuses_a_name_taken(toys: tuple[Brightness, Dark]) -> None:
    with pytest.raises(ValueError, match="registered already"):
        register(Brightness())
    with pytest.raises(ValueError, match="registered already"):
        register_extractor("clip", load_mean_pixel)


def test_the_library_call_records_its_options(toys: tuple[Brightness, Dark],
                                                manifest: tuple[Path, list[Path]]) -> None:
    _, images = manifest
    items = [ImageItem(path=p, prompt=None) for p in images]
    result = run_score(items, ScoreOptions(metrics=["brightness"], device="cpu", batch_size=2, source="here"))
    assert result is not None and result.summary["source"] == "here"
    assert result.summary["results"][0]["value"] == pytest.approx(np.mean(naive_means(images)))
    params = result.summary["provenance"]["params"]
    assert (params["device"], params["batch_size"], params["source"]) == ("cpu", 2, "here")


def test_features_of_the_parts_joined_equal_one_pass(manifest: tuple[Path, list[Path]]) -> None:
    """The multi-process path: each process's slice, joined in order, is the single-process result."""
    _, images = manifest
    items = [ImageItem(path=p, prompt=None) for p in images]
    extractors: dict[str, Any] = {"mean-pixel": MeanPixel()}
    whole = per_image_pass(items, extractors, batch_size=2)["mean-pixel"]
    parts = [per_image_pass(items[a:b], extractors, batch_size=2) for a, b in ((0, 3), (3, 3), (3, 7))]
    joined = extractors["mean-pixel"].join([p["mean-pixel"] for p in parts])
    assert joined.tolist() == whole.tolist() == pytest.approx(naive_means(images))


def test_the_built_in_metrics_name_real_options_and_extractors() -> None:
    fields = {f.name for f in dataclasses.fields(ScoreOptions)}
    assert list(REGISTRY)[:4] == ["care", "clip", "nudity", "classify"]
    for metric in REGISTRY.values():
        assert set(metric.options) <= fields, metric.name
        assert set(metric.needs) <= set(EXTRACTORS), metric.name
