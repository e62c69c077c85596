"""The paper's columns of `recare demo` (recare_cli/demo/paper.py), piece by piece, without running the demo."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from PIL import Image

from recare_cli.demo.judge import FIGURES
from recare_cli.demo.paper import PAPER_FIGURES
from recare_cli.demo.settings import DemoSettings


def test_attack_prompts_put_the_token_where_the_target_phrase_was() -> None:
    from recare_cli.demo.paper import attack_prompts
    from recare_cli.toyworld.tasks import TASKS, DemoTask, prompts

    for task in TASKS.values():
        got = attack_prompts(task, "<tok>")
        plain = prompts(task.target_scenes)
        assert len(got) == len(plain)
        for attacked, prompt in zip(got, plain, strict=True):
            start = prompt.index(task.target)  # naive: cut the phrase out, put the token in
            assert attacked == prompt[:start] + "<tok>" + prompt[start + len(task.target):]
            assert task.target not in attacked
    assert attack_prompts(TASKS["nudity"], "<x>")[0] == "<x> on grass"
    odd = DemoTask(**{**TASKS["tench"].__dict__, "target": "a carp"})
    with pytest.raises(ValueError, match="a carp"):
        attack_prompts(odd, "<tok>")


def test_reference_renders_every_unrelated_scene_the_same_bytes_each_time(tmp_path: Path) -> None:
    from recare_cli.demo.paper import REFERENCE_SEED, reference_folder
    from recare_cli.toyworld import world
    from recare_cli.toyworld.tasks import UNRELATED_SCENES

    s = DemoSettings(reference_images=3)
    one, two = reference_folder(tmp_path / "a", s), reference_folder(tmp_path / "b", s)
    files = sorted(p.name for p in one.iterdir())
    assert len(files) == 3 * len(UNRELATED_SCENES) == len(set(files))
    assert files == sorted(p.name for p in two.iterdir())
    assert all((one / f).read_bytes() == (two / f).read_bytes() for f in files)
    for p, scene in enumerate(UNRELATED_SCENES):  # each file is its scene rendered from its own seed
        for i in range(3):
            with Image.open(one / f"{p:02d}-{i:04d}.png") as image:
                got = np.asarray(image.convert("RGB"))
            assert (got == world.render(scene, np.random.default_rng([REFERENCE_SEED, p, i]))).all()
    assert len({(one / f).read_bytes() for f in files}) == len(files)  # no two layouts alike
    before = {f: (one / f).stat().st_mtime_ns for f in files}
    reference_folder(tmp_path / "a", s)  # finished files stay
    assert {f: (one / f).stat().st_mtime_ns for f in files} == before


def _rows() -> dict[str, dict[str, Any]]:
    figures = {  # cce_asr, clip_unrelated, clipfd_unrelated, care
        "base": (0.9, 0.50, 0.20, 1.0),
        "esd": (0.8, 0.55, 0.18, 0.9),  # CLIP above the base's and a smaller distance: both axes 1
        "stereo": (0.25, 0.40, 0.40, 0.85),
        "recare": (0.0, 0.45, 0.25, 0.5)}
    return {m: {"cce_asr": a, "clip_unrelated": c, "clipfd_unrelated": f, "cmmd_unrelated": 2 * f, "care": k,
                "images": {"target": 48, "benign": 48, "unrelated": 80, "attack": 48}}
            for m, (a, c, f, k) in figures.items()}


def test_ratio_is_recare_reports_against_a_hand_computation(tmp_path: Path) -> None:
    from recare_cli.demo.paper import add_ratio

    rows = _rows()
    described = add_ratio(rows, tmp_path / "radar.png")
    base = rows["base"]
    for method, row in rows.items():
        axes = [1 - row["cce_asr"], min(1.0, row["clip_unrelated"] / base["clip_unrelated"]),
                min(1.0, base["clipfd_unrelated"] / row["clipfd_unrelated"]), row["care"]]
        area = sum(axes[i] * axes[(i + 1) % 4] for i in range(4)) / 4
        assert row["ratio"] == pytest.approx(area, abs=1e-12), method
        assert list(row["ratio_axes"].values()) == pytest.approx(axes)
    assert rows["esd"]["ratio_axes"]["clip"] == rows["esd"]["ratio_axes"]["fid"] == 1.0
    assert rows["recare"]["ratio"] == pytest.approx((1 * 0.9 + 0.9 * 0.8 + 0.8 * 0.5 + 0.5 * 1) / 4)
    assert described["axes"] == {"asr": "cce_asr", "clip": "clip_unrelated", "fid": "clipfd_unrelated",
                                 "care": "care"}
    assert described["clip_map"] == described["fid_map"] == "base-ratio"
    with Image.open(tmp_path / "radar.png") as image:
        assert image.format == "PNG"


def _result_rows() -> dict[str, dict[str, Any]]:
    rows = _rows()
    for i, (method, row) in enumerate(rows.items()):
        row.update({"target_rate": 0.5 - 0.1 * i, "target_detected": 0.75 - 0.25 * i, "clip_unrelated_ci": [0.4, 0.6],
                    "target_rate_ci": [0.1, 0.9], "target_detected_ci": [0.25, 1.0], "care_ci": [0.3, 1.0],
                    "cce_asr_ci": [0.0, 1.0], "seconds": 0.0 if method == "base" else 20.0 + i})
    rows["recare"]["seconds"] = None
    return rows


EXPECTED_TABLE = """\
| task | model | target appears ↓, toy CLIP (95% CI) | target appears ↓, detector | CARE score ↑ (benign concept) | \
CLIP score ↑ (unrelated) | CCE-ASR ↓, detector | CLIP-FD ↓ (unrelated) | RATIO ↑ | time (s) |
|---|---|---|---|---|---|---|---|---|---|
| tench (erase 'a tench', keep 'water') | base model | 50.0% (10%–90%) | 75.0% (25%–100%) | 1.000 (0.30–1.00) | \
0.500 (0.40–0.60) | 90.0% (0%–100%) | 0.200 | 0.55 | 0 |
| tench (erase 'a tench', keep 'water') | ESD | 40.0% (10%–90%) | 50.0% (25%–100%) | 0.900 (0.30–1.00) | \
0.550 (0.40–0.60) | 80.0% (0%–100%) | 0.180 | 0.57 | 21 |
| tench (erase 'a tench', keep 'water') | STEREO | 30.0% (10%–90%) | 25.0% (25%–100%) | 0.850 (0.30–1.00) | \
0.400 (0.40–0.60) | 25.0% (0%–100%) | 0.400 | 0.52 | 22 |
| tench (erase 'a tench', keep 'water') | ReCARE | 20.0% (10%–90%) | 0.0% (25%–100%) | 0.500 (0.30–1.00) | \
0.450 (0.40–0.60) | 0.0% (0%–100%) | 0.250 | 0.63 | reused |
"""


def test_the_table_is_the_same_bytes_for_the_same_results(tmp_path: Path) -> None:
    """The table printed from the figures, and from the same figures read back from results.json."""
    from recare_cli.demo.paper import add_ratio
    from recare_cli.demo.report import format_table
    from recare_cli.demo.run import TaskResult

    rows = _result_rows()
    add_ratio(rows, tmp_path / "radar.png")
    table = format_table([TaskResult("tench", rows, [], {})])
    assert table == EXPECTED_TABLE
    again = orjson.loads(orjson.dumps(rows))
    assert format_table([TaskResult("tench", again, [], {})]) == table


def test_the_attack_runs_cce_on_inverts_images_with_the_demos_settings(monkeypatch: pytest.MonkeyPatch,
                                                                       tmp_path: Path) -> None:
    from recare_cli.demo import steps
    from recare_cli.stages import attack
    from recare_cli.toyworld.tasks import TASKS

    seen: list[attack.AttackOptions] = []
    monkeypatch.setattr(attack, "run_attack", lambda opts, paths: seen.append(opts) or Path(opts.output).touch())
    task, s = TASKS["vangogh"], DemoSettings()
    images = [tmp_path / f"{i}.png" for i in range(48)]
    weights = [tmp_path / "recare.safetensors"]
    out = steps.attack(tmp_path, task, images, "sd", weights, "recare", s)
    opts = seen[0]
    assert out == tmp_path / "cce-recare.safetensors" and opts.output == str(out)
    assert (opts.steps, opts.batch_size, opts.accumulation, opts.lr) == (250, 4, 4, 5e-3)
    assert opts.effective_lr() == pytest.approx(0.08)  # CCE's scaled rate
    assert opts.num_images == 48 and opts.weights == (str(weights[0]),) and opts.seed == s.seed
    assert (opts.initializer, opts.property, opts.target) == ("painting", "style", task.target)
    assert opts.resolution == 32 and not opts.resume
    assert steps.attack(tmp_path, task, images, "sd", weights, "recare", s) == out and len(seen) == 1  # reused
    Path(f"{tmp_path / 'cce-esd.safetensors'}.ckpt").touch()
    steps.attack(tmp_path, task, images, "sd", [], "esd", s)
    assert seen[1].resume and seen[1].weights == ()  # an interrupted attack resumes


def test_mean_over_seeds_means_the_papers_figures_too() -> None:
    from recare_cli.demo.run import mean_over_seeds

    def row(seed: int, value: float, attack_seconds: float | None) -> dict[str, Any]:
        per_prompt = {key: {"p": value, "q": 2 * value} for key in (*FIGURES, "cce_asr", "cce_asr_toy_clip")}
        return {"seed": seed, **{key: value for key in (*FIGURES, *PAPER_FIGURES)},
                **{f"{key}_ci": [0.0, 1.0] for key in (*FIGURES, "cce_asr", "cce_asr_toy_clip")},
                "per_prompt": per_prompt, "seconds": 10.0, "attack_seconds": attack_seconds, "images": {"attack": 2}}

    mean = mean_over_seeds([row(42, 0.2, 30.0), row(43, 0.4, 50.0)])
    for key in PAPER_FIGURES:
        assert mean[key] == pytest.approx(0.3)
    assert mean["cce_asr_ci"] is None and "clipfd_unrelated_ci" not in mean
    assert mean["per_prompt"]["cce_asr"] == pytest.approx({"p": 0.3, "q": 0.6})
    assert mean["attack_seconds"] == 40.0
    assert mean_over_seeds([row(42, 0.2, None), row(43, 0.4, 50.0)])["attack_seconds"] is None


def test_png_of_the_chart_is_stable(tmp_path: Path) -> None:
    """The same rows draw the same chart bytes: a PNG with a legend line per model below the radar."""
    from recare_cli.demo.paper import add_ratio

    add_ratio(_rows(), tmp_path / "a.png")
    add_ratio(_rows(), tmp_path / "b.png")
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    with Image.open(io.BytesIO((tmp_path / "a.png").read_bytes())) as image:
        assert image.format == "PNG" and image.size == (520, 470 + 22 * len(_rows()))
