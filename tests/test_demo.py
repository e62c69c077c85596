"""`recare demo` end to end on the shipped toy world (quick settings), run as a real command."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from PIL import Image

from recare_cli.stages.demo import FIGURES
from tests.helpers import invoke, shell

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def offline_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """What the autouse _offline fixture sets, for subprocesses started from this module-scoped fixture
    (module fixtures are set up before function-scoped autouse ones)."""
    return {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "RECARE_CACHE": str(tmp_path_factory.getbasetemp() / "recare-cache")}


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory: pytest.TempPathFactory, offline_env: dict[str, str]) -> tuple[Path, str, str]:
    out = tmp_path_factory.mktemp("demo")
    run = shell("recare demo --quick --task tench --out demo", cwd=out, env=offline_env, timeout=900)
    assert run.returncode == 0, run.stderr
    return out / "demo", run.stdout, run.stderr


def test_demo_runs_every_stage_and_prints_the_comparison(quick_demo: tuple[Path, str, str]) -> None:
    folder, table, _ = quick_demo
    rows = [line for line in table.splitlines() if line.startswith("| tench")]
    assert [row.split("|")[2].strip() for row in rows] == ["base model", "ESD", "STEREO-style", "ReCARE"]
    task = folder / "tench"
    for name in ("target-images.jsonl", "candidates.jsonl", "clustered.jsonl", "care.json", "adv.safetensors",
                 "esd.safetensors", "stereo.safetensors", "recare.safetensors", "results.json", "grid.png"):
        assert (task / name).is_file(), name
    results = orjson.loads((task / "results.json").read_bytes())
    assert results["format"] == "recare.demo" and results["concept"] == "water"
    from recare_cli.toyworld.tasks import TASKS, UNRELATED_SCENES, prompts

    assert results["settings"]["erase_lr"] == TASKS["tench"].erase_lr  # the task's own rate, recorded
    assert results["settings"]["retain_weight"] == TASKS["tench"].retain_weight
    assert results["settings"]["care_template"] == TASKS["tench"].care_template  # the CARE judge's labels
    for method in ("base", "esd", "stereo", "recare"):
        row = results["results"][method]
        assert 0.0 <= row["target_rate"] <= 1.0 and 0.0 <= row["care"] <= 1.0
        assert -1.0 <= row["clip_unrelated"] <= 1.0
        for key in FIGURES:  # each figure lies in its 95% interval
            low, high = row[f"{key}_ci"]
            assert low <= row[key] <= high, (method, key)
        # per prompt, in prompt order; every prompt has as many images, so each figure is its prompts' plain mean
        each = row["per_prompt"]
        assert list(each["target_rate"]) == list(each["target_detected"]) == prompts(TASKS["tench"].target_scenes)
        assert list(each["care"]) == prompts(TASKS["tench"].benign_scenes)
        assert list(each["clip_unrelated"]) == prompts(UNRELATED_SCENES)
        for key in FIGURES:
            assert row[key] == pytest.approx(sum(each[key].values()) / len(each[key])), (method, key)
        # the rates in the table are the ones in results.json: toy CLIP, then detector
        line = next(r for r in rows if r.split("|")[2].strip() == {
            "base": "base model", "esd": "ESD", "stereo": "STEREO-style", "recare": "ReCARE"}[method])
        assert line.split("|")[3].strip().startswith(f"{row['target_rate']:.1%}")
        assert line.split("|")[4].strip().startswith(f"{row['target_detected']:.1%}")
    # the grid: one row per model, same seeds, target prompts then benign prompts, 32 px cells × 3
    with Image.open(task / "grid.png") as grid:
        assert grid.size[1] == 4 * 32 * 3
    # every model was sampled for the same prompts and seeds
    manifests = {m: [orjson.loads(line) for line in (task / "samples" / m / "target.jsonl").read_bytes().splitlines()]
                 for m in ("base", "esd", "stereo", "recare")}
    seeds = {m: [(r["prompt"], r["seed"]) for r in recs] for m, recs in manifests.items()}
    assert seeds["base"] == seeds["esd"] == seeds["stereo"] == seeds["recare"]
    # target images with the model's own sampler (as a user makes them), evaluation samples with the demo's
    mined = orjson.loads((task / "target-images.jsonl").read_bytes().splitlines()[0])
    assert mined["sampling"]["scheduler"] == "default"
    assert {r["sampling"]["scheduler"] for recs in manifests.values() for r in recs} == {"dpm++"}
    assert manifests["recare"][0]["weights"], "erased models are sampled with their weights applied"


def test_rerun_resumes_and_gives_the_same_table(quick_demo: tuple[Path, str, str],
                                                offline_env: dict[str, str]) -> None:
    folder, table, _ = quick_demo
    again = shell(f"recare demo --quick --task tench --out {folder}", cwd=folder, env=offline_env, timeout=900)
    assert again.returncode == 0, again.stderr
    made = [line for line in again.stderr.splitlines() if "to make" in line]
    assert len(made) == 13 and all(line.endswith(", 0 to make") for line in made), made  # 1 + 4 models × 3
    assert "erase:" not in again.stderr  # the trained weights were reused, not retrained
    assert again.stdout == table


def test_other_settings_in_the_same_folder_are_refused(quick_demo: tuple[Path, str, str]) -> None:
    folder, _, _ = quick_demo
    before = (folder / "tench" / "results.json").read_bytes()
    result = invoke(["demo", "--task", "tench", "--out", str(folder)])
    assert result.code == 5
    assert "other settings" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert (folder / "tench" / "results.json").read_bytes() == before


@pytest.mark.parametrize("method", ["esd", "stereo", "recare"])
def test_only_recare_gets_the_tasks_retain_weight(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                   method: str) -> None:
    """Van Gogh's ReCARE erases with λ = 3 (docs/toyworld.md, tuning step 6); the baselines with the default."""
    from recare_cli.stages import demo, erase
    from recare_cli.toyworld.tasks import TASKS

    seen: list[erase.EraseOptions] = []
    monkeypatch.setattr(erase, "run_erase", seen.append)
    task = TASKS["vangogh"]
    demo._erase(tmp_path, task, method, tmp_path / "care.json", tmp_path / "adv.safetensors", "sd",
                demo.DemoSettings(), 42)
    assert task.retain_weight == 3.0 and seen[0].lr == task.erase_lr
    assert seen[0].retain_weight == (3.0 if method == "recare" else 1.0)
    seen.clear()
    demo._erase(tmp_path, task, method, tmp_path / "care.json", tmp_path / "adv.safetensors", "sd",
                demo.DemoSettings(retain_weight=0.5), 43)  # the settings' override wins
    assert seen[0].retain_weight == (0.5 if method == "recare" else 1.0)


