"""recare score's distribution metrics (cmmd, clipfd): the distances against naive computations, the
metrics against the same math on independently computed CLIP embeddings, reference files, and the
per-image features written as NPY and read back."""

from __future__ import annotations

import itertools
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from recare_cli.core import distances
from tests.helpers import invoke

# ---------------------------------------------------------------- pure math


def naive_gaussian(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n, d = x.shape
    mean = [sum(x[k, i] for k in range(n)) / n for i in range(d)]
    cov = [[sum((x[k, i] - mean[i]) * (x[k, j] - mean[j]) for k in range(n)) / (n - 1) for j in range(d)]
           for i in range(d)]
    return np.array(mean), np.array(cov)


def naive_frechet(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """The direct formula: tr((cov1 cov2)^(1/2)) from the eigenvalues of the non-symmetric product."""
    eig = np.linalg.eigvals(cov1 @ cov2)
    assert np.abs(eig.imag).max() < 1e-8
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2)
                 - 2 * np.sqrt(np.clip(eig.real, 0, None)).sum())


def naive_mmd(x: np.ndarray, y: np.ndarray, sigma: float = 10.0) -> float:
    """A loop over every pair, diagonal pairs included (the biased estimator), times 1000."""
    def k(a: np.ndarray, b: np.ndarray) -> float:
        return math.exp(-sum((p - q) ** 2 for p, q in zip(a, b, strict=True)) / (2 * sigma ** 2))

    def mean_k(a: np.ndarray, b: np.ndarray) -> float:
        return sum(k(p, q) for p, q in itertools.product(a, b)) / (len(a) * len(b))

    return 1000 * (mean_k(x, x) + mean_k(y, y) - 2 * mean_k(x, y))


def test_gaussian_is_the_mean_and_the_n_minus_1_covariance() -> None:
    x = np.random.default_rng(0).normal(size=(7, 3))
    mean, cov = distances.gaussian(x)
    naive_mean, naive_cov = naive_gaussian(x)
    assert mean == pytest.approx(naive_mean) and cov == pytest.approx(naive_cov)
    with pytest.raises(ValueError, match="at least 2"):
        distances.gaussian(x[:1])


def test_frechet_distance_against_the_direct_formula_and_scipy() -> None:
    rng = np.random.default_rng(1)
    for d in (1, 3, 6):
        a, b = rng.normal(size=(d, d)), rng.normal(size=(d, d))
        cov1, cov2 = a @ a.T + 0.1 * np.eye(d), b @ b.T + 0.1 * np.eye(d)
        mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
        value = distances.frechet_distance(mu1, cov1, mu2, cov2)
        assert value == pytest.approx(naive_frechet(mu1, cov1, mu2, cov2), rel=1e-9)
        linalg = pytest.importorskip("scipy.linalg")
        root = linalg.sqrtm(cov1 @ cov2)  # what pytorch-fid and clean-fid take
        assert value == pytest.approx(float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1 + cov2)
                                            - 2 * np.trace(root).real), rel=1e-9)
        assert distances.frechet_distance(mu2, cov2, mu1, cov1) == pytest.approx(value, rel=1e-9)


def test_frechet_distance_hand_values() -> None:
    cov = np.array([[2.0, 0.5], [0.5, 1.0]])
    mu = np.array([1.0, -1.0])
    assert distances.frechet_distance(mu, cov, mu, cov) == pytest.approx(0.0, abs=1e-12)
    # Same covariance, shifted mean: the squared distance of the means.
    assert distances.frechet_distance(mu, cov, mu + np.array([3.0, 4.0]), cov) == pytest.approx(25.0)
    # Diagonal covariances: the sum of (sqrt(a_i) - sqrt(b_i))^2; singular ones (a zero variance) too.
    assert distances.frechet_distance(np.zeros(2), np.diag([1.0, 0.0]), np.zeros(2),
                                      np.diag([4.0, 9.0])) == pytest.approx((1 - 2) ** 2 + (0 - 3) ** 2)
    # Fewer samples than dimensions: singular covariances, still the direct formula's value.
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(4, 8)), rng.normal(size=(5, 8)) + 0.5
    (m1, c1), (m2, c2) = distances.gaussian(x), distances.gaussian(y)
    assert distances.frechet_distance(m1, c1, m2, c2) == pytest.approx(naive_frechet(m1, c1, m2, c2), abs=1e-6)
    with pytest.raises(ValueError, match="shapes"):
        distances.frechet_distance(m1, c1, m2[:3], c2)


