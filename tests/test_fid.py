"""recare score -m fid: parity with clean-fid's "clean" mode (its own code, on a tiny TorchScript network
with the interface of its Inception), the resize, the weights' resolution (cache, download, offline),
reference files, stored features, and the report's FID column."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from recare_cli.models import inception as weights
from tests.helpers import invoke


def build_tiny_inception(folder: Path, seed: int) -> Path:
    """A TorchScript module with the interface of clean-fid's ``inception-2015-12-05.pt``: ``layers`` maps the
    normalised (N, 3, 299, 299) input to (N, 2048); ``forward(x, return_features=True)`` takes [0, 255] pixels."""
    import torch

    class Layers(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 5, stride=4)
            self.pool = torch.nn.AdaptiveAvgPool2d(4)  # keeps where things are, so a shifted pixel shows
            self.fc = torch.nn.Linear(128, 2048)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.pool(torch.relu(self.conv(x))).flatten(1))

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = Layers()

        def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
            x = torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
            features = self.layers((x - 128) / 128)
            return features if return_features else features.softmax(1)

    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / weights.FILENAME
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(Net().eval()), str(path))
    return path


@pytest.fixture(scope="module")
def tiny_inception(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_inception(tmp_path_factory.mktemp("inception"), seed=0)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two folders of six images each, of different sizes and kinds: RGB PNGs, JPEGs, greyscale, RGBA
    (clean-fid drops the alpha), and a JPEG with an EXIF rotation (clean-fid does not apply it)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    a, b = tmp_path_factory.mktemp("scored"), tmp_path_factory.mktemp("reference")

    def smooth(h: int, w: int, channels: int) -> np.ndarray:
        low = rng.integers(0, 256, (h // 8 + 2, w // 8 + 2, channels)).astype(np.uint8)
        big = Image.fromarray(low.squeeze()).resize((w, h), Image.Resampling.BILINEAR)
        noise = rng.integers(-20, 21, (h, w, channels)).squeeze()
        return np.clip(np.asarray(big).astype(int) + noise, 0, 255).astype(np.uint8)

    for i in range(6):
        Image.fromarray(smooth(40 + 9 * i, 56 + 5 * i, 3)).save(a / f"a{i}.png")
        Image.fromarray(smooth(64, 64, 3)).save(b / f"b{i}.jpg", quality=90)
    Image.fromarray(smooth(33, 47, 1)).convert("L").save(a / "a0.png")  # greyscale
    Image.fromarray(smooth(50, 30, 4), mode="RGBA").save(a / "a1.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees
    Image.fromarray(smooth(48, 72, 3)).save(a / "a2.jpg", exif=exif, quality=90)
    (a / "a2.png").unlink()
    return a, b


@pytest.fixture(scope="module")
def cleanfid() -> Iterator[Any]:
    """clean-fid's ``fid`` module. clean-fid imports torchvision, whose PyPI wheels cannot be installed beside
    this CPU torch; it needs only ``transforms.ToTensor`` for its "clean" mode (the other names are base classes
    of its legacy PyTorch Inception, unused here). A minimal stand-in with ToTensor's semantics for arrays
    (HWC to CHW; divided by 255 for uint8 only) is put into ``sys.modules`` while clean-fid is imported, then
    taken out again so nothing else sees it."""
    pytest.importorskip("cleanfid")
    import torch

    class ToTensor:
        def __call__(self, pic: np.ndarray) -> torch.Tensor:
            tensor = torch.from_numpy(np.ascontiguousarray(pic.transpose((2, 0, 1))))
            return tensor.float().div(255) if tensor.dtype == torch.uint8 else tensor

    vision = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    models = types.ModuleType("torchvision.models")
    inception_v3 = types.ModuleType("torchvision.models.inception")
    transforms.ToTensor = ToTensor  # type: ignore[attr-defined]
    inception_v3.InceptionA = inception_v3.InceptionC = inception_v3.InceptionE = torch.nn.Module  # type: ignore[attr-defined]
    vision.transforms, vision.models, models.inception = transforms, models, inception_v3  # type: ignore[attr-defined]
    with pytest.MonkeyPatch.context() as patch:
        for name, module in (("torchvision", vision), ("torchvision.transforms", transforms),
                             ("torchvision.models", models), ("torchvision.models.inception", inception_v3)):
            patch.setitem(sys.modules, name, module)
        from cleanfid import fid

    yield fid


def clean_fid_features(fid: Any, folder: Path, weights_dir: Path) -> np.ndarray:
    import torch
    from cleanfid.inception_torchscript import InceptionV3W

    model = InceptionV3W(str(weights_dir), download=False)
    return fid.get_folder_features(str(folder), model=model, mode="clean", num_workers=0, batch_size=4,
                                   device=torch.device("cpu"), verbose=False)


def score(*args: str) -> dict[str, Any]:
    res = invoke(["score", *args])
    assert res.code == 0, res.stderr
    return json.loads(res.stdout)


def fid_result(summary: dict[str, Any]) -> dict[str, Any]:
    (result,) = [r for r in summary["results"] if r["metric"] == "fid"]
    return result


# ---------------------------------------------------------------- parity with clean-fid


def test_resize_equals_clean_fids_resizer(cleanfid: Any) -> None:
    from cleanfid.resize import make_resizer

    from recare_cli.core.inception import clean_resize

    theirs = make_resizer("PIL", False, "bicubic", (299, 299))
    rng = np.random.default_rng(1)
    for shape in ((31, 57, 3), (512, 512, 3), (299, 299, 3), (400, 120, 3)):
        rgb = rng.integers(0, 256, shape).astype(np.uint8)
        rgb[::2, ::2] = 255  # sharp edges: bicubic overshoots [0, 255] before the clip
        ours = clean_resize(rgb)
        assert ours.dtype == np.float32 and ours.shape == (299, 299, 3)
        assert np.array_equal(ours, theirs(rgb)), shape
        assert ours.max() == 255.0 and ours.min() >= 0.0
        if shape[:2] != (299, 299):
            assert not np.array_equal(ours, np.round(ours))  # not quantised to 8 bits
    with pytest.raises(ValueError, match="H, W, 3"):
        clean_resize(np.zeros((4, 4), np.uint8))


def test_features_and_fid_equal_clean_fid(cleanfid: Any, tiny_inception: Path, folders: tuple[Path, Path],
                                          tmp_path: Path) -> None:
    a, b = folders
    features = tmp_path / "features"
    summary = score(str(a), "-m", "fid", "--reference", str(b), "--inception", str(tiny_inception),
                    "--batch-size", "3", "--features", str(features))
    theirs_a = clean_fid_features(cleanfid, a, tiny_inception.parent)
    theirs_b = clean_fid_features(cleanfid, b, tiny_inception.parent)
    ours_a = np.load(features / "inception.npy")
    assert ours_a.dtype == np.float32 and ours_a.shape == theirs_a.shape == (6, 2048)
    np.testing.assert_allclose(ours_a, theirs_a, rtol=1e-5, atol=1e-6)  # same files, same (sorted) order
    assert np.abs(ours_a - theirs_a).max() < 1e-4 * np.abs(theirs_a).max()

    expected = float(cleanfid.fid_from_feats(theirs_a, theirs_b))
    result = fid_result(summary)
    assert expected > 0.01 and result["value"] == pytest.approx(expected, rel=1e-5)
    from recare_cli.io.digest import sha256_file

    identity = summary["provenance"]["models"]["inception"]
    assert identity == {"name": "inception-2015-12-05", "fingerprint": sha256_file(tiny_inception), "dtype": "fp32",
                        "preprocessing": weights.PREPROCESSING}
    assert result["reference"] == {"path": str(b), "kind": "folder", "count": 6, "extractor": identity}
    assert result["count"] == 6 and result["ci"] is None and "clean-fid clean" in result["params"]["preprocessing"]
    assert summary["provenance"]["params"]["inception"] == str(tiny_inception)


def test_one_image_moved_by_one_pixel_changes_the_features(tiny_inception: Path, folders: tuple[Path, Path],
                                                           tmp_path: Path) -> None:
    """The parity above is not vacuous: the network sees the image as read and resized."""
    from PIL import Image

    from recare_cli.core.inception import clean_resize, inception_features
    from recare_cli.models.inception import load_inception

    bundle = load_inception(tiny_inception, device="cpu")
    rgb = np.array(Image.open(sorted(folders[1].iterdir())[0]).convert("RGB"))
    one, moved = inception_features(bundle.model, [clean_resize(rgb), clean_resize(np.roll(rgb, 1, axis=1))], "cpu")
    assert np.abs(one - moved).max() > 1e-4


def test_frechet_distance_to_samples_against_the_direct_formula() -> None:
    from recare_cli.core import distances
    from tests.test_score_distances import naive_frechet, naive_gaussian

    rng = np.random.default_rng(4)
    for n, m, d in ((4, 9, 8), (3, 3, 6), (12, 7, 5)):  # fewer samples than dimensions, and more
        x, y = rng.normal(size=(n, d)), 2 * rng.normal(size=(m, d)) + 0.3
        (m1, c1), (m2, c2) = naive_gaussian(x), naive_gaussian(y)
        value = distances.frechet_distance_to_samples(x, m2, c2)
        assert value == pytest.approx(naive_frechet(m1, c1, m2, c2), rel=1e-7) and value > 0
        assert value == pytest.approx(distances.frechet_distance(m1, c1, m2, c2), rel=1e-7)
        assert distances.frechet_distance_to_samples(y, m1, c1) == pytest.approx(value, rel=1e-7)  # symmetric
    assert distances.frechet_distance_to_samples(x, *distances.gaussian(x)) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="shapes"):
        distances.frechet_distance_to_samples(rng.normal(size=(3, 6)), np.zeros(5), np.eye(5))


# ---------------------------------------------------------------- the CLI, in process and as a real process


def test_score_fid_in_process_and_as_a_subprocess(tiny_inception: Path, folders: tuple[Path, Path],
                                                  tmp_path: Path) -> None:
    a, b = folders
    args = ["score", str(a), "-m", "fid", "--reference", str(b), "--inception", str(tiny_inception)]
    inside = invoke(args)
    assert inside.code == 0, inside.stderr
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-m", "recare_cli", *args], env=env, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == inside.stdout  # the same bytes
    assert "fid: " in done.stderr.decode() and fid_result(json.loads(done.stdout))["value"] > 0
    # The folder holding the file, or RECARE_INCEPTION, name the same weights.
    by_folder = score(str(a), "-m", "fid", "--reference", str(b), "--inception", str(tiny_inception.parent))
    assert fid_result(by_folder)["value"] == fid_result(json.loads(inside.stdout))["value"]


def test_a_set_against_itself_is_zero_and_fid_needs_a_reference(tiny_inception: Path,
                                                                folders: tuple[Path, Path]) -> None:
    a, _ = folders
    same = score(str(a), "-m", "fid", "--reference", str(a), "--inception", str(tiny_inception))
    assert fid_result(same)["value"] == pytest.approx(0.0, abs=1e-6)
    res = invoke(["score", str(a), "-m", "fid", "--inception", str(tiny_inception)])
    assert res.code == 2 and "--metric fid needs --reference" in res.stderr


# ---------------------------------------------------------------- the weights: given, cached, fetched, missing


def test_offline_without_weights_is_one_line_exit_4(folders: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = folders
    assert not weights.cached_path().exists()  # the tests' cache is empty
    res = invoke(["score", str(a), "-m", "fid", "--reference", str(b)])
    assert res.code == 4 and res.stdout == b"", res.stderr
    (line,) = res.stderr.strip().splitlines()
    assert line.startswith("recare score: error: no Inception weights") and "--inception" in line
    assert weights.URL in line and weights.ENV in line
    res = invoke(["score", str(a), "-m", "fid", "--reference", str(b), "--inception", str(tmp_path / "none.pt")])
    assert res.code == 4 and len(res.stderr.strip().splitlines()) == 1 and "none.pt: no such file" in res.stderr
    not_torchscript = tmp_path / "junk" / weights.FILENAME
    not_torchscript.parent.mkdir()
    not_torchscript.write_bytes(b"not a model")
    res = invoke(["score", str(a), "-m", "fid", "--reference", str(b), "--inception", str(not_torchscript.parent)])
    assert res.code == 4 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "cannot load the Inception weights" in res.stderr


def test_weights_are_downloaded_once_into_the_cache(tiny_inception: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import urllib.request

    monkeypatch.setenv("RECARE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(weights, "URL", tiny_inception.as_uri())  # file:// needs no network
    fetched = weights.resolve(None)
    assert fetched == tmp_path / "cache" / "inception" / weights.FILENAME
    assert fetched.read_bytes() == tiny_inception.read_bytes()

    def no_network(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("downloaded again")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    assert weights.resolve(None) == fetched  # the cached copy
    assert weights.resolve(tiny_inception.parent) == tiny_inception  # a given folder wins

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fetched.unlink()
    with pytest.raises(weights.ModelUnavailableError, match="no network"):
        weights.resolve(None)


def test_a_cut_download_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    import urllib.request

    class Cut(io.BytesIO):
        headers: ClassVar[dict[str, str]] = {"Content-Length": "1000"}

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: Cut(b"PK\x03\x04 only part"))
    target = tmp_path / "cache" / weights.FILENAME
    with pytest.raises(weights.ModelUnavailableError, match="stopped after 14 of 1000 bytes") as err:
        weights.download(target, url="file:///nowhere")
    assert "\n" not in str(err.value) and weights.URL in str(err.value)
    assert list(target.parent.iterdir()) == []  # neither the file nor a temporary one

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: Cut(b"<html>" + b"x" * 994))
    with pytest.raises(weights.ModelUnavailableError, match="not a TorchScript archive"):
        weights.download(target, url="file:///nowhere")
    assert list(target.parent.iterdir()) == []


# ---------------------------------------------------------------- reference files and stored features


def test_a_written_reference_scores_as_its_folder(tiny_inception: Path, tiny_clip_dir: Path,
                                                  folders: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = folders
    ref_file = tmp_path / "ref.npz"
    models = ["--inception", str(tiny_inception), "--clip", str(tiny_clip_dir)]
    made = score(str(b), "--write-reference", str(ref_file), *models)
    with np.load(ref_file, allow_pickle=False) as npz:
        meta = json.loads(str(npz["meta"]))
        entries = set(npz.files)
        mean, cov = npz["inception.mean"], npz["inception.cov"]
    assert entries == {"meta", "clip.features", "clip.mean", "clip.cov", "inception.mean", "inception.cov"}
    assert meta["extractors"]["inception"] == made["provenance"]["models"]["inception"]
    assert mean.shape == (2048,) and cov.shape == (2048, 2048) and mean.dtype == cov.dtype == np.float64

    args = [str(a), "-m", "fid", "--inception", str(tiny_inception)]
    by_folder = fid_result(score(*args, "--reference", str(b)))
    by_file = fid_result(score(*args, "--reference", str(ref_file)))
    assert by_file["value"] == pytest.approx(by_folder["value"], rel=1e-9)
    assert (by_file["reference"]["kind"], by_file["reference"]["count"]) == ("file", 6)
    assert by_file["reference"]["extractor"] == by_folder["reference"]["extractor"]

    # A fid run's own reference holds only what fid reads: no CLIP is loaded for it.
    own = tmp_path / "own.npz"
    score(*args, "--reference", str(ref_file), "--write-reference", str(own), "--clip", str(tmp_path / "no-clip"))
    with np.load(own, allow_pickle=False) as npz:
        assert set(npz.files) == {"meta", "inception.mean", "inception.cov"}


def test_stored_features_rescore_without_the_weights(tiny_inception: Path, folders: tuple[Path, Path],
                                                     tmp_path: Path) -> None:
    a, b = folders
    ref_file, features = tmp_path / "ref.npz", tmp_path / "features"
    args = [str(a), "-m", "fid", "--reference"]
    score(str(b), "-m", "fid", "--reference", str(a), "--inception", str(tiny_inception), "--write-reference",
          str(ref_file))  # b's Inception statistics, and no CLIP loaded
    first = score(*args, str(b), "--inception", str(tiny_inception))
    stored = score(*args, str(ref_file), "--inception", str(tiny_inception), "--features", str(features))
    sidecar = json.loads((features / "features.json").read_text())
    assert sidecar["extractors"]["inception"]["shape"] == [6, 2048]
    # No weights: --inception names a file that does not exist, which would stop a run that loads them.
    again = score(*args, str(ref_file), "--inception", str(tmp_path / "gone.pt"), "--from-features", str(features))
    assert fid_result(again)["value"] == fid_result(stored)["value"]
    assert fid_result(stored)["value"] == pytest.approx(fid_result(first)["value"], rel=1e-9)
    assert again["provenance"]["models"]["inception"] == stored["provenance"]["models"]["inception"]


def test_a_reference_of_another_extractor_is_refused(tiny_inception: Path, tiny_clip_dir: Path,
                                                     folders: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = folders
    clip_only = tmp_path / "clip.npz"
    score(str(b), "--write-reference", str(clip_only), "--clip", str(tiny_clip_dir))  # no Inception named
    res = invoke(["score", str(a), "-m", "fid", "--reference", str(clip_only), "--inception", str(tiny_inception)])
    assert res.code == 3 and res.stdout == b"", res.stderr
    (line,) = res.stderr.strip().splitlines()
    assert f"{clip_only}: holds no inception features (it has: clip)" in line

    other = build_tiny_inception(tmp_path / "other", seed=1)
    theirs = tmp_path / "theirs.npz"
    score(str(b), "--write-reference", str(theirs), "--inception", str(other), "--clip", str(tiny_clip_dir))
    res = invoke(["score", str(a), "-m", "fid", "--reference", str(theirs), "--inception", str(tiny_inception)])
    assert res.code == 3, res.stderr
    (line,) = res.stderr.strip().splitlines()
    from recare_cli.io.digest import sha256_file

    assert f"{theirs}: reference made with inception inception-2015-12-05 (" in line
    assert sha256_file(other)[:19] in line and sha256_file(tiny_inception)[:19] in line


# ---------------------------------------------------------------- the report's FID column


def test_report_reads_fid_as_its_fid_column(tiny_inception: Path, folders: tuple[Path, Path], tmp_path: Path) -> None:
    import shutil

    a, b = folders
    mixed = tmp_path / "mixed"  # another six images, scored against the same reference
    mixed.mkdir()
    for path in [*sorted(a.iterdir())[:3], *sorted(b.iterdir())[:3]]:
        shutil.copy(path, mixed / path.name)
    summaries = []
    for name, scored in {"one": a, "two": mixed}.items():
        out = tmp_path / f"{name}.json"
        res = invoke(["score", str(scored), "-m", "fid", "--reference", str(b), "--inception", str(tiny_inception),
                      "-o", str(out)])
        assert res.code == 0, res.stderr
        summaries.append((name, out, fid_result(json.loads(out.read_text()))["value"]))
    res = invoke(["report", *[f"--model={n}={p}" for n, p, _ in summaries], "--fid", "fid", "--prompt-check", "off",
                  "-o", str(tmp_path / "report.json")])
    assert res.code == 0, res.stderr
    assert "FID: fid, the Fréchet Inception Distance" in res.text
    report = json.loads((tmp_path / "report.json").read_text())
    got = [m["scores"]["fid"]["value"] for m in report["models"]]
    assert got == [v for _, _, v in summaries]