def test_unknown_task_is_a_usage_error(tmp_path: Path) -> None:
    result = invoke(["demo", "--task", "unicorn", "--out", str(tmp_path / "d")])
    assert result.code == 2 and "unknown task" in result.stderr
    assert not (tmp_path / "d").exists()


def test_more_erase_seeds_add_erasures_and_report_their_mean(quick_demo: tuple[Path, str, str],
                                                             offline_env: dict[str, str], tmp_path: Path) -> None:
    import shutil

    from safetensors.numpy import load_file

    copy = tmp_path / "demo"
    shutil.copytree(quick_demo[0], copy)
    task = copy / "tench"
    before = orjson.loads((task / "results.json").read_bytes())["results"]
    first = {m: (task / f"{m}.safetensors").stat().st_mtime_ns for m in ("esd", "stereo", "recare")}
    run = shell(f"recare demo --quick --task tench --out {copy} --erase-seeds 2", cwd=tmp_path, env=offline_env,
                timeout=900)
    assert run.returncode == 0, run.stderr
    results = orjson.loads((task / "results.json").read_bytes())
    assert results["settings"]["erase_seeds"] == 2
    assert results["results"]["base"] == before["base"]  # the base model has no erase seed
    table = {line.split("|")[2].strip(): line for line in run.stdout.splitlines() if line.startswith("| tench")}
    assert "erase seeds" not in table["base model"]
    for method, label in (("esd", "ESD"), ("stereo", "STEREO-style"), ("recare", "ReCARE")):
        assert (task / f"{method}.safetensors").stat().st_mtime_ns == first[method]  # seed 42 reused, not retrained
        one, two = load_file(str(task / f"{method}.safetensors")), load_file(str(task / f"{method}-seed43.safetensors"))
        assert one.keys() == two.keys() and any((one[k] != two[k]).any() for k in one)  # the seed was used
        row = results["results"][method]
        assert [r["seed"] for r in row["per_seed"]] == [42, 43]
        for key in FIGURES:
            assert row["per_seed"][0][key] == before[method][key]  # seed 42's figures: the one-seed run's
            assert row[key] == pytest.approx((row["per_seed"][0][key] + row["per_seed"][1][key]) / 2)
            for prompt, value in row["per_prompt"][key].items():
                seeds = [r["per_prompt"][key][prompt] for r in row["per_seed"]]
                assert value == pytest.approx(sum(seeds) / 2), (method, key, prompt)
        low, high = sorted(r["target_rate"] for r in row["per_seed"])
        assert f"{row['target_rate']:.1%} (2 erase seeds: {low:.0%}–{high:.0%})" in table[label]
        assert results["files"][f"{method}-seed43"].endswith(f"{method}-seed43.safetensors")
    assert (task / "samples" / "recare-seed43" / "target.jsonl").is_file()