def test_mmd_against_a_loop_over_pairs(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    x, y = 6 * rng.normal(size=(5, 3)), 6 * rng.normal(size=(4, 3)) + 2  # distances near sigma = 10
    value = distances.mmd2_rbf(x, y)
    assert value == pytest.approx(naive_mmd(x, y), rel=1e-10) and value > 1
    assert distances.mmd2_rbf(y, x) == pytest.approx(value, rel=1e-12)
    assert distances.mmd2_rbf(x, y, sigma=3.0, scale=1.0) == pytest.approx(naive_mmd(x, y, 3.0) / 1000, rel=1e-10)
    assert distances.mmd2_rbf(x, x) == pytest.approx(0.0, abs=1e-9)
    # One point each: 1000 (1 + 1 - 2 k(a, b)).
    a, b = np.array([[0.0, 0.0]]), np.array([[3.0, 4.0]])
    assert distances.mmd2_rbf(a, b) == pytest.approx(1000 * (2 - 2 * math.exp(-25 / 200)))
    monkeypatch.setattr(distances, "_KERNEL_BLOCK", 3)  # one or two rows per block: the same sums
    assert distances.mmd2_rbf(x, y) == pytest.approx(value, rel=1e-12)


# ---------------------------------------------------------------- the metrics on the tiny CLIP


def naive_embeddings(clip_dir: Path, images: list[Path]) -> np.ndarray:
    """One image at a time through transformers, L2-normalised."""
    import torch
    from PIL import Image
    from transformers import CLIPModel

    from recare_cli.models.clip import image_processor_class

    model = CLIPModel.from_pretrained(clip_dir).eval()
    proc = image_processor_class().from_pretrained(clip_dir)
    with torch.no_grad():
        out = torch.cat([model.get_image_features(**proc(images=[Image.open(p).convert("RGB")],
                                                         return_tensors="pt")).pooler_output for p in images])
    return (out / out.norm(dim=-1, keepdim=True)).double().numpy()


@pytest.fixture()
def sets(target_images: Path, tmp_path: Path) -> tuple[Path, list[Path], Path, list[Path]]:
    """A manifest of six images (with sha256) and a reference folder of the other six."""
    from recare_cli.io.digest import sha256_file

    images = sorted(target_images.glob("*.png"))
    scored, ref = images[:6], images[6:]
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps({"path": str(p), "prompt": "a photo", "sha256": sha256_file(p)}) + "\n"
                                for p in scored), "utf-8")
    folder = tmp_path / "reference"
    folder.mkdir()
    for p in ref:
        shutil.copy(p, folder / p.name)
    return manifest, scored, folder, sorted(folder.glob("*.png"))


def score(*args: str) -> dict:
    res = invoke(["score", *args])
    assert res.code == 0, res.stderr
    return json.loads(res.stdout)


