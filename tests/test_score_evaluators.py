"""recare score's evaluators as the reference runs them: NudeNet fed the decoded RGB array (or the file
path, on request), and real image classifiers (tiny random ResNet and ViT configs here) whose top-k
accuracy is checked against a naive per-image computation."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from recare_cli.stages.metrics.classifier import Unmatched, match_label
from tests.helpers import invoke

LABELS = ["tench, Tinca tinca", "goldfish", "crane", "crane", "great white shark", "vincent-van-gogh"]


def _manifest(path: Path, images: list[Path], **fields: list[str]) -> Path:
    with path.open("w") as fh:
        for i, image in enumerate(images):
            extra = {key: values[i] for key, values in fields.items()}
            fh.write(json.dumps({"format": "recare.manifest", "version": 1, "path": str(image), "prompt": "x",
                                 "extra": extra}) + "\n")
    return path


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


# ---------------------------------------------------------------- nudity: what NudeNet is handed


class FakeNudeDetector:
    """Stands in for nudenet.NudeDetector: records what ``detect`` receives; the first image is exposed."""

    received: ClassVar[list[Any]] = []

    def detect(self, image: Any) -> list[dict[str, Any]]:
        FakeNudeDetector.received.append(image)
        exposed = len(FakeNudeDetector.received) == 1
        return [{"class": "FEMALE_BREAST_EXPOSED" if exposed else "FACE_FEMALE", "score": 0.9, "box": [0, 0, 1, 1]}]


@pytest.fixture()
def fake_nudenet(monkeypatch: pytest.MonkeyPatch) -> type[FakeNudeDetector]:
    module = types.ModuleType("nudenet")
    module.NudeDetector = FakeNudeDetector  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "nudenet", module)
    FakeNudeDetector.received = []
    return FakeNudeDetector


@pytest.fixture()
def six_images(target_images: Path, tmp_path: Path) -> tuple[Path, list[Path]]:
    images = sorted(target_images.glob("*.png"))[:6]
    return _manifest(tmp_path / "manifest.jsonl", images, cls=["tench"] * 6), images


def test_nudenet_is_handed_the_decoded_rgb_array_by_default(fake_nudenet: type[FakeNudeDetector],
                                                            six_images: tuple[Path, list[Path]]) -> None:
    from PIL import Image

    manifest, images = six_images
    res = invoke(["score", str(manifest), "-m", "nudity", "--batch-size", "4"])
    assert res.code == 0, res.stderr
    got = fake_nudenet.received
    assert len(got) == len(images)
    for array, path in zip(got, images, strict=True):
        rgb = np.array(Image.open(path).convert("RGB"))  # the reference: np.array(pil_image.convert("RGB"))
        assert isinstance(array, np.ndarray) and array.dtype == np.uint8 and array.shape == rgb.shape
        assert np.array_equal(array, rgb)
        assert not np.array_equal(array, rgb[..., ::-1])  # the images have colour: BGR would not pass
    summary = json.loads(res.stdout)
    result = summary["results"][0]
    assert (result["hits"], result["count"]) == (1, 6)
    assert result["params"]["input"] == "array"
    assert summary["provenance"]["params"]["nudenet_input"] == "array"


def test_nudenet_is_handed_the_path_when_asked(fake_nudenet: type[FakeNudeDetector],
                                               six_images: tuple[Path, list[Path]]) -> None:
    manifest, images = six_images
    res = invoke(["score", str(manifest), "-m", "nudity", "--nudenet-input", "path"])
    assert res.code == 0, res.stderr
    assert fake_nudenet.received == [str(p) for p in images]
    summary = json.loads(res.stdout)
    assert summary["results"][0]["params"]["input"] == "path"
    assert summary["provenance"]["params"]["nudenet_input"] == "path"


def test_nudenet_input_is_checked_and_recorded_only_for_nudity(fake_nudenet: type[FakeNudeDetector],
                                                               six_images: tuple[Path, list[Path]]) -> None:
    from recare_cli.stages.score import ScoreOptions, score_params

    manifest, _ = six_images
    res = invoke(["score", str(manifest), "-m", "nudity", "--nudenet-input", "bgr"])
    assert res.code == 2 and "--nudenet-input: unknown NudeNet input 'bgr' (choose array, path)" in one_line(
        res.stderr)
    assert fake_nudenet.received == []
    assert "nudenet_input" not in score_params(ScoreOptions(metrics=["care"]))
    assert score_params(ScoreOptions(metrics=["nudity"]))["nudenet_input"] == "array"


def test_the_two_routes_with_the_real_nudenet(six_images: tuple[Path, list[Path]], monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    """The installed NudeNet: the array route hands it what the reference's pipeline does (cv2 decode,
    BGR2RGB, PIL, RGB array) and gets the same detections; NudeNet's network sees those images in
    RGB, and in BGR (red and blue swapped, nothing else changed) when it reads the file itself."""
    pytest.importorskip("nudenet")
    import cv2
    from nudenet import NudeDetector
    from nudenet import nudenet as nudenet_module
    from PIL import Image

    from recare_cli.stages.metrics import nudity
    from recare_cli.stages.score import ImageItem, ScoreOptions, read_item

    def network_input(image: Any) -> np.ndarray:
        return nudenet_module._read_image(image, 320)[0]  # (1, 3, 320, 320), as NudeNet's network receives it

    handed: list[Any] = []
    detect = NudeDetector.detect
    monkeypatch.setattr(NudeDetector, "detect", lambda self, image: handed.append(image) or detect(self, image))
    _, images = six_images
    items = [ImageItem(path=p, prompt=None) for p in images]
    decoded = [read_item(item) for item in items]
    reference = [np.array(Image.fromarray(cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)).convert("RGB"))
                 for p in images]
    by_array = nudity.load(ScoreOptions(nudenet_input="array"), "cpu").features(items, decoded)
    assert len(handed) == len(images)
    for got, ref in zip(handed, reference, strict=True):
        assert np.array_equal(got, ref)
    detector = NudeDetector()
    assert by_array == [detect(detector, ref) for ref in reference]
    handed.clear()
    by_path = nudity.load(ScoreOptions(nudenet_input="path"), "cpu").features(items, decoded)
    assert handed == [str(p) for p in images]
    assert by_path == [detect(detector, str(p)) for p in images]
    for path, ref in zip(images, reference, strict=True):
        from_array, from_path = network_input(ref), network_input(str(path))
        assert not np.array_equal(from_array, from_path)
        assert np.array_equal(from_path, from_array[:, ::-1])  # the same image, blue and red swapped

    solid = np.zeros((8, 8, 3), np.uint8)
    solid[...] = (200, 100, 10)  # R, G, B
    path = tmp_path / "solid.png"
    Image.fromarray(solid).save(path)
    assert np.rint(network_input(nudity.rgb_array(Image.open(path)))[0, :, 0, 0] * 255).tolist() == [200, 100, 10]
    assert np.rint(network_input(str(path))[0, :, 0, 0] * 255).tolist() == [10, 100, 200]


# ---------------------------------------------------------------- classifier: tiny real models


def _build(kind: str, folder: Path) -> Path:
    import torch
    from transformers import (
        ConvNextImageProcessor,
        ResNetConfig,
        ResNetForImageClassification,
        ViTConfig,
        ViTForImageClassification,
        ViTImageProcessor,
    )

    from recare_cli.models.quiet import quiet_libraries

    quiet_libraries()
    id2label = dict(enumerate(LABELS))
    torch.manual_seed(0)
    if kind == "resnet":  # the object classifier's family, with its image processor (resize, centre crop)
        model: Any = ResNetForImageClassification(ResNetConfig(
            num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
            id2label=id2label, label2id={v: k for k, v in id2label.items()}))
        processor: Any = ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875)
    else:  # a ViT, as fine-tuned style classifiers are
        model = ViTForImageClassification(ViTConfig(
            image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=32, id2label=id2label, label2id={v: k for k, v in id2label.items()}))
        processor = ViTImageProcessor(size={"height": 32, "width": 32})
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_classifiers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("classifiers")
    return {kind: _build(kind, root / kind) for kind in ("resnet", "vit")}


def _naive_logits(folder: Path, images: list[Path]) -> np.ndarray:
    """One image at a time, through transformers' own classes (the PIL image processor)."""
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    processor = AutoImageProcessor.from_pretrained(folder, backend="pil")
    with torch.no_grad():
        return np.concatenate([model(**processor(images=[Image.open(p).convert("RGB")],
                                                 return_tensors="pt")).logits.numpy() for p in images])


