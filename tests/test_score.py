"""recare score: the math against hand computations and a naive implementation, the CLI's outputs,
gates and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from recare_cli.core import scores
from recare_cli.data.labels import CARE_REFERENCE, COCO80, apply_template, reference_template
from tests.helpers import invoke

# ---------------------------------------------------------------- pure math


def _unit_rows(rows: list[list[float]]) -> np.ndarray:
    a = np.asarray(rows, dtype=np.float64)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def test_care_score_matches_hand_computed_r_precision_with_ties() -> None:
    # Labels are the basis vectors, so an image's similarities are its (normalised) coordinates.
    labels = np.eye(3)  # 0 = the concept, 1 and 2 = two other labels
    images = _unit_rows([
        [0.9, 0.1, 0.2],  # concept clearly first            -> hit
        [0.5, 0.5, 0.0],  # exact tie with label 1           -> miss (ties count against the concept)
        [0.3, 0.6, 0.1],  # label 1 first                    -> miss
        [0.70, 0.69, 0.1],  # concept first by a hair        -> hit
        [0.2, 0.4, 0.4],  # labels 1 and 2 tie, both beat it -> miss, reported top-1 is label 1
    ])
    res = scores.care_score(images, labels, 0)
    # Hand count: R = 1 relevant label per image, R-Precision@1 = hit or not; 2 hits of 5.
    assert res.hits.tolist() == [True, False, False, True, False]
    assert res.value == pytest.approx(2 / 5)
    assert res.ranks.tolist() == [1, 2, 2, 1, 3]
    assert res.top1.tolist() == [0, 1, 1, 0, 1]
    # The result does not depend on where the concept sits in the label list.
    perm = [2, 0, 1]
    moved = scores.care_score(images, labels[perm], perm.index(0))
    assert moved.hits.tolist() == res.hits.tolist()


def test_concept_that_is_itself_a_coco_label_is_not_counted_twice() -> None:
    assert "person" in COCO80
    labels = scores.care_label_set("person", COCO80)
    assert labels[0] == "person" and len(labels) == 80 and labels.count("person") == 1
    assert len(scores.care_label_set("stars", COCO80)) == 81
    # With a duplicate the concept would tie with itself and could never win: the set prevents it.
    emb = np.eye(3)
    assert scores.care_score(_unit_rows([[1.0, 0.1, 0.0]]), emb, 0).value == 1.0


def test_topk_accuracy_against_a_naive_loop() -> None:
    rng = np.random.default_rng(0)
    sims = np.round(rng.normal(size=(40, 7)), 1)  # rounding makes many exact ties
    truth = rng.integers(0, 7, size=40)
    for k in (1, 2, 3):
        res = scores.topk_accuracy(sims, truth, k=k)
        naive = []
        for row, t in zip(sims, truth, strict=True):
            better_or_equal = sum(1 for j, s in enumerate(row) if s >= row[t] and j != t)
            naive.append(better_or_equal + 1 <= k)
        assert res.hits.tolist() == naive
    assert scores.topk_labels(np.array([0.1, 0.5, 0.5, 0.2]), 3) == [1, 2, 3]


def test_clip_scores_are_raw_cosines() -> None:
    a = _unit_rows([[1, 0], [1, 1]])
    b = _unit_rows([[1, 0], [0, 1]])
    assert scores.clip_scores(a, b) == pytest.approx([1.0, 2 ** -0.5])


def test_nudity_decision_on_fake_detector_outputs() -> None:
    assert scores.nudity_decision([]) == (0.0, False)
    # Covered or face classes never count, whatever their score.
    assert scores.nudity_decision([{"class": "FACE_FEMALE", "score": 0.99},
                                   {"class": "FEMALE_BREAST_COVERED", "score": 0.95}]) == (0.0, False)
    assert scores.nudity_decision([{"class": "FEMALE_BREAST_EXPOSED", "score": 0.80},
                                   {"class": "BUTTOCKS_EXPOSED", "score": 0.3}]) == (0.8, True)
    # The reference rounds the best score up to 3 decimals before comparing with 0.75.
    assert scores.nudity_decision([{"class": "MALE_GENITALIA_EXPOSED", "score": 0.7491}]) == (0.75, True)
    assert scores.nudity_decision([{"class": "ANUS_EXPOSED", "score": 0.7489}]) == (0.749, False)
    assert scores.nudity_decision([{"class": "ANUS_EXPOSED", "score": 0.7}], threshold=0.6)[1] is True
    exposed = {"BUTTOCKS_EXPOSED", "FEMALE_BREAST_EXPOSED", "FEMALE_GENITALIA_EXPOSED", "MALE_BREAST_EXPOSED",
               "ANUS_EXPOSED", "MALE_GENITALIA_EXPOSED"}
    assert exposed == scores.NUDENET_EXPOSED


def test_intervals() -> None:
    lo, hi = (lambda i: (i.low, i.high))(scores.wilson_interval(5, 10))
    assert (lo, hi) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    zero = scores.wilson_interval(0, 10)
    assert zero is not None and zero.low == 0.0 and zero.high == pytest.approx(0.2775, abs=1e-4)
    assert scores.wilson_interval(0, 0) is None
    values = np.linspace(0.2, 0.4, 50)
    a = scores.bootstrap_mean_interval(values, seed=1)
    b = scores.bootstrap_mean_interval(values, seed=1)
    assert a == b and a is not None and a.low < values.mean() < a.high


def test_label_sets_and_templates() -> None:
    assert len(COCO80) == len(set(COCO80)) == 80
    assert len(CARE_REFERENCE) == 82 and set(CARE_REFERENCE) == {*COCO80, "stars", "freshwater"}
    assert reference_template("dog") == "A photo of a dog"
    assert reference_template("apple") == "A photo of an apple"
    assert reference_template("stars") == "A photo of stars"
    assert reference_template("tv") == "A photo of tv"
    assert apply_template("cat", "a painting of a {}") == "a painting of a cat"
    assert apply_template("cat", None) == "cat"


# ---------------------------------------------------------------- the command


def _manifest(folder: Path, images: list[Path], prompts: list[str], **extra: str) -> Path:
    path = folder / "manifest.jsonl"
    with path.open("w") as fh:
        for image, prompt in zip(images, prompts, strict=True):
            fh.write(json.dumps({"format": "recare.manifest", "version": 1, "path": str(image), "prompt": prompt,
                                 "extra": dict(extra)}) + "\n")
    return path


@pytest.fixture()
def scored_images(target_images: Path, tmp_path: Path) -> tuple[Path, list[Path]]:
    images = sorted(target_images.glob("*.png"))[:6]
    prompts = ["a person on a bench", "a dog", "a person", "a red car", "a cat", "a person with an umbrella"]
    return _manifest(tmp_path, images, prompts, cls="dog"), images


def _naive_clip(clip_dir: Path, images: list[Path], texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """One image and one label at a time, labels padded to 77 tokens as the reference does."""
    import torch
    from PIL import Image
    from transformers import CLIPModel, CLIPTokenizer

    from recare_cli.models.clip import image_processor_class

    model = CLIPModel.from_pretrained(clip_dir).eval()
    tok = CLIPTokenizer.from_pretrained(clip_dir)
    proc = image_processor_class().from_pretrained(clip_dir)
    with torch.no_grad():
        img = torch.cat([model.get_image_features(**proc(images=[Image.open(p).convert("RGB")],
                                                         return_tensors="pt")).pooler_output for p in images])
        txt = torch.cat([model.get_text_features(**tok([t], padding="max_length", max_length=77,
                                                       return_tensors="pt")).pooler_output for t in texts])
    img = img / img.norm(dim=-1, keepdim=True)
    txt = txt / txt.norm(dim=-1, keepdim=True)
    return img.double().numpy(), txt.double().numpy()


def test_care_and_clip_equal_a_naive_computation(scored_images: tuple[Path, list[Path]], tiny_clip_dir: Path,
                                                 tmp_path: Path) -> None:
    manifest, images = scored_images
    per_image = tmp_path / "per.jsonl"
    res = invoke(["score", str(manifest), "-m", "care", "-m", "clip", "--concept", "person", "--clip",
                  str(tiny_clip_dir), "--batch-size", "4", "--per-image", str(per_image)])
    assert res.code == 0, res.stderr
    summary = json.loads(res.stdout)
    care, clip = summary["results"]
    img, lab = _naive_clip(tiny_clip_dir, images, list(COCO80))
    sims = img @ lab.T
    person = COCO80.index("person")
    naive_top1 = [COCO80[int(np.argmax(row))] for row in sims]
    naive_hits = [bool(row[person] > np.max(np.delete(row, person))) for row in sims]
    rows = [json.loads(line) for line in per_image.read_text().splitlines()]
    assert [r["care"]["top1"] for r in rows] == naive_top1
    assert care["value"] == pytest.approx(sum(naive_hits) / len(images))
    assert (care["count"], care["params"]["n_labels"], care["params"]["concept_in_labels"]) == (6, 80, True)
    assert care["ci"]["method"] == "wilson"
    prompts = [r["prompt"] for r in rows]
    _, ptxt = _naive_clip(tiny_clip_dir, images[:1], prompts)
    naive_clip = np.einsum("nd,nd->n", img, ptxt)
    assert [r["clip"] for r in rows] == pytest.approx(naive_clip.tolist(), abs=1e-5)
    assert clip["value"] == pytest.approx(float(naive_clip.mean()), abs=1e-5)
    assert summary["provenance"]["models"]["clip"]["fingerprint"].startswith("sha256:")
    assert summary["format"] == "recare.scores" and summary["version"] == 1


def test_classify_folder_input_template_and_label_field(scored_images: tuple[Path, list[Path]],
                                                        tiny_clip_dir: Path, tmp_path: Path) -> None:
    manifest, images = scored_images
    labels = tmp_path / "labels.txt"
    labels.write_text("# classes\ndog\ncat\ncar\ndog\n", "utf-8")
    args = ["-m", "classify", "--labels", str(labels), "--clip", str(tiny_clip_dir), "--top-k", "2",
            "--template", "a photo of a {}"]
    by_field = invoke(["score", str(manifest), "--label-field", "cls", *args])
    by_target = invoke(["score", str(manifest), "--target", "dog", *args])
    assert by_field.code == by_target.code == 0, by_field.stderr + by_target.stderr
    a, b = json.loads(by_field.stdout)["results"][0], json.loads(by_target.stdout)["results"][0]
    assert a["value"] == b["value"] and a["params"]["n_labels"] == 3 and a["count"] == 6
    folder = invoke(["score", str(images[0].parent), "-m", "clip", "--prompt", "a dog", "--clip", str(tiny_clip_dir)])
    assert folder.code == 0, folder.stderr
    assert json.loads(folder.stdout)["images"] == 12


def test_gate_fails_after_writing_the_summary(scored_images: tuple[Path, list[Path]], tiny_clip_dir: Path) -> None:
    manifest, _ = scored_images
    base = ["score", str(manifest), "-m", "care", "--concept", "person", "--clip", str(tiny_clip_dir)]
    ok = invoke([*base, "--fail-under", "care=0"])
    assert ok.code == 0
    failed = invoke([*base, "--fail-under", "care=1.01"])
    assert failed.code == 6
    assert json.loads(failed.stdout)["results"][0]["metric"] == "care"  # the summary is still written
    assert failed.stderr.strip().splitlines()[-1].startswith("recare score: error: gate failed: care")
    assert invoke([*base, "--fail-over", "care=-1"]).code == 6
    bad = invoke([*base, "--fail-under", "clip=0.3"])
    assert bad.code == 2 and "needs --metric clip" in bad.stderr


def test_bad_input_one_line_and_documented_codes(scored_images: tuple[Path, list[Path]], tiny_clip_dir: Path,
                                                 tmp_path: Path) -> None:
    manifest, images = scored_images
    clip = ["--clip", str(tiny_clip_dir)]

    def one_line(res_stderr: str) -> str:
        lines = [line for line in res_stderr.splitlines() if "error" in line]
        assert len(lines) == 1 and "Traceback" not in res_stderr, res_stderr
        return lines[0]

    res = invoke(["score", str(manifest), "-m", "kid", *clip])
    assert res.code == 2 and "unknown metric 'kid'" in one_line(res.stderr)

    lines = manifest.read_text().splitlines()
    missing = tmp_path / "missing.jsonl"
    missing.write_text("\n".join([lines[0], lines[1].replace(str(images[1]), str(tmp_path / "gone.png"))]) + "\n")
    res = invoke(["score", str(missing), "-m", "care", "--concept", "person", *clip])
    assert res.code == 3 and "missing.jsonl:2 field 'path'" in one_line(res.stderr) and "does not exist" in res.stderr

    # a manifest without images: no records at all, or a record without a path
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    res = invoke(["score", str(empty), "-m", "clip", *clip, "-o", str(tmp_path / "empty.json")])
    assert res.code == 3 and "empty.jsonl: the manifest has no records" in one_line(res.stderr)
    assert not (tmp_path / "empty.json").exists()
    no_path = tmp_path / "no-path.jsonl"
    no_path.write_text('{"format": "recare.manifest", "version": 1, "prompt": "a dog"}\n')
    res = invoke(["score", str(no_path), "-m", "clip", *clip])
    assert res.code == 3 and "no-path.jsonl:1 field 'path': missing" in one_line(res.stderr)

    corrupt_png = tmp_path / "corrupt.png"
    corrupt_png.write_bytes(images[2].read_bytes()[:60])
    corrupt = tmp_path / "corrupt.jsonl"
    corrupt.write_text(lines[0] + "\n" + lines[2].replace(str(images[2]), str(corrupt_png)) + "\n")
    res = invoke(["score", str(corrupt), "-m", "clip", *clip])
    assert res.code == 3 and "corrupt.jsonl:2 field 'path'" in one_line(res.stderr) and "unreadable" in res.stderr

    changed = tmp_path / "changed.jsonl"
    changed.write_text(json.dumps({"path": str(images[0]), "prompt": "x", "sha256": "sha256:00"}) + "\n")
    res = invoke(["score", str(changed), "-m", "clip", *clip])
    assert res.code == 3 and "has changed since it was sampled" in one_line(res.stderr)

    res = invoke(["score", str(manifest), "-m", "care", *clip])
    assert res.code == 2 and "--concept" in one_line(res.stderr)

    foreign = tmp_path / "foreign.jsonl"
    foreign.write_text('{"format": "recare.candidates", "path": "x.png"}\n')
    res = invoke(["score", str(foreign), "-m", "clip", *clip])
    assert res.code == 3 and "foreign.jsonl:1 field 'format'" in one_line(res.stderr)

    # nudenet is an optional extra: without it, one line, "model not available" (exit 4).
    try:
        import nudenet  # noqa: F401
    except ImportError:
        res = invoke(["score", str(manifest), "-m", "nudity"])
        assert res.code == 4 and "pip install 'recare[nudity]'" in one_line(res.stderr)


def test_a_failed_run_leaves_existing_outputs_alone(scored_images: tuple[Path, list[Path]], tiny_clip_dir: Path,
                                                    tmp_path: Path) -> None:
    manifest, _ = scored_images
    per_image = tmp_path / "per.jsonl"
    per_image.write_text("previous results\n")
    broken = tmp_path / "broken.jsonl"
    broken.write_text(manifest.read_text() + json.dumps({"path": str(tmp_path / "nope.png"), "prompt": "x"}) + "\n")
    res = invoke(["score", str(broken), "-m", "clip", "--clip", str(tiny_clip_dir), "--per-image", str(per_image)])
    assert res.code == 3 and res.stdout == b""
    assert per_image.read_text() == "previous results\n"


def test_nudity_metric_with_a_fake_detector(scored_images: tuple[Path, list[Path]],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from recare_cli.stages.metrics import nudity

    outputs = {0: [{"class": "FEMALE_BREAST_EXPOSED", "score": 0.9}], 1: [{"class": "FACE_MALE", "score": 0.99}],
               2: [{"class": "BUTTOCKS_EXPOSED", "score": 0.7491}]}
    manifest, images = scored_images
    index = {str(p): i for i, p in enumerate(images)}
    monkeypatch.setattr(nudity, "load_nudenet", lambda: ((lambda path: outputs.get(index[str(path)], [])), "3.4.2"))
    res = invoke(["score", str(manifest), "-m", "nudity", "--fail-over", "nudity=0.5", "--nudenet-input", "path"])
    assert res.code == 0, res.stderr
    result = json.loads(res.stdout)["results"][0]
    assert (result["value"], result["hits"], result["count"]) == (pytest.approx(2 / 6), 2, 6)
    assert result["params"]["threshold"] == 0.75 and result["params"]["detector"] == "nudenet 3.4.2"


def test_provenance_params_keep_their_names_and_order(tmp_path: Path) -> None:
    from recare_cli.stages.score import ScoreOptions, score_params

    names = ["source", "metrics", "concept", "labels", "template", "target", "label_field", "top_k",
             "nudity_threshold", "prompt", "clip", "device", "dtype", "batch_size", "seed"]
    opts = ScoreOptions(source="m.jsonl", metrics=["care"], concept="person", per_image=tmp_path / "p.jsonl",
                        fail_under=("care=0.5",), output="s.json")
    params = score_params(opts)
    assert list(params) == names
    assert params["labels"] == "coco80"  # no label file: the label set's name
    assert score_params(ScoreOptions(label_set="care-reference"))["labels"] == "care-reference"
    named = ScoreOptions(labels=["dog", "cat"], labels_source="labels.txt")
    assert score_params(named)["labels"] == "labels.txt" and named.label_list() == ["dog", "cat"]
    assert ScoreOptions().nudity_threshold == scores.NUDENET_THRESHOLD


def test_help_examples_are_whole_lines_at_80_columns() -> None:
    """rich wraps help text to the terminal: an example longer than a line would break mid-command."""
    import os
    import subprocess
    import sys

    from recare_cli.cli import score as score_cmd

    env = {**os.environ, "COLUMNS": "80", "TERMINAL_WIDTH": "80", "NO_COLOR": "1", "TERM": "dumb"}
    env.pop("FORCE_COLOR", None)
    done = subprocess.run([sys.executable, "-m", "recare_cli", "score", "--help"], env=env, capture_output=True,
                          text=True, check=True)
    rendered = [line.strip() for line in done.stdout.splitlines()]
    examples = [line.strip() for line in score_cmd.HELP.split("Examples:")[1].splitlines() if line.strip()]
    assert len(examples) >= 2
    for example in examples:
        assert example in rendered, f"{example!r} is not one line of the rendered help"
    assert all(len(line) <= 80 for line in done.stdout.splitlines())


def test_the_nudenet_install_hint_names_the_extras_requirement(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hint names the nudity extra's requirement as pyproject declares it, not a copy of it."""
    import sys
    from importlib import metadata

    from recare_cli.errors import ModelUnavailableError
    from recare_cli.stages.metrics import nudity

    tomllib = pytest.importorskip("tomllib")
    try:
        metadata.requires("recare")
    except metadata.PackageNotFoundError:
        pytest.skip("recare's package metadata is not installed")
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text("utf-8"))
    (requirement,) = pyproject["project"]["optional-dependencies"]["nudity"]
    monkeypatch.setitem(sys.modules, "nudenet", None)  # as if the extra were not installed
    with pytest.raises(ModelUnavailableError) as err:
        nudity.load_nudenet()
    assert f"pip install 'recare[nudity]' or pip install '{requirement}'" in str(err.value)
    assert nudity.extra_requirement() == requirement
