"""The reference's object classifier without torchvision: a torchvision ResNet-50 weights file (random
weights built by hand in torchvision's key layout) loaded into transformers gives the logits of a naive
re-implementation of torchvision's ResNet-50 forward; torchvision's preset equals a naive computation
and hand-worked sizes; ``score -m classifier --classifier FILE.pth`` runs end to end and records the
file; pickles that need more than tensors are refused."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.helpers import invoke

DEPTHS = (3, 4, 6, 3)
PLANES = (64, 128, 256, 512)


def tv_state(seed: int) -> dict[str, Any]:
    """A ResNet-50 state dict in torchvision's layout, written out key by key (torchvision's resnet.py:
    conv1/bn1, layerS.B.conv1..3/bn1..3, layerS.0.downsample.0/1, fc), random but well scaled."""
    import torch

    g = torch.Generator().manual_seed(seed)
    state: dict[str, Any] = {}

    def conv(name: str, cout: int, cin: int, k: int) -> None:
        state[f"{name}.weight"] = torch.randn(cout, cin, k, k, generator=g) * math.sqrt(2.0 / (cin * k * k))

    def bn(name: str, c: int, scale: float = 1.0) -> None:
        state[f"{name}.weight"] = (0.5 + torch.rand(c, generator=g)) * scale
        state[f"{name}.bias"] = 0.1 * torch.randn(c, generator=g)
        state[f"{name}.running_mean"] = 0.1 * torch.randn(c, generator=g)
        state[f"{name}.running_var"] = 0.5 + torch.rand(c, generator=g)
        state[f"{name}.num_batches_tracked"] = torch.tensor(7)

    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    inplanes = 64
    for stage, (planes, depth) in enumerate(zip(PLANES, DEPTHS, strict=True), start=1):
        for block in range(depth):
            p = f"layer{stage}.{block}"
            conv(f"{p}.conv1", planes, inplanes, 1)
            bn(f"{p}.bn1", planes)
            conv(f"{p}.conv2", planes, planes, 3)
            bn(f"{p}.bn2", planes)
            conv(f"{p}.conv3", planes * 4, planes, 1)
            bn(f"{p}.bn3", planes * 4, scale=0.3)  # a small residual branch keeps 16 blocks' activations bounded
            if block == 0:
                conv(f"{p}.downsample.0", planes * 4, inplanes, 1)
                bn(f"{p}.downsample.1", planes * 4)
            inplanes = planes * 4
    state["fc.weight"] = torch.randn(1000, 2048, generator=g) * 0.05
    state["fc.bias"] = 0.1 * torch.randn(1000, generator=g)
    return state


def naive_forward(state: dict[str, Any], x: Any) -> Any:
    """torchvision's ResNet._forward_impl and Bottleneck.forward in plain functional ops (eval mode)."""
    import torch.nn.functional as F

    def conv_bn(x: Any, conv: str, norm: str, stride: int = 1, padding: int = 0) -> Any:
        x = F.conv2d(x, state[f"{conv}.weight"], stride=stride, padding=padding)
        return F.batch_norm(x, state[f"{norm}.running_mean"], state[f"{norm}.running_var"], state[f"{norm}.weight"],
                            state[f"{norm}.bias"], training=False, eps=1e-5)

    x = F.relu(conv_bn(x, "conv1", "bn1", stride=2, padding=3))
    x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
    for stage, depth in enumerate(DEPTHS, start=1):
        for block in range(depth):
            p = f"layer{stage}.{block}"
            stride = 2 if block == 0 and stage > 1 else 1
            out = F.relu(conv_bn(x, f"{p}.conv1", f"{p}.bn1"))
            out = F.relu(conv_bn(out, f"{p}.conv2", f"{p}.bn2", stride=stride, padding=1))  # v1.5: stride on 3x3
            out = conv_bn(out, f"{p}.conv3", f"{p}.bn3")
            identity = conv_bn(x, f"{p}.downsample.0", f"{p}.downsample.1", stride=stride) if block == 0 else x
            x = F.relu(out + identity)
    return F.linear(x.mean(dim=(2, 3)), state["fc.weight"], state["fc.bias"])