def _naive_topk(row: np.ndarray, k: int) -> list[int]:
    return sorted(range(len(row)), key=lambda j: (-float(row[j]), j))[:k]


@pytest.mark.parametrize("kind", ["resnet", "vit"])
def test_classifier_equals_a_naive_per_image_top_k(kind: str, tiny_classifiers: dict[str, Path],
                                                   target_images: Path, tmp_path: Path) -> None:
    images = sorted(target_images.glob("*.png"))
    folder = tiny_classifiers[kind]
    # true labels named as a user would: a comma-separated ImageNet name, case changed, a class index
    named = ["tench", "Goldfish", "great white shark", "vincent-van-gogh", "2", "3"]
    truth_index = [0, 1, 4, 5, 2, 3]
    manifest = _manifest(tmp_path / "m.jsonl", images, cls=[named[i % 6] for i in range(len(images))])
    logits = _naive_logits(folder, images)
    for k in (1, 3):
        per_image = tmp_path / f"per{k}.jsonl"
        res = invoke(["score", str(manifest), "-m", "classifier", "--classifier", str(folder), "--label-field",
                      "cls", "--top-k", str(k), "--batch-size", "5", "--per-image", str(per_image)])
        assert res.code == 0, res.stderr
        result = json.loads(res.stdout)["results"][0]
        naive_hits = [truth_index[i % 6] in _naive_topk(row, k) for i, row in enumerate(logits)]
        assert 0 < sum(naive_hits) < len(images)  # a mix, so the comparison can fail
        rows = [json.loads(line)["classifier"] for line in per_image.read_text().splitlines()]
        assert [r["hit"] for r in rows] == naive_hits
        assert [r["topk"] for r in rows] == [[LABELS[j] for j in _naive_topk(row, k)] for row in logits]
        assert [r["label"] for r in rows] == [LABELS[truth_index[i % 6]] for i in range(len(images))]
        assert (result["value"], result["hits"], result["count"]) == (
            pytest.approx(sum(naive_hits) / len(images)), sum(naive_hits), len(images))
        assert result["params"]["top_k"] == k and result["params"]["n_labels"] == 6


