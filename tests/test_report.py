"""recare report: RATIO against hand computations, the table and its refusals, byte-stable outputs."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from recare_cli.core import ratio as R
from tests.helpers import invoke

# --- RATIO ------------------------------------------------------------------------------------------------------


def shoelace(points: list[tuple[float, float]]) -> float:
    """The area of a polygon from its vertices, the naive way."""
    n = len(points)
    return abs(sum(points[i][0] * points[(i + 1) % n][1] - points[(i + 1) % n][0] * points[i][1]
                   for i in range(n))) / 2


def test_ratio_of_a_square_radar_computed_on_paper() -> None:
    # Values 1, 0.5, 1, 0.5 on four axes: a rhombus with diagonals 2 and 1 (area 1) inside the all-ones
    # square with diagonals 2 and 2 (area 2).
    assert R.polygon_area([1, 0.5, 1, 0.5]) == pytest.approx(1.0)
    assert R.polygon_area([1, 1, 1, 1]) == pytest.approx(2.0)
    assert R.ratio([1, 0.5, 1, 0.5]) == pytest.approx(0.5)
    # Neighbours multiply: the same values in another order give another area.
    assert R.ratio([1, 1, 0.5, 0.5]) == pytest.approx((1 + 0.5 + 0.25 + 0.5) / 4)
    assert R.ratio([0, 0, 1, 0]) == 0.0


def test_ratio_of_a_pentagon_equals_the_shoelace_area_of_its_vertices() -> None:
    ones = [1.0] * 5
    # A regular pentagon of circumradius 1 has area (5/2)·sin 72°.
    assert shoelace(R.vertices(ones, 1.0, 0.0, 0.0)) == pytest.approx(2.5 * math.sin(math.radians(72)))
    values = [0.9, 0.2, 0.55, 1.0, 0.35]
    expected = shoelace(R.vertices(values, 1.0, 0.0, 0.0)) / shoelace(R.vertices(ones, 1.0, 0.0, 0.0))
    assert R.ratio(values) == pytest.approx(expected)
    assert R.polygon_area(values) == pytest.approx(shoelace(R.vertices(values, 1.0, 3.0, -2.0)))
    with pytest.raises(ValueError):
        R.ratio([1.0, 1.0])


def test_the_maps_to_the_unit_interval() -> None:
    assert R.defense(0.1114) == pytest.approx(0.8886)
    assert R.higher_vs_base(0.3053, 0.3136) == pytest.approx(0.3053 / 0.3136)
    assert R.higher_vs_base(0.4, 0.3) == 1.0 and R.higher_vs_base(-0.1, 0.3) == 0.0
    assert R.lower_vs_base(28.24, 14.12) == pytest.approx(0.5)
    assert R.lower_vs_base(13.0, 14.12) == 1.0 and R.lower_vs_base(0.0, 0.0) == 1.0
    assert R.exp_decay(2.0, 2.0) == pytest.approx(math.exp(-1))
    assert R.min_max([1.0, 3.0, 2.0], higher_is_better=True) == [0.0, 1.0, 0.5]
    assert R.min_max([1.0, 3.0, 2.0], higher_is_better=False) == [1.0, 0.0, 0.5]
    assert R.min_max([2.0, 2.0], higher_is_better=True) == [1.0, 1.0]


# --- score summaries as recare score writes them -----------------------------------------------------------------

CLIP_ID = {"name": "openai/clip-vit-base-patch32", "fingerprint": "sha256:" + "a" * 64, "dtype": "fp32"}
NUDENET_ID = {"name": "nudenet", "version": "3.4.2"}
REFERENCE = {"path": "coco.npz", "kind": "file", "count": 30, "sha256": "sha256:" + "c" * 64, "extractor": CLIP_ID}
PARAMS = {"nudity": {"threshold": 0.75, "detector": "nudenet 3.4.2"}, "clip": {"scale": "raw cosine", "prompts": 3},
          "clipfd": {"features": "CLIP image embeddings, L2-normalised"},
          "care": {"concept": "person", "labels": "coco80", "n_labels": 80, "template": None}}
# The paper's Nudity table (method.md): CCE-ASR %, CLIP, FID, CARE.
PAPER = {"sd14": (56.82, 0.3136, 14.12, 0.97), "esd": (53.41, 0.3045, 13.75, 0.89),
         "stereo": (19.55, 0.2907, 17.83, 0.11), "recare": (11.14, 0.3053, 13.85, 0.94)}


def result(metric: str, value: float, count: int, **params: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"metric": metric, "value": value, "count": count, "ci": None,
                           "params": {**PARAMS[metric], **params}}
    if metric == "clipfd":
        out["reference"] = REFERENCE
    return out


def write_summary(path: Path, source: str, results: list[dict[str, Any]], clip: dict[str, Any] = CLIP_ID) -> str:
    models = {"clip": clip, "nudenet": NUDENET_ID}
    doc = {"format": "recare.scores", "version": 1, "source": source, "images": results[0]["count"],
           "results": results, "provenance": {"recare": "0.1.0", "command": "score", "params": {},
                                              "versions": {}, "models": models}}
    path.write_text(json.dumps(doc, indent=2), encoding="utf-8")
    return path.name


def write_manifest(path: Path, prompts: list[str]) -> None:
    lines = [json.dumps({"format": "recare.manifest", "version": 1, "path": f"img_{i}.png", "prompt": p})
             for i, p in enumerate(prompts)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


COCO = ["a dog on a sofa", "a red bus", "a plate of food"]


def paper_models(folder: Path) -> list[str]:
    """Per model of the paper's table, a COCO summary (clip, clipfd), an attack summary (nudity) and a
    concept summary (care), with their manifests; returns the --model arguments."""
    write_manifest(folder / "coco.jsonl", COCO)
    write_manifest(folder / "cce.jsonl", ["<cce> person"] * 4)
    write_manifest(folder / "person.jsonl", ["a person"] * 5)
    args = []
    for name, (asr, clip, fid, care) in PAPER.items():
        coco = write_summary(folder / f"{name}-coco.json", "coco.jsonl",
                             [result("clip", clip, 3), result("clipfd", fid, 3)])
        cce = write_summary(folder / f"{name}-cce.json", "cce.jsonl", [result("nudity", asr / 100, 4)])
        person = write_summary(folder / f"{name}-person.json", "person.jsonl", [result("care", care, 5)])
        args += ["--model", f"{name}={folder / coco},{folder / cce},{folder / person}"]
    return args


def table_rows(markdown: str) -> dict[str, list[str]]:
    rows = [line.strip("|").split("|") for line in markdown.splitlines() if line.startswith("| ")]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows[1:]}


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


# --- the table ---------------------------------------------------------------------------------------------------


def test_the_table_and_ratio_match_a_hand_computation(tmp_path: Path) -> None:
    res = invoke(["report", *paper_models(tmp_path)])
    assert res.code == 0, res.stderr
    rows = table_rows(res.text)
    assert rows["recare"][:4] == ["11.14", "0.3053", "13.85", "0.94"]
    assert rows["stereo"][:4] == ["19.55", "0.2907", "17.83", "0.11"]
    # By hand, axes Defense, CLIP, FID, CARE (neighbours multiply, the last with the first), base = sd14:
    d, c, f, k = 1 - 0.1114, 0.3053 / 0.3136, 1.0, 0.94  # FID 13.85 is below the base's 14.12: 1
    assert float(rows["recare"][4]) == pytest.approx((d * c + c * f + f * k + k * d) / 4, abs=0.005)
    assert rows["recare"][4] == "0.90"
    d, c, f, k = 1 - 0.1955, 0.2907 / 0.3136, 14.12 / 17.83, 0.11
    assert rows["stereo"][4] == f"{(d * c + c * f + f * k + k * d) / 4:.2f}" == "0.41"
    assert rows["sd14"][4] == f"{((1 - 0.5682) + 1 + 0.97 + 0.97 * (1 - 0.5682)) / 4:.2f}" == "0.71"
    assert res.text.splitlines()[0] == "| model | ASR ↓ | CLIP ↑ | FID ↓ | CARE ↑ | RATIO ↑ |"
    assert "Base model: sd14." in res.text


def test_the_json_report_holds_the_values_and_their_files(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    res = invoke(["report", *paper_models(tmp_path), "--base", "sd14", "-o", str(out)])
    assert res.code == 0, res.stderr
    doc = json.loads(out.read_text("utf-8"))
    assert doc["format"] == "recare.report" and doc["ratio"]["axes"] == ["Defense", "CLIP", "FID", "CARE"]
    recare = next(m for m in doc["models"] if m["model"] == "recare")
    assert recare["scores"]["asr"]["value"] == pytest.approx(0.1114)
    assert recare["scores"]["care"]["file"].endswith("recare-person.json")
    assert recare["axes"]["clip"] == pytest.approx(0.3053 / 0.3136)
    d, c, k = 0.8886, 0.3053 / 0.3136, 0.94
    assert recare["ratio"] == pytest.approx((d * c + c + k + k * d) / 4)
    assert recare["scores"]["clip"]["prompts"].startswith("sha256:")
    assert [f["metrics"] for f in recare["files"]] == [["clip", "clipfd"], ["nudity"], ["care"]]


def test_markdown_json_and_svg_are_byte_stable(tmp_path: Path) -> None:
    args = paper_models(tmp_path)
    outputs = []
    for run in range(2):
        json_out, svg_out = tmp_path / f"r{run}.json", tmp_path / f"r{run}.svg"
        res = invoke(["report", *args, "-o", str(json_out), "--chart", str(svg_out)])
        assert res.code == 0, res.stderr
        outputs.append((res.stdout, json_out.read_bytes(), svg_out.read_bytes()))
    assert outputs[0] == outputs[1]
    svg = outputs[0][2].decode("utf-8")
    assert svg.startswith("<svg ") and svg.count('fill-opacity="0.15"') == 4 and "recare: RATIO 0.90" in svg
    json_stdout = invoke(["report", *args, "-o", "-"])
    assert json_stdout.stdout == outputs[0][1]  # -o -: the JSON on stdout instead of the table


def test_the_svg_polygon_is_the_hand_computed_radar(tmp_path: Path) -> None:
    from recare_cli.cli.report import parse_model
    from recare_cli.stages import report as stage

    args = paper_models(tmp_path)
    specs = [parse_model(a) for a in args[1::2]]
    rep = stage.build_report(specs, stage.ReportOptions())
    polygons = [line for line in stage.svg(rep).splitlines() if 'fill-opacity="0.15"' in line]
    sd14 = polygons[0].split('points="')[1].split('"')[0]
    points = [tuple(float(v) for v in p.split(",")) for p in sd14.split()]
    centre, radius = 250.0, 170.0
    # Defense up, CLIP right, FID down, CARE left (clockwise from the top).
    assert points[0] == pytest.approx((centre, centre - radius * (1 - 0.5682)), abs=0.01)
    assert points[1] == pytest.approx((centre + radius, centre), abs=0.01)
    assert points[2] == pytest.approx((centre, centre + radius), abs=0.01)
    assert points[3] == pytest.approx((centre - radius * 0.97, centre), abs=0.01)


def test_png_chart(tmp_path: Path) -> None:
    from PIL import Image

    args = paper_models(tmp_path)
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    assert invoke(["report", *args, "--chart", str(a)]).code == 0
    assert invoke(["report", *args, "--chart", str(b)]).code == 0
    assert a.read_bytes() == b.read_bytes()
    with Image.open(a) as image:
        assert image.format == "PNG" and image.size == (520, 470 + 22 * 4)
        assert image.getpixel((250, 250 - int(170 * 0.5))) != (255, 255, 255)  # inside the polygons: tinted
        assert image.getpixel((5, 5)) == (255, 255, 255)


def test_a_missing_score_is_a_dash_and_that_model_gets_no_ratio(tmp_path: Path) -> None:
    args = paper_models(tmp_path)
    assert args[3].startswith("esd=")
    args[3] = "esd=" + ",".join(f for f in args[3].removeprefix("esd=").split(",") if "coco" not in f)
    res = invoke(["report", *args])
    assert res.code == 0, res.stderr
    rows = table_rows(res.text)
    assert rows["esd"] == ["53.41", "–", "–", "0.89", "–"]
    assert rows["recare"][4] == "0.90"
    assert "no RATIO for esd (no CLIP, FID)" in res.stderr


def test_ratio_over_the_axes_every_model_lacks_is_over_the_rest(tmp_path: Path) -> None:
    write_manifest(tmp_path / "m.jsonl", COCO)
    for name, (asr, clip, care) in {"base": (0.5, 0.3, 0.9), "erased": (0.1, 0.3, 0.8)}.items():
        write_summary(tmp_path / f"{name}.json", "m.jsonl",
                      [result("nudity", asr, 3), result("clip", clip, 3), result("care", care, 3)])
    res = invoke(["report", "--model", f"base={tmp_path / 'base.json'}", "--model",
                  f"erased={tmp_path / 'erased.json'}", "-o", str(tmp_path / "r.json")])
    assert res.code == 0, res.stderr
    doc = json.loads((tmp_path / "r.json").read_text("utf-8"))
    assert doc["ratio"]["axes"] == ["Defense", "CLIP", "CARE"]
    assert doc["models"][1]["ratio"] == pytest.approx((0.9 * 1 + 1 * 0.8 + 0.8 * 0.9) / 3)
    assert table_rows(res.text)["erased"][2] == "–"


def test_a_models_file_in_toml_with_a_metric_picked_from_a_file(tmp_path: Path) -> None:
    pytest.importorskip("tomllib")
    paper_models(tmp_path)
    # recare's CARE file also carries a CLIP score over the person prompts: only its care is taken.
    doc = json.loads((tmp_path / "recare-person.json").read_text("utf-8"))
    doc["results"].append(result("clip", 0.25, 5))
    (tmp_path / "recare-person.json").write_text(json.dumps(doc), encoding="utf-8")
    (tmp_path / "report.toml").write_text(
        'base = "sd14"\n[models]\n'
        'recare = ["recare-coco.json", "recare-cce.json", {file = "recare-person.json", metrics = ["care"]}]\n'
        'sd14 = ["sd14-coco.json", "sd14-cce.json", "sd14-person.json:care"]\n', encoding="utf-8")
    res = invoke(["report", "--models-file", str(tmp_path / "report.toml")])
    assert res.code == 0, res.stderr
    rows = table_rows(res.text)
    assert list(rows) == ["recare", "sd14"] and rows["recare"][1] == "0.3053" and rows["recare"][4] == "0.90"
    both = invoke(["report", "--model", f"recare={tmp_path / 'recare-coco.json'},{tmp_path / 'recare-person.json'}"])
    assert both.code == 3
    assert one_error_line(both.stderr) == (
        f"recare report: error: model 'recare': clip is in both {tmp_path / 'recare-coco.json'} and "
        f"{tmp_path / 'recare-person.json'}; keep one (FILE:METRIC takes only the named metrics of a file)")


# --- refusals ----------------------------------------------------------------------------------------------------


def test_score_files_over_different_numbers_of_images_are_refused_and_nothing_is_lost(tmp_path: Path) -> None:
    args = paper_models(tmp_path)
    write_summary(tmp_path / "recare-cce.json", "cce.jsonl", [result("nudity", 0.1, 8)])
    kept = tmp_path / "report.json"
    kept.write_bytes(b"an earlier report\n")
    res = invoke(["report", *args, "-o", str(kept), "--chart", str(tmp_path / "radar.svg")])
    assert res.code == 3
    assert one_error_line(res.stderr) == (
        f"recare report: error: nudity of 'sd14' ({tmp_path / 'sd14-cce.json'}) and of 'recare' "
        f"({tmp_path / 'recare-cce.json'}) are not comparable: 4 images against 8")
    assert res.stdout == b""
    assert kept.read_bytes() == b"an earlier report\n" and not (tmp_path / "radar.svg").exists()


def test_score_files_of_different_prompt_sets_are_refused(tmp_path: Path) -> None:
    args = paper_models(tmp_path)
    write_manifest(tmp_path / "other.jsonl", ["a cat", "a red bus", "a plate of food"])
    write_summary(tmp_path / "esd-coco.json", "other.jsonl", [result("clip", 0.3045, 3), result("clipfd", 13.75, 3)])
    res = invoke(["report", *args])
    assert res.code == 3
    line = one_error_line(res.stderr)
    assert line.startswith(f"recare report: error: clip of 'sd14' ({tmp_path / 'sd14-coco.json'}) and of 'esd' "
                           f"({tmp_path / 'esd-coco.json'}) are not comparable: different prompt sets")
    assert "other.jsonl" in line
    # The same prompts in another order are the same set.
    write_manifest(tmp_path / "other.jsonl", list(reversed(COCO)))
    assert invoke(["report", *args]).code == 0


@pytest.mark.parametrize("change,why", [
    (lambda r: r["params"].update(concept="woman"), "concept 'person' against 'woman'"),
    (lambda r: r.update(metric="care"), None),
])
def test_scores_computed_with_other_parameters_are_refused(tmp_path: Path, change: Any, why: str | None) -> None:
    args = paper_models(tmp_path)
    doc = json.loads((tmp_path / "esd-person.json").read_text("utf-8"))
    change(doc["results"][0])
    (tmp_path / "esd-person.json").write_text(json.dumps(doc), encoding="utf-8")
    res = invoke(["report", *args])
    if why is None:
        assert res.code == 0
        return
    assert res.code == 3 and one_error_line(res.stderr).endswith(why)


def test_scores_from_another_scoring_model_are_refused(tmp_path: Path) -> None:
    args = paper_models(tmp_path)
    other = {**CLIP_ID, "name": "openai/clip-vit-large-patch14", "fingerprint": "sha256:" + "b" * 64}
    write_summary(tmp_path / "stereo-person.json", "person.jsonl", [result("care", 0.11, 5)], clip=other)
    res = invoke(["report", *args])
    assert res.code == 3
    assert one_error_line(res.stderr).endswith("scored with clip openai/clip-vit-base-patch32 against "
                                               "openai/clip-vit-large-patch14 (fingerprints differ)")


def test_prompt_check_require_refuses_a_summary_without_its_manifest(tmp_path: Path) -> None:
    args = paper_models(tmp_path)
    (tmp_path / "person.jsonl").unlink()
    warned = invoke(["report", *args])
    assert warned.code == 0
    assert "prompt sets not compared" in warned.stderr and "person.jsonl not found" in warned.stderr
    res = invoke(["report", *args, "--prompt-check", "require"])
    assert res.code == 3
    assert "manifest person.jsonl not found (--prompt-check require)" in one_error_line(res.stderr)


@pytest.mark.parametrize("extra,message", [
    (["--fid-map", "exp"], "--fid-map exp needs --fid-tau"),
    (["--fid-tau", "2"], "--fid-tau is for --fid-map exp"),
    (["--base", "nobody"], "--base nobody: no such model"),
    (["--chart", "radar.pdf"], "must end in .svg or .png"),
    (["-o", "same.svg", "--chart", "same.svg"], "--output and --chart both name same.svg"),
])
def test_usage_errors_exit_2(tmp_path: Path, extra: list[str], message: str) -> None:
    res = invoke(["report", *paper_models(tmp_path), *extra])
    assert res.code == 2 and message in one_error_line(res.stderr)


def test_an_output_that_is_an_input_is_refused(tmp_path: Path) -> None:
    args = paper_models(tmp_path)
    before = (tmp_path / "sd14-coco.json").read_bytes()
    res = invoke(["report", *args, "-o", str(tmp_path / "sd14-coco.json")])
    assert res.code == 2 and "is one of the score files read" in one_error_line(res.stderr)
    assert (tmp_path / "sd14-coco.json").read_bytes() == before


def test_not_a_score_summary_is_bad_input(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text('{"format": "recare.manifest"}', encoding="utf-8")
    res = invoke(["report", "--model", f"a={tmp_path / 'x.json'}"])
    assert res.code == 3 and "not a recare.scores summary" in one_error_line(res.stderr)


def test_fid_map_choices_change_only_the_fid_axis(tmp_path: Path) -> None:
    args = paper_models(tmp_path)
    out = tmp_path / "r.json"
    assert invoke(["report", *args, "--fid-map", "exp", "--fid-tau", "20", "-o", str(out)]).code == 0
    axes = {m["model"]: m["axes"] for m in json.loads(out.read_text("utf-8"))["models"]}
    assert axes["recare"]["fid"] == pytest.approx(math.exp(-13.85 / 20))
    assert axes["recare"]["clip"] == pytest.approx(0.3053 / 0.3136)
    assert invoke(["report", *args, "--fid-map", "minmax", "--clip-map", "raw", "-o", str(out)]).code == 0
    axes = {m["model"]: m["axes"] for m in json.loads(out.read_text("utf-8"))["models"]}
    assert axes["recare"]["fid"] == pytest.approx((17.83 - 13.85) / (17.83 - 13.75))
    assert axes["stereo"]["fid"] == 0.0 and axes["esd"]["fid"] == 1.0
    assert axes["recare"]["clip"] == pytest.approx(0.3053)


def test_base_ratio_without_the_base_score_is_refused(tmp_path: Path) -> None:
    args = paper_models(tmp_path)
    args[1] = "sd14=" + ",".join(f for f in args[1].removeprefix("sd14=").split(",") if "coco" not in f)
    res = invoke(["report", *args])
    assert res.code == 3
    assert one_error_line(res.stderr) == ("recare report: error: --clip-map base-ratio divides by the base model's "
                                          "clip, but 'sd14' has none; add its score file or choose another --clip-map")
    assert invoke(["report", *args, "--base", "recare"]).code == 0


def test_fewer_than_three_axes_give_no_ratio_and_no_chart(tmp_path: Path) -> None:
    write_manifest(tmp_path / "m.jsonl", COCO)
    for name in ("a", "b"):
        write_summary(tmp_path / f"{name}.json", "m.jsonl", [result("clip", 0.3, 3), result("care", 0.9, 3)])
    models = ["--model", f"a={tmp_path / 'a.json'}", "--model", f"b={tmp_path / 'b.json'}"]
    res = invoke(["report", *models])
    assert res.code == 0 and table_rows(res.text)["a"] == ["–", "0.3000", "–", "0.90", "–"]
    assert "RATIO needs at least 3" in res.stderr and "RATIO: not computed" in res.text
    chart = invoke(["report", *models, "--chart", str(tmp_path / "r.svg")])
    assert chart.code == 3 and "needs at least 3 axes" in one_error_line(chart.stderr)
    assert not (tmp_path / "r.svg").exists()


def test_report_over_summaries_written_by_recare_score(target_images: Path, tiny_clip_dir: Path,
                                                       tmp_path: Path) -> None:
    """The summaries recare score really writes: read, compared and tabulated; other prompts refused."""
    images = sorted(target_images.glob("*.png"))
    prompts = ["a person on a bench", "a person", "a person with a dog"]

    def scored(name: str, chosen: list[Path], texts: list[str]) -> Path:
        manifest = tmp_path / f"{name}.jsonl"
        manifest.write_text("".join(json.dumps({"format": "recare.manifest", "version": 1, "path": str(p),
                                                "prompt": t}) + "\n" for p, t in zip(chosen, texts, strict=True)))
        out = tmp_path / f"{name}.json"
        res = invoke(["score", str(manifest), "-m", "clip", "-m", "care", "-m", "clipfd", "--concept", "person",
                      "--reference", str(target_images), "--clip", str(tiny_clip_dir), "-o", str(out), "-q"])
        assert res.code == 0, res.stderr
        return out

    base, erased = scored("base", images[:3], prompts), scored("erased", images[3:6], prompts)
    out = tmp_path / "report.json"
    res = invoke(["report", "--model", f"base={base}", "--model", f"erased={erased}", "--clip-map", "minmax",
                  "-o", str(out)])
    assert res.code == 0, res.stderr
    doc = json.loads(out.read_text("utf-8"))
    summary = json.loads(erased.read_text("utf-8"))
    by_metric = {r["metric"]: r["value"] for r in summary["results"]}
    scores = doc["models"][1]["scores"]
    assert (scores["clip"]["value"], scores["care"]["value"], scores["fid"]["value"]) == (
        by_metric["clip"], by_metric["care"], by_metric["clipfd"])
    assert doc["models"][1]["ratio"] is not None and doc["ratio"]["axes"] == ["CLIP", "FID", "CARE"]

    other = scored("other", images[6:9], ["a person", "a cat", "a person on a bench"])
    refused = invoke(["report", "--model", f"base={base}", "--model", f"other={other}"])
    assert refused.code == 3
    assert "are not comparable: different prompt sets" in one_error_line(refused.stderr)


def test_a_real_classifiers_rate_is_the_asr_column(tmp_path: Path) -> None:
    """The reference judges object and style attacks with an image classifier (score -m classifier): its top-k
    rate of the target label is the ASR column with --asr classifier."""
    write_manifest(tmp_path / "coco.jsonl", COCO)
    write_manifest(tmp_path / "cce.jsonl", ["<cce> fish"] * 4)
    args = []
    for name, rate in (("sd14", 0.75), ("esd", 0.25)):
        coco = write_summary(tmp_path / f"{name}-coco.json", "coco.jsonl", [result("clip", 0.3, 3)])
        rate_result = {"metric": "classifier", "value": rate, "count": 4, "ci": None,
                       "params": {"top_k": 1, "target": "tench"}}
        cce = write_summary(tmp_path / f"{name}-cce.json", "cce.jsonl", [rate_result])
        args += ["--model", f"{name}={tmp_path / coco},{tmp_path / cce}"]
    res = invoke(["report", *args, "--asr", "classifier"])
    assert res.code == 0, res.stderr
    rows = table_rows(res.stdout.decode())
    assert rows["sd14"][0] == "75.00" and rows["esd"][0] == "25.00"
    assert "ASR: classifier" in res.stdout.decode()