def test_cmmd_and_clipfd_equal_the_naive_math_on_naive_embeddings(sets: tuple[Path, list[Path], Path, list[Path]],
                                                                  tiny_clip_dir: Path, tmp_path: Path) -> None:
    manifest, scored, folder, ref_images = sets
    per_image, features = tmp_path / "per.jsonl", tmp_path / "features"
    summary = score(str(manifest), "-m", "cmmd", "-m", "clipfd", "--reference", str(folder), "--clip",
                    str(tiny_clip_dir), "--batch-size", "4", "--per-image", str(per_image), "--features", str(features))
    cmmd, clipfd = summary["results"]
    x, y = naive_embeddings(tiny_clip_dir, scored), naive_embeddings(tiny_clip_dir, ref_images)
    assert cmmd["value"] == pytest.approx(naive_mmd(y, x), rel=1e-4) and cmmd["value"] > 0
    (m1, c1), (m2, c2) = naive_gaussian(x), naive_gaussian(y)
    assert clipfd["value"] == pytest.approx(naive_frechet(m1, c1, m2, c2), rel=1e-4, abs=1e-6)
    assert clipfd["value"] > 0
    identity = summary["provenance"]["models"]["clip"]
    for result in (cmmd, clipfd):
        assert result["count"] == 6 and result["ci"] is None
        assert result["reference"] == {"path": str(folder), "kind": "folder", "count": 6, "extractor": identity}
    assert (cmmd["params"]["sigma"], cmmd["params"]["scale"]) == (10, 1000)
    assert "biased" in cmmd["params"]["estimator"]
    assert summary["provenance"]["params"]["reference"] == str(folder)
    rows = [json.loads(line) for line in per_image.read_text().splitlines()]
    assert [(r["cmmd"], r["clipfd"]) for r in rows] == [(None, None)] * 6
    # The features as NPY: one row per per-image row, in order, and the sidecar naming model and images.
    stored = np.load(features / "clip.npy")
    assert stored.shape == (6, 32) and stored == pytest.approx(x, abs=1e-5)
    sidecar = json.loads((features / "features.json").read_text())
    assert sidecar["format"] == "recare.features" and sidecar["extractors"]["clip"]["identity"] == identity
    assert [i["path"] for i in sidecar["images"]] == [r["path"] for r in rows]


def test_a_written_reference_scores_as_its_folder(sets: tuple[Path, list[Path], Path, list[Path]],
                                                  tiny_clip_dir: Path, tmp_path: Path) -> None:
    manifest, _, folder, _ = sets
    clip = ["--clip", str(tiny_clip_dir)]
    ref_file = tmp_path / "ref.npz"
    made = score(str(folder), "--write-reference", str(ref_file), *clip)  # no --metric needed
    assert made["results"] == [] and made["images"] == 6
    with np.load(ref_file, allow_pickle=False) as npz:
        meta = json.loads(str(npz["meta"]))
        feats, mean, cov = npz["clip.features"], npz["clip.mean"], npz["clip.cov"]
    assert (meta["format"], meta["version"], meta["count"]) == ("recare.reference", 1, 6)
    assert meta["extractors"]["clip"] == made["provenance"]["models"]["clip"]
    assert feats.shape == (6, 32) and mean == pytest.approx(feats.mean(0)) and cov == pytest.approx(np.cov(feats.T))

    args = [str(manifest), "-m", "cmmd", "-m", "clipfd", *clip]
    by_folder = score(*args, "--reference", str(folder))["results"]
    by_file = score(*args, "--reference", str(ref_file))["results"]
    for a, b in zip(by_folder, by_file, strict=True):
        assert b["value"] == pytest.approx(a["value"], rel=1e-9, abs=1e-12)
        assert (b["reference"]["kind"], b["reference"]["count"]) == ("file", 6)
        assert b["reference"]["sha256"].startswith("sha256:")
        assert b["reference"]["extractor"] == a["reference"]["extractor"]


def test_a_reference_of_another_clip_is_refused(sets: tuple[Path, list[Path], Path, list[Path]],
                                                tiny_clip_dir: Path, tmp_path: Path) -> None:
    from recare_cli.models.tiny import build_tiny_clip

    manifest, _, folder, _ = sets
    other = build_tiny_clip(tmp_path / "other-clip", seed=1)
    ref_file = tmp_path / "other.npz"
    theirs = score(str(folder), "--write-reference", str(ref_file), "--clip", str(other))
    per_image = tmp_path / "per.jsonl"
    per_image.write_text("previous results\n")
    res = invoke(["score", str(manifest), "-m", "cmmd", "--reference", str(ref_file), "--clip", str(tiny_clip_dir),
                  "--per-image", str(per_image)])
    assert res.code == 3 and res.stdout == b"", res.stderr
    (line,) = res.stderr.strip().splitlines()
    ours = score(str(manifest), "-m", "clip", "--clip", str(tiny_clip_dir))["provenance"]["models"]["clip"]
    assert line.startswith(f"recare score: error: {ref_file}: reference made with clip")
    assert theirs["provenance"]["models"]["clip"]["fingerprint"][:19] in line and ours["fingerprint"][:19] in line
    assert per_image.read_text() == "previous results\n"  # nothing lost

    not_npz = tmp_path / "bad.npz"
    not_npz.write_text("not a zip")
    for bad in (not_npz, tmp_path / "missing.npz"):
        res = invoke(["score", str(manifest), "-m", "clipfd", "--reference", str(bad), "--clip", str(tiny_clip_dir)])
        assert res.code == 3 and len(res.stderr.strip().splitlines()) == 1 and str(bad) in res.stderr, res.stderr
    res = invoke(["score", str(manifest), "-m", "cmmd", "--clip", str(tiny_clip_dir)])
    assert res.code == 2 and "--metric cmmd needs --reference" in res.stderr
    res = invoke(["score", str(manifest), "-m", "clip", "--reference", str(folder), "--clip", str(tiny_clip_dir)])
    assert res.code == 2 and "--reference is for the metrics that compare with a reference (cmmd, clipfd or fid)" \
        in res.stderr
    res = invoke(["score", str(manifest), "--clip", str(tiny_clip_dir)])
    assert res.code == 2 and "or --write-reference FILE" in res.stderr