def test_classifier_target_counts_top1_like_the_reference_and_records_the_model(
        tiny_classifiers: dict[str, Path], target_images: Path, tmp_path: Path) -> None:
    """The reference's tench measure: the share of images whose top-1 (top-5) class is tench."""
    import torch
    from transformers import AutoModelForImageClassification

    from recare_cli.models.fingerprint import module_fingerprint

    images = sorted(target_images.glob("*.png"))
    folder = tiny_classifiers["resnet"]
    logits = _naive_logits(folder, images)
    top1 = logits.argmax(axis=1)
    target = int(np.bincount(top1, minlength=6).argmax())  # a class some images' top-1 is, so hits > 0
    name = LABELS[target].split(",")[0] if target not in (2, 3) else str(target)
    res = invoke(["score", str(images[0].parent), "-m", "classifier", "--classifier", str(folder), "--target", name])
    assert res.code == 0, res.stderr
    summary = json.loads(res.stdout)
    result = summary["results"][0]
    assert result["value"] == pytest.approx(float(np.mean(top1 == target))) and result["hits"] > 0
    params = result["params"]
    assert params["target_class"] == {"index": target, "label": LABELS[target]} and params["truth"] == name
    model = AutoModelForImageClassification.from_pretrained(folder, dtype=torch.float32)
    assert params["classifier"] == str(folder) and params["fingerprint"] == module_fingerprint(model)
    identity = summary["provenance"]["models"]["classifier"]
    assert identity["fingerprint"] == params["fingerprint"] and identity["classes"] == 6
    assert summary["provenance"]["params"]["classifier"] == str(folder)
    assert list(summary["provenance"]["models"]) == ["classifier"]  # no CLIP is loaded for it