def naive_preset(image: Any) -> np.ndarray:
    """torchvision's ImageClassification(crop_size=224, resize_size=232) on a PIL image, step by step in
    NumPy: shorter side to 232 (longer truncated), PIL bilinear, centre crop at round(), /255, mean/std."""
    from PIL import Image

    w, h = image.size
    size = (232, int(232 * h / w)) if w <= h else (int(232 * w / h), 232)
    if size != (w, h):
        image = image.resize(size, Image.BILINEAR)
    a = np.asarray(image).astype(np.float32)
    top, left = round((size[1] - 224) / 2), round((size[0] - 224) / 2)
    a = a[top:top + 224, left:left + 224] / np.float32(255)
    a = (a - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    return a.transpose(2, 0, 1)


def close(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.abs(a - b).max() <= 1e-4 * np.abs(b).max())


@pytest.fixture(scope="module")
def state() -> dict[str, Any]:
    return tv_state(0)


@pytest.fixture(scope="module")
def weights_file(state: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    path = tmp_path_factory.mktemp("tv") / "resnet50-random.pth"
    torch.save(state, path)
    return path


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


# ---------------------------------------------------------------- the key mapping and the network


def test_every_torchvision_key_maps_to_one_transformers_key_and_none_is_left(state: dict[str, Any]) -> None:
    import torch

    from recare_cli.models.tvresnet import build, key_map

    mapping = key_map()
    assert len(state) == 320 and set(mapping) == set(state)  # torchvision's ResNet-50 has 320 entries
    model = build(state, Path("x.pth"))
    assert len(set(mapping.values())) == 320 and set(mapping.values()) == set(model.state_dict())
    loaded = model.state_dict()
    assert all(torch.equal(loaded[mapping[key]], tensor) for key, tensor in state.items())


def test_loaded_model_gives_the_logits_of_torchvision_forward(state: dict[str, Any]) -> None:
    import torch
    from transformers import ResNetConfig, ResNetForImageClassification

    from recare_cli.models.tvresnet import build, to_transformers

    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = naive_forward(state, x).numpy()
        got = build(state, Path("x.pth"))(pixel_values=x).logits.numpy()
        assert np.abs(want).max() > 1 and close(got, want)
        # the v1 placement of the stride (on the first 1x1) loads as well but computes another network
        v1 = ResNetForImageClassification(ResNetConfig(depths=list(DEPTHS), downsample_in_bottleneck=True,
                                                       num_labels=1000)).eval()
        v1.load_state_dict(to_transformers(state, Path("x.pth")))
        assert not close(v1(pixel_values=x).logits.numpy(), want)


def test_a_wrong_shape_is_one_line(state: dict[str, Any]) -> None:
    import torch

    from recare_cli.errors import ModelUnavailableError
    from recare_cli.models.tvresnet import build

    bad = {**state, "fc.weight": torch.zeros(10, 2048)}
    with pytest.raises(ModelUnavailableError, match=r"'fc.weight' has shape \(10, 2048\), a torchvision resnet50 "
                                                    r"has \(1000, 2048\)"):
        build(bad, Path("x.pth"))


# ---------------------------------------------------------------- the preset


@pytest.mark.parametrize(("size", "resized", "box"), [
    ((640, 427), (347, 232), (62, 4, 286, 228)),  # landscape: 232*640/427 = 347.7; left round(61.5) = 62
    ((427, 640), (232, 347), (4, 62, 228, 286)),  # portrait
    ((233, 301), (232, 299), (4, 38, 228, 262)),  # odd: 232*301/233 = 299.7; top round(37.5) = 38
    ((512, 512), (232, 232), (4, 4, 228, 228)),  # even, square
    ((40, 40), (232, 232), (4, 4, 228, 228)),  # smaller than the crop: enlarged
    ((232, 233), (232, 233), (4, 4, 228, 228)),  # already 232: no resize; top round(4.5) = 4 (half to even)
    ((232, 235), (232, 235), (4, 6, 228, 230)),  # top round(5.5) = 6
])
def test_preset_equals_torchvision_steps(size: tuple[int, int], resized: tuple[int, int],
                                         box: tuple[int, int, int, int]) -> None:
    from PIL import Image

    from recare_cli.models.tvpreset import crop_box, preset, resized_size

    assert resized_size(*size) == resized and crop_box(*resized) == box
    rng = np.random.default_rng(sum(size))
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    got = preset(image)
    assert got.dtype.is_floating_point and tuple(got.shape) == (3, 224, 224)
    assert np.array_equal(got.numpy(), naive_preset(image))


# ---------------------------------------------------------------- the class names


def test_the_shipped_class_names_are_torchvision_imagenet_categories() -> None:
    from recare_cli.models.classifier import classifier_labels
    from recare_cli.models.tvresnet import categories

    names = categories()
    assert len(names) == 1000 == len(set(names))
    assert (names[0], names[1], names[134], names[517], names[999]) == (
        "tench", "goldfish", "crane bird", "crane", "toilet tissue")
    assert all(name == name.strip() and name for name in names)
    assert classifier_labels("missing/resnet50.pth") == names  # the labels need no weights file


# ---------------------------------------------------------------- score end to end


def test_score_with_a_torchvision_file_counts_the_naive_top_k_and_records_the_file(
        state: dict[str, Any], weights_file: Path, target_images: Path, tmp_path: Path) -> None:
    import torch
    from PIL import Image

    from recare_cli.models.tvresnet import categories

    folder = tmp_path / "images"
    folder.mkdir()
    for path in sorted(target_images.glob("*.png"))[:3]:
        shutil.copy(path, folder / path.name)
    images = sorted(folder.glob("*.png"))
    with torch.no_grad():
        pixels = torch.from_numpy(np.stack([naive_preset(Image.open(p).convert("RGB")) for p in images]))
        logits = naive_forward(state, pixels).numpy()
    names = categories()
    target = names[int(logits[0].argmax())]  # the first image's top-1, so there is at least one hit
    top5 = [[names[j] for j in np.argsort(-row, kind="stable")[:5]] for row in logits]

    per_image = tmp_path / "per.jsonl"
    res = invoke(["score", str(folder), "-m", "classifier", "--classifier", str(weights_file), "--target",
                  target.upper(), "--top-k", "5", "--features", str(tmp_path / "f"), "--per-image", str(per_image)])
    assert res.code == 0, res.stderr
    summary = json.loads(res.stdout)
    result = summary["results"][0]
    assert close(np.load(tmp_path / "f" / "classifier.npy"), logits)
    rows = [json.loads(line)["classifier"] for line in per_image.read_text().splitlines()]
    assert [r["topk"] for r in rows] == top5
    assert result["hits"] == sum(target in row for row in top5) >= 1
    assert result["params"]["target_class"] == {"index": names.index(target), "label": target}
    identity = summary["provenance"]["models"]["classifier"]
    digest = "sha256:" + hashlib.sha256(weights_file.read_bytes()).hexdigest()
    assert identity["fingerprint"] == digest == result["params"]["fingerprint"]
    assert identity["layout"] == "torchvision resnet50" and identity["classes"] == 1000
    assert identity["dtype"] == "fp32" and "centre crop 224" in identity["preprocessing"]

    # the stored logits re-score with the class names alone: the weights file is not read again
    moved = tmp_path / "gone.pth"
    shutil.copy(weights_file, moved)
    moved.unlink()
    again = invoke(["score", str(folder), "-m", "classifier", "--classifier", str(moved), "--target", target,
                    "--from-features", str(tmp_path / "f")])
    assert again.code == 0, again.stderr
    assert json.loads(again.stdout)["results"][0]["hits"] == int((logits.argmax(axis=1) == names.index(target)).sum())


# ---------------------------------------------------------------- refusals


class Runs:
    """Unpickling this makes a folder: code a weights file must never run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        import os

        return (os.mkdir, (str(self.marker),))


class Plain:
    pass


def test_files_that_are_not_plain_state_dicts_are_refused_in_one_line(target_images: Path, tmp_path: Path) -> None:
    import torch

    base = ["score", str(target_images), "-m", "classifier", "--target", "tench", "--classifier"]
    marker = tmp_path / "ran"
    torch.save({"conv1.weight": torch.zeros(1), "hook": Runs(marker)}, tmp_path / "code.pth")
    res = invoke([*base, str(tmp_path / "code.pth")])
    assert res.code == 4 and "code.pth: refused, not a plain tensor file (it needs posix.mkdir" in one_line(res.stderr)
    assert not marker.exists()

    torch.save({"fc.weight": Plain()}, tmp_path / "object.pt")
    res = invoke([*base, str(tmp_path / "object.pt")])
    assert res.code == 4 and "refused, not a plain tensor file (it needs tests.test_tvresnet.Plain" in one_line(
        res.stderr)

    torch.save({"model": {"fc.weight": torch.zeros(1)}}, tmp_path / "wrapped.pth")
    res = invoke([*base, str(tmp_path / "wrapped.pth")])
    assert res.code == 4 and "not a state dict of tensors" in one_line(res.stderr)

    torch.save({"conv1.weight": torch.zeros(1), "head.weight": torch.zeros(1)}, tmp_path / "other.pth")
    res = invoke([*base, str(tmp_path / "other.pth")])
    assert res.code == 4 and ("not a torchvision resnet50 state dict (319 key(s) missing, e.g. 'bn1.weight'; "
                              "1 unknown, e.g. 'head.weight')") in one_line(res.stderr)

    (tmp_path / "text.pth").write_text("not a checkpoint")
    res = invoke([*base, str(tmp_path / "text.pth")])
    assert res.code == 4 and "text.pth: not a torch weights file (neither" in one_line(res.stderr)

    res = invoke([*base, str(tmp_path / "absent.pth")])
    assert res.code == 4 and "absent.pth: no such file (download https://download.pytorch.org/models/" \
                             "resnet50-11ad3fa6.pth)" in one_line(res.stderr)