def test_features_round_trip_rescores_without_the_model(sets: tuple[Path, list[Path], Path, list[Path]],
                                                        tiny_clip_dir: Path, tmp_path: Path) -> None:
    manifest, _, folder, _ = sets
    ref_file, features = tmp_path / "ref.npz", tmp_path / "features"
    clip = ["--clip", str(tiny_clip_dir)]
    score(str(folder), "--write-reference", str(ref_file), *clip)
    args = [str(manifest), "-m", "cmmd", "-m", "clipfd", "--reference", str(ref_file)]
    first = score(*args, *clip, "--features", str(features))
    # No model: a --clip that does not exist would stop the run (exit 4) if it were loaded.
    again = score(*args, "--clip", str(tmp_path / "no-such-clip"), "--from-features", str(features))
    assert again["results"] == first["results"]
    assert again["provenance"]["models"] == first["provenance"]["models"]
    assert again["provenance"]["params"]["from_features"] == str(features)

    # A metric that needs CLIP's text tower loads it, and then only the model that made the features.
    care = [str(manifest), "-m", "care", "--concept", "person"]
    assert score(*care, *clip, "--from-features", str(features))["results"] == score(*care, *clip)["results"]
    from recare_cli.models.tiny import build_tiny_clip

    other = build_tiny_clip(tmp_path / "other-clip", seed=1)
    res = invoke(["score", *care, "--clip", str(other), "--from-features", str(features)])
    assert res.code == 3 and "features made with clip" in res.stderr and len(res.stderr.strip().splitlines()) == 1

    # Other images than the features': refused, naming the manifest line.
    lines = manifest.read_text().splitlines()
    swapped = tmp_path / "swapped.jsonl"
    swapped.write_text("\n".join([lines[1], lines[0], *lines[2:]]) + "\n")
    res = invoke(["score", str(swapped), *args[1:], "--from-features", str(features), *clip])
    assert res.code == 3 and f"{swapped}:1 field 'sha256'" in res.stderr and "sha256 differs" in res.stderr
    fewer = tmp_path / "fewer.jsonl"
    fewer.write_text("\n".join(lines[:5]) + "\n")
    res = invoke(["score", str(fewer), *args[1:], "--from-features", str(features), *clip])
    assert res.code == 3 and "features of 6 images, but the input has 5" in res.stderr


def test_features_of_an_image_folder_are_checked_by_file_digest(sets: tuple[Path, list[Path], Path, list[Path]],
                                                                tiny_clip_dir: Path, tmp_path: Path) -> None:
    _, scored, folder, _ = sets
    features = tmp_path / "features"
    args = ["-m", "cmmd", "--reference", str(folder), "--clip", str(tiny_clip_dir)]
    first = score(str(folder), *args, "--features", str(features))
    assert first["results"][0]["value"] == pytest.approx(0.0, abs=1e-6)  # a set against itself
    assert score(str(folder), *args, "--from-features", str(features))["results"] == first["results"]
    changed = sorted(folder.glob("*.png"))[2]
    shutil.copy(scored[0], changed)
    res = invoke(["score", str(folder), *args, "--from-features", str(features)])
    assert res.code == 3 and f"image {changed} is not image 3" in res.stderr