def test_erase_seeds_below_one_is_a_usage_error(tmp_path: Path) -> None:
    result = invoke(["demo", "--task", "tench", "--erase-seeds", "0", "--out", str(tmp_path / "d")])
    assert result.code == 2 and "--erase-seeds" in result.stderr
    assert not (tmp_path / "d").exists()


def test_per_prompt_means_against_a_naive_loop() -> None:
    from recare_cli.stages.demo import per_prompt

    prompts = ["b", "a", "b", "c", "a", "b"]
    values = [1.0, 0.0, 0.0, 0.5, 1.0, 1.0]
    naive: dict[str, float] = {}
    for p in ["b", "a", "c"]:
        mine = [values[i] for i in range(len(prompts)) if prompts[i] == p]
        naive[p] = sum(mine) / len(mine)
    got = per_prompt(prompts, values)
    assert list(got) == ["b", "a", "c"]  # first-seen order, as the prompts were asked
    assert got == pytest.approx(naive)
    assert per_prompt(["x", "x"], [True, False]) == {"x": 0.5}  # judged booleans are shares
    with pytest.raises(ValueError):
        per_prompt(["x"], [1.0, 2.0])


def test_worst_unrelated_prompt_is_the_largest_drop_from_base() -> None:
    from recare_cli.stages.demo import TaskResult, worst_unrelated

    base = {"car": 0.60, "ball in the sky": 0.63, "house": 0.57}
    erased = {"esd": {"car": 0.61, "ball in the sky": 0.62, "house": 0.56},  # every prompt moved up or 0.01 down
              "stereo": {"car": 0.30, "ball in the sky": 0.70, "house": 0.45},
              "recare": {"car": 0.59, "ball in the sky": 0.21, "house": 0.50}}
    rows = {"base": {"per_prompt": {"clip_unrelated": base}},
            **{m: {"per_prompt": {"clip_unrelated": v}} for m, v in erased.items()}}
    got = worst_unrelated(TaskResult("tench", rows, [], {}))
    for method, values in erased.items():  # naive: sort the drops
        drops = sorted(((base[p] - values[p], p) for p in base), reverse=True)
        prompt = drops[0][1]
        assert got[method] == (prompt, base[prompt], values[prompt])
    assert got["recare"][0] == "ball in the sky" and got["stereo"][0] == "car"


def test_demo_names_the_unrelated_prompt_hit_hardest(quick_demo: tuple[Path, str, str]) -> None:
    folder, _, stderr = quick_demo
    results = orjson.loads((folder / "tench" / "results.json").read_bytes())["results"]
    lines = [line for line in stderr.splitlines() if "hit hardest" in line]
    assert len(lines) == 3  # one per eraser, on stderr (stdout is the table)
    base = results["base"]["per_prompt"]["clip_unrelated"]
    for line, method in zip(lines, ("esd", "stereo", "recare"), strict=True):
        mine = results[method]["per_prompt"]["clip_unrelated"]
        prompt = max(base, key=lambda p: base[p] - mine[p])
        assert f"'{prompt}' CLIP {base[prompt]:.3f} → {mine[prompt]:.3f}" in line


def test_bars_judge_the_target_by_both_judges() -> None:
    from recare_cli.stages.demo import TaskResult, bars

    rows = {"base": {"target_rate": 0.8, "target_detected": 1.0, "care": 0.7},
            "esd": {"target_rate": 0.7, "target_detected": 0.9, "care": 0.6},
            "stereo": {"target_rate": 0.2, "target_detected": 0.3, "care": 0.5},
            "recare": {"target_rate": 0.1, "target_detected": 0.3, "care": 0.63}}
    assert bars(TaskResult("nudity", rows, [], {})) == {
        "target_at_most_20pct_of_base_by_toy_clip": True,  # 0.1 <= 0.16
        "target_at_most_20pct_of_base_by_detector": False,  # 0.3 > 0.2
        "care_at_least_90pct_of_base": True,  # 0.63 >= 0.63
        "care_best_of_erasers": True}
    rows["esd"]["care"] = 0.64
    assert not bars(TaskResult("nudity", rows, [], {}))["care_best_of_erasers"]