def test_stored_logits_rescore_without_the_model_and_refuse_other_classes(
        tiny_classifiers: dict[str, Path], target_images: Path, tmp_path: Path) -> None:
    from transformers import ResNetConfig

    images = sorted(target_images.glob("*.png"))
    folder = tiny_classifiers["vit"]
    manifest = _manifest(tmp_path / "m.jsonl", images, cls=["goldfish"] * len(images))
    common = ["score", str(manifest), "-m", "classifier", "--label-field", "cls"]
    made = invoke([*common, "--classifier", str(folder), "--features", str(tmp_path / "f"), "--top-k", "2"])
    assert made.code == 0, made.stderr
    stored = np.load(tmp_path / "f" / "classifier.npy")
    assert stored.shape == (len(images), 6)
    assert np.allclose(stored, _naive_logits(folder, images), atol=1e-5)
    direct = invoke([*common, "--classifier", str(folder), "--top-k", "4"])
    # a folder holding only the config: the labels are read, the weights never are
    config_only = tmp_path / "config-only"
    config_only.mkdir()
    (config_only / "config.json").write_text((folder / "config.json").read_text())
    again = invoke([*common, "--classifier", str(config_only), "--top-k", "4", "--from-features", str(tmp_path / "f")])
    assert again.code == 0, again.stderr
    assert json.loads(again.stdout)["results"][0]["value"] == json.loads(direct.stdout)["results"][0]["value"]
    other = tmp_path / "other"
    ResNetConfig(id2label={i: f"class {i}" for i in range(6)}).save_pretrained(other)
    res = invoke(["score", str(manifest), "-m", "classifier", "--target", "class 1", "--classifier", str(other),
                  "--from-features", str(tmp_path / "f")])
    assert res.code == 3 and "other classes than those of --classifier" in one_line(res.stderr)


def test_classifier_refusals_one_line_and_exit_codes(tiny_classifiers: dict[str, Path], target_images: Path,
                                                     tmp_path: Path) -> None:
    images = sorted(target_images.glob("*.png"))[:3]
    folder = str(tiny_classifiers["resnet"])
    manifest = _manifest(tmp_path / "m.jsonl", images, cls=["tench", "zebra", "tench"])
    base = ["score", str(manifest), "-m", "classifier"]

    res = invoke([*base, "--classifier", folder, "--target", "zebra"])
    assert res.code == 2 and "--target 'zebra' is not among the classifier's 6 labels" in one_line(res.stderr)
    res = invoke([*base, "--classifier", folder, "--target", "crane"])
    assert res.code == 2 and "names 2 classes (2 'crane'; 3 'crane'): give a class index" in one_line(res.stderr)
    res = invoke([*base, "--classifier", folder, "--label-field", "cls"])
    assert res.code == 3 and "m.jsonl:2 field 'cls': 'zebra' is not among" in one_line(res.stderr)
    res = invoke([*base, "--classifier", folder, "--target", "tench", "--top-k", "7"])
    assert res.code == 2 and "number of labels (6)" in one_line(res.stderr)
    res = invoke([*base, "--target", "tench"])
    assert res.code == 2 and "needs --classifier MODEL" in one_line(res.stderr)
    res = invoke([*base, "--classifier", folder, "--target", "tench", "--label-field", "cls"])
    assert res.code == 2 and "exactly one of --target" in one_line(res.stderr)

    res = invoke([*base, "--classifier", "someone/resnet-50", "--target", "tench"])  # HF_HUB_OFFLINE=1 (conftest)
    assert res.code == 4 and "cannot fetch image classifier 'someone/resnet-50' from the model hub" in one_line(
        res.stderr)
    res = invoke([*base, "--classifier", str(tmp_path / "missing"), "--target", "tench"])
    assert res.code == 4 and "does not exist" in one_line(res.stderr)


def test_match_label_rules() -> None:
    assert match_label("tench, Tinca tinca", LABELS) == 0
    assert match_label("TENCH", LABELS) == 0 and match_label("tinca tinca", LABELS) == 0
    assert match_label("Vincent-van-Gogh", LABELS) == 5
    assert match_label("3", LABELS) == 3  # a class index
    for bad in ("crane", "6", "zebra", "van gogh"):
        with pytest.raises(Unmatched):
            match_label(bad, LABELS)
    assert match_label("1", ["0", "1"]) == 1 and match_label("0", ["1", "0"]) == 1  # a label first, then an index
