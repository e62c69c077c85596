"""`recare demo` end to end on the shipped toy world (quick settings), run as a real command.

One quick run (``quick_demo``) is shared by every test that reads a finished run; one rerun on the same folder
with a second erase seed (``two_seeds``) covers resuming (every file of the first run reused) and the mean over
erase seeds."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import orjson
import pytest
from PIL import Image

from recare_cli.demo.judge import FIGURES
from recare_cli.demo.paper import ATTACK_FIGURES, PAPER_FIGURES
from recare_cli.demo.settings import LABELS, METHODS, QUICK
from tests.helpers import invoke, shell

slow = pytest.mark.slow  # the tests that run the command as a subprocess

ERASERS = METHODS[1:]


@pytest.fixture(scope="module")
def offline_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """What the autouse _offline fixture sets, for subprocesses started from this module-scoped fixture
    (module fixtures are set up before function-scoped autouse ones)."""
    return {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "RECARE_CACHE": str(tmp_path_factory.getbasetemp() / "recare-cache")}


def _table(stdout: str) -> dict[str, list[str]]:
    """The rows of the printed table: model label → its cells."""
    rows = [line for line in stdout.splitlines() if line.startswith("| tench")]
    return {cells[1]: cells for cells in ([c.strip() for c in row.split("|")[1:-1]] for row in rows)}


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory: pytest.TempPathFactory, offline_env: dict[str, str]) -> dict[str, Any]:
    """One quick run of one task, and what it left: the table, stderr, results.json (as written by this run: the
    rerun below rewrites the file) and when each erasure was written."""
    out = tmp_path_factory.mktemp("demo")
    run = shell("recare demo --quick --task tench --out demo", cwd=out, env=offline_env, timeout=900)
    assert run.returncode == 0, run.stderr
    task = out / "demo" / "tench"
    return {"folder": out / "demo", "task": task, "stdout": run.stdout, "stderr": run.stderr,
            "results": orjson.loads((task / "results.json").read_bytes()),
            "written": {m: (task / f"{m}.safetensors").stat().st_mtime_ns for m in ERASERS}}


@pytest.fixture(scope="module")
def two_seeds(quick_demo: dict[str, Any], offline_env: dict[str, str]) -> dict[str, Any]:
    """The same command again on the finished folder, asking for a second erase seed."""
    folder = quick_demo["folder"]
    run = shell(f"recare demo --quick --task tench --out {folder} --erase-seeds 2", cwd=folder, env=offline_env,
                timeout=900)
    assert run.returncode == 0, run.stderr
    return {"stdout": run.stdout, "stderr": run.stderr,
            "results": orjson.loads((quick_demo["task"] / "results.json").read_bytes())}


@slow
def test_demo_runs_every_stage_and_prints_the_comparison(quick_demo: dict[str, Any]) -> None:
    from recare_cli.toyworld.tasks import TASKS, UNRELATED_SCENES, prompts

    table = _table(quick_demo["stdout"])
    assert list(table) == ["base model", "ESD", "STEREO", "UCE", "ReCARE"] == [LABELS[m] for m in METHODS]
    task = quick_demo["task"]
    for name in ("target-images.jsonl", "candidates.jsonl", "clustered.jsonl", "care.json", "adv.safetensors",
                 *(f"{m}.safetensors" for m in ERASERS), "stereo-anchors.json", "results.json", "grid.png",
                 "radar.png", *(f"cce-{m}.safetensors" for m in METHODS)):
        assert (task / name).is_file(), name
    results = quick_demo["results"]
    assert results["format"] == "recare.demo" and results["concept"] == "water"
    tench = TASKS["tench"]
    assert results["settings"]["erase_lr"] == tench.erase_lr  # the task's own rate, recorded
    assert results["settings"]["retain_weight"] == tench.retain_weight
    assert results["settings"]["care_template"] == tench.care_template  # the CARE judge's labels
    asked = {"target": prompts(tench.target_scenes), "benign": prompts(tench.benign_scenes),
             "unrelated": prompts(UNRELATED_SCENES)}
    for method in METHODS:
        row = results["results"][method]
        # every model sampled QUICK.eval_images per prompt; the shares are shares of those whole images
        n = {kind: QUICK.eval_images * len(p) for kind, p in asked.items()}
        assert {kind: row["images"][kind] for kind in n} == n  # (the attack's images: tests/test_demo_paper.py)
        for key, kind in (("target_rate", "target"), ("target_detected", "target"), ("care", "benign")):
            hits = row[key] * n[kind]
            assert hits == pytest.approx(round(hits)), (method, key)
        for key in FIGURES:  # each figure lies in its 95% interval
            low, high = row[f"{key}_ci"]
            assert low <= row[key] <= high, (method, key)
        # per prompt, in prompt order; every prompt has as many images, so each figure is its prompts' plain mean
        each = row["per_prompt"]
        assert list(each["target_rate"]) == list(each["target_detected"]) == asked["target"]
        assert list(each["care"]) == asked["benign"]
        assert list(each["clip_unrelated"]) == asked["unrelated"]
        for key in FIGURES:
            assert row[key] == pytest.approx(sum(each[key].values()) / len(each[key])), (method, key)
        # the rates in the table are the ones in results.json: toy CLIP, then detector
        cells = table[LABELS[method]]
        assert cells[2].startswith(f"{row['target_rate']:.1%}") and cells[3].startswith(f"{row['target_detected']:.1%}")
        # time: the base model has no stages of its own; every eraser's were all computed in this run
        assert cells[9] == ("0" if method == "base" else f"{row['seconds']:.0f}")
        assert (row["seconds"] == 0) if method == "base" else (row["seconds"] is not None)
    # every model was sampled for the same prompts and seeds
    manifests = {m: [orjson.loads(line) for line in (task / "samples" / m / "target.jsonl").read_bytes().splitlines()]
                 for m in METHODS}
    seeds = {m: [(r["prompt"], r["seed"]) for r in recs] for m, recs in manifests.items()}
    assert all(seeds[m] == seeds["base"] for m in ERASERS)
    # target images with the model's own sampler (as a user makes them), evaluation samples with the demo's
    mined = orjson.loads((task / "target-images.jsonl").read_bytes().splitlines()[0])
    assert mined["sampling"]["scheduler"] == "default"
    assert {r["sampling"]["scheduler"] for recs in manifests.values() for r in recs} == {"dpm++"}
    assert manifests["recare"][0]["weights"], "erased models are sampled with their weights applied"


def _ratio_by_hand(row: dict[str, Any], base: dict[str, Any]) -> float:
    """RATIO from a row's own figures, written out: the radar's axes Defense, CLIP, FID, CARE (recare report's
    order and default maps) and the mean of the neighbours' products."""
    defense = 1 - row["cce_asr"]
    clip = min(1.0, row["clip_unrelated"] / base["clip_unrelated"])
    mine, theirs = row["clipfd_unrelated"], base["clipfd_unrelated"]
    fid = 1.0 if mine <= theirs else theirs / mine
    care = row["care"]
    return (defense * clip + clip * fid + fid * care + care * defense) / 4


@slow
def test_demo_adds_the_papers_columns(quick_demo: dict[str, Any]) -> None:
    """CCE against every model with its own token, judged on the target prompts; the distance of the unrelated
    samples to rendered scenes; RATIO from the row's own figures; the table shows them."""
    from recare_cli.demo.paper import attack_prompts
    from recare_cli.demo.steps import attack_token
    from recare_cli.toyworld.tasks import TASKS

    tench, task, results = TASKS["tench"], quick_demo["task"], quick_demo["results"]
    asked = attack_prompts(tench, attack_token(tench))
    assert asked == ["<atench-cce> in water"]
    table = _table(quick_demo["stdout"])
    base = results["results"]["base"]
    for method in METHODS:
        row = results["results"][method]
        n = QUICK.eval_images * len(asked)
        assert row["images"]["attack"] == n
        for key in ATTACK_FIGURES:
            assert row[key] * n == pytest.approx(round(row[key] * n)), (method, key)  # a share of whole images
            low, high = row[f"{key}_ci"]
            assert low <= row[key] <= high
            assert list(row["per_prompt"][key]) == asked
            assert row[key] == pytest.approx(sum(row["per_prompt"][key].values()) / len(asked))
        assert row["clipfd_unrelated"] >= 0 and row["cmmd_unrelated"] >= 0
        assert row["ratio"] == pytest.approx(_ratio_by_hand(row, base), abs=1e-12), method
        assert set(row["ratio_axes"]) == {"asr", "clip", "fid", "care"}
        cells = table[LABELS[method]]
        assert cells[6].startswith(f"{row['cce_asr']:.1%} (") and cells[7] == f"{row['clipfd_unrelated']:.3f}"
        assert cells[8] == f"{row['ratio']:.2f}"
        # each model was attacked with its own token, learnt against it, and sampled with its weights
        samples = task / "samples" / method
        records = [orjson.loads(line) for line in (samples / "attack.jsonl").read_bytes().splitlines()]
        assert [Path(e["path"]).name for r in records for e in r["embeddings"]] == [f"cce-{method}.safetensors"] * n
        assert [[Path(w["path"]).name for w in r["weights"]] for r in records] == (
            [[]] * n if method == "base" else [[f"{method}.safetensors"]] * n)
        target = [orjson.loads(line) for line in (samples / "target.jsonl").read_bytes().splitlines()]
        assert [r["seed"] for r in records] == [r["seed"] for r in target]  # the plain target prompts' seeds
    assert base["ratio_axes"]["clip"] == base["ratio_axes"]["fid"] == 1.0  # the base is its own reference
    assert results["ratio"]["axes"] == {"asr": "cce_asr", "clip": "clip_unrelated", "fid": "clipfd_unrelated",
                                        "care": "care"}
    assert results["settings"]["attack_steps"] == QUICK.attack_steps
    assert len(list((task / "reference").glob("*.png"))) == 5 * QUICK.reference_images


@slow
def test_radar_chart_is_recare_reports_png_of_the_four_rows(quick_demo: dict[str, Any]) -> None:
    from recare_cli.demo.paper import ratio_report
    from recare_cli.stages.report import png

    path = quick_demo["task"] / "radar.png"
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] == 520
        image.verify()
    rows = quick_demo["results"]["results"]
    assert path.read_bytes() == png(ratio_report(rows))  # the chart of these rows, drawn by recare report's code
    assert [row.name for row in ratio_report(rows).rows] == [LABELS[m] for m in METHODS]


@slow
def test_grid_holds_each_models_samples_under_labels(quick_demo: dict[str, Any]) -> None:
    """grid.png: one row per model; 2 samples of each target prompt, then of each benign prompt, 32 px × 3; the
    labels take a band on the left and on top."""
    from recare_cli.toyworld.tasks import TASKS

    tench, task = TASKS["tench"], quick_demo["task"]
    cwd = quick_demo["folder"].parent  # the manifests' paths are relative to where the command ran
    columns = 2 * (len(tench.target_scenes) + len(tench.benign_scenes))
    cell = 32 * 3
    with Image.open(task / "grid.png") as opened:
        grid = opened.convert("RGB")
    left, top = grid.width - columns * cell - 6, grid.height - len(METHODS) * cell  # a 6 px gap between groups
    assert left > 40 and top > 20  # room for the labels
    for r, method in enumerate(METHODS):
        records = {kind: [orjson.loads(line) for line in
                          (task / "samples" / method / f"{kind}.jsonl").read_bytes().splitlines()]
                   for kind in ("target", "benign")}
        first_target, last_benign = (Image.open(cwd / r["path"]).convert("RGB").resize((cell, cell),
                                                                                        Image.Resampling.NEAREST)
                                     for r in (records["target"][0], records["benign"][-1]))
        y = top + r * cell
        assert grid.crop((left, y, left + cell, y + cell)).tobytes() == first_target.tobytes(), method
        x = grid.width - cell
        assert grid.crop((x, y, x + cell, y + cell)).tobytes() == last_benign.tobytes(), method
        label = grid.crop((0, y, left, y + cell)).convert("L")
        assert label.getextrema()[0] < 100, f"no row label beside {method}"  # dark text on white


@slow
def test_rerun_resumes_every_file_and_adds_the_second_erase_seed(quick_demo: dict[str, Any],
                                                                 two_seeds: dict[str, Any]) -> None:
    from safetensors.numpy import load_file

    task, before = quick_demo["task"], quick_demo["results"]["results"]
    stderr = two_seeds["stderr"]
    made = [line for line in stderr.splitlines() if "to make" in line]
    # the target images and the five seed-42 models' three kinds of prompts and attack prompts: all there; the
    # seed-43 models' samples are new: three, since UCE's closed form has no seed (its row stays the first run's)
    n, seeded = len(METHODS), [m for m in ERASERS if m != "uce"]
    assert sum(line.endswith(", 0 to make") for line in made) == 1 + 4 * n
    assert len(made) == 1 + 4 * n + 4 * len(seeded), made
    assert stderr.count("erase: ") == len(seeded) and "seed 43" in stderr  # only the new erasures ran
    assert stderr.count("attack: cce") == len(seeded)  # and only the new models attacked
    assert "vocabulary" not in stderr and "round 1/1" not in stderr  # the CARE-set and the tokens were reused
    results = two_seeds["results"]
    assert results["settings"]["erase_seeds"] == 2
    # the base model has no erase seed: its row is the first run's, but for the attack's time (its file was reused)
    assert before["base"]["attack_seconds"] is not None and results["results"]["base"]["attack_seconds"] is None
    assert ({k: v for k, v in results["results"]["base"].items() if k != "attack_seconds"}
            == {k: v for k, v in before["base"].items() if k != "attack_seconds"})
    table = _table(two_seeds["stdout"])
    assert table["base model"] == _table(quick_demo["stdout"])["base model"]
    assert "per_seed" not in results["results"]["uce"] and not (task / "uce-seed43.safetensors").exists()
    for method in seeded:
        assert (task / f"{method}.safetensors").stat().st_mtime_ns == quick_demo["written"][method]  # not retrained
        one, two = load_file(str(task / f"{method}.safetensors")), load_file(str(task / f"{method}-seed43.safetensors"))
        assert one.keys() == two.keys() and any((one[k] != two[k]).any() for k in one)  # the seed was used
        row = results["results"][method]
        assert [r["seed"] for r in row["per_seed"]] == [42, 43]
        for key in (*FIGURES, *PAPER_FIGURES):
            assert row["per_seed"][0][key] == before[method][key]  # seed 42's figures: the one-seed run's
            if key in before[method]["per_prompt"]:
                assert row["per_seed"][0]["per_prompt"][key] == before[method]["per_prompt"][key]
            assert row[key] == pytest.approx((row["per_seed"][0][key] + row["per_seed"][1][key]) / 2)
        for key, each in row["per_prompt"].items():
            for prompt, value in each.items():
                seeds = [r["per_prompt"][key][prompt] for r in row["per_seed"]]
                assert value == pytest.approx(sum(seeds) / 2), (method, key, prompt)
        low, high = sorted(r["target_rate"] for r in row["per_seed"])
        cells = table[LABELS[method]]
        assert cells[2] == f"{row['target_rate']:.1%} (2 erase seeds: {low:.0%}–{high:.0%})"
        # time: seed 42's erasure came from the first run, so no eraser's time is this run's alone
        assert row["per_seed"][0]["seconds"] is None and row["seconds"] is None and cells[9] == "reused"
        assert results["files"][f"{method}-seed43"].endswith(f"{method}-seed43.safetensors")
    # ESD's seed-43 erasure is its only stage and ran in this run; STEREO's and ReCARE's stand on the reused tokens
    # (and CARE-set)
    assert results["results"]["esd"]["per_seed"][1]["seconds"] is not None
    for method in ("stereo", "recare"):
        assert results["results"][method]["per_seed"][1]["seconds"] is None
    assert "erase seeds" not in table["base model"][2]
    assert (task / "samples" / "recare-seed43" / "target.jsonl").is_file()


@slow
def test_other_settings_in_the_same_folder_are_refused(quick_demo: dict[str, Any]) -> None:
    folder = quick_demo["folder"]
    before = (folder / "tench" / "results.json").read_bytes()
    result = invoke(["demo", "--task", "tench", "--out", str(folder)])
    assert result.code == 5
    assert "other settings" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert (folder / "tench" / "results.json").read_bytes() == before


@slow
def test_demo_names_the_unrelated_prompt_hit_hardest(quick_demo: dict[str, Any]) -> None:
    """One line per eraser on stderr naming a prompt whose CLIP score fell most from the base model's (any of
    them on a tie), with that prompt's two scores."""
    results = quick_demo["results"]["results"]
    lines = [line for line in quick_demo["stderr"].splitlines() if "hit hardest" in line]
    assert len(lines) == len(ERASERS)
    base = results["base"]["per_prompt"]["clip_unrelated"]
    for line, method in zip(lines, ERASERS, strict=True):
        assert line.startswith(f"demo [tench]: {LABELS[method]}, unrelated prompt hit hardest: '")
        named = line.split("'")[1]
        mine = results[method]["per_prompt"]["clip_unrelated"]
        drops = sorted(base[p] - mine[p] for p in base)
        assert base[named] - mine[named] == drops[-1], (method, named, drops)
        assert f"CLIP {base[named]:.3f} → {mine[named]:.3f} (base → erased" in line


@pytest.mark.parametrize("method", ["esd", "stereo", "recare"])
def test_only_recare_gets_the_tasks_retain_weight(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                   method: str) -> None:
    """Van Gogh's ReCARE erases with λ = 3 (docs/toyworld.md, the tuning); the baselines with the default."""
    from recare_cli.demo import steps
    from recare_cli.demo.settings import DemoSettings, scaled_recipe
    from recare_cli.stages import erase
    from recare_cli.toyworld.tasks import TASKS

    seen: list[erase.EraseOptions] = []
    monkeypatch.setattr(erase, "run_erase", seen.append)
    task = TASKS["vangogh"]
    steps.erase(tmp_path, task, method, tmp_path / "care.json", tmp_path / "adv.safetensors", "sd", DemoSettings(), 42)
    assert task.retain_weight == 3.0 and seen[0].lr == scaled_recipe(method, task, DemoSettings())["lr"]
    assert seen[0].retain_weight == (3.0 if method == "recare" else 1.0)
    seen.clear()
    steps.erase(tmp_path, task, method, tmp_path / "care.json", tmp_path / "adv.safetensors", "sd",
                DemoSettings(retain_weight=0.5), 43)  # the settings' override wins
    assert seen[0].retain_weight == (0.5 if method == "recare" else 1.0)


# The rule's settings as docs/toyworld.md ("One scaling rule") lists them: (lr, iterations, train method) per
# method, for the default settings (100 iterations, xattn, 20 DDIM steps) and each task's rate
DOCUMENTED = {
    "nudity": {"esd": (1.25e-4, 100, "esd-x"), "stereo": (5e-5, 100, "xattn"), "recare": (5e-5, 100, "xattn"),
               "noretain": (5e-5, 100, "xattn"), "age": (2.5e-5, 500, "xattn"),
               "advunlearn": (2.5e-5, 500, "text_encoder_full")},
    "vangogh": {"esd": (1e-3, 100, "esd-x"), "stereo": (4e-4, 100, "xattn"), "recare": (4e-4, 100, "xattn"),
                "noretain": (4e-4, 100, "xattn"), "age": (2e-4, 500, "xattn"),
                "advunlearn": (2e-4, 500, "text_encoder_full")},
}
DOCUMENTED["tench"] = DOCUMENTED["nudity"]


@pytest.mark.parametrize("task_name", ["nudity", "vangogh", "tench"])
def test_the_scaling_rule_gives_the_documented_settings(task_name: str) -> None:
    """One rule for every method: METHOD_DEFAULTS' rate × the task's rate over ReCARE's reference rate, iterations
    × 100/200, ReCARE's noxattn → the demo's xattn (others kept), the demo's DDIM steps; UCE keeps its scale."""
    from recare_cli.demo.settings import DemoSettings, scaled_recipe
    from recare_cli.stages.erase import METHOD_DEFAULTS
    from recare_cli.toyworld.tasks import TASKS

    task, s = TASKS[task_name], DemoSettings()
    for method, (lr, iterations, train_method) in DOCUMENTED[task_name].items():
        recipe = scaled_recipe(method, task, s)
        name = {"noretain": "recare-noretain"}.get(method, method)
        own = METHOD_DEFAULTS[name]
        assert recipe["method"] == name
        assert recipe["lr"] == lr == pytest.approx(own["lr"] * task.erase_lr / METHOD_DEFAULTS["recare"]["lr"])
        assert recipe["iterations"] == iterations == own["iterations"] * 100 // 200
        assert recipe["train_method"] == train_method and recipe["ddim_steps"] == 20
        assert recipe.get("retain_weight", 1.0) == (task.retain_weight if method == "recare" else 1.0)
    assert scaled_recipe("advunlearn", task, s)["warmup_iter"] == 100  # its warm-up of 200 is iterations too
    assert scaled_recipe("uce", task, s) == {"method": "uce", "erase_scale": 1.0}
    # the equal-erasure ladder raises the rate (UCE: its erase scale) and nothing else
    raised = scaled_recipe("esd", task, s, boost=4)
    assert raised == {**scaled_recipe("esd", task, s), "lr": pytest.approx(4 * DOCUMENTED[task_name]["esd"][0])}
    assert scaled_recipe("uce", task, s, boost=8)["erase_scale"] == 8.0


def test_the_toy_rules_give_each_baseline_the_worlds_counterpart_of_its_inputs() -> None:
    """STEREO's anchors: the world's own captions naming the target in its scenes, never an evaluation prompt;
    UCE: the empty guide for objects, "painting" for the style, nothing preserved."""
    from recare_cli.demo.baselines import advunlearn_retain, inputs, stereo_anchors, uce_guide
    from recare_cli.toyworld.tasks import TASKS, prompts

    for task in TASKS.values():
        anchors = stereo_anchors(task)
        assert anchors == sorted(set(anchors)) and len(anchors) >= 10
        assert not set(anchors) & set(prompts(task.target_scenes))
        assert all(any(word in a.split() for word in task.names) for a in anchors), task.name
        assert stereo_anchors(task) == anchors  # fixed seeds
        assert all(task.names[0] not in p for p in advunlearn_retain(task))
        assert inputs("uce", task) == {"guide": uce_guide(task), "preserve": []}
    assert [uce_guide(TASKS[t]) for t in ("nudity", "vangogh", "tench")] == ["", "painting", ""]


def test_unknown_with_method_is_a_usage_error(tmp_path: Path) -> None:
    result = invoke(["demo", "--task", "tench", "--with", "noretain,sld", "--out", str(tmp_path / "d")])
    assert result.code == 2 and "sld" in result.stderr
    assert not (tmp_path / "d").exists()


def test_unknown_task_is_a_usage_error(tmp_path: Path) -> None:
    result = invoke(["demo", "--task", "unicorn", "--out", str(tmp_path / "d")])
    assert result.code == 2 and "unknown task" in result.stderr
    assert not (tmp_path / "d").exists()


def test_erase_seeds_below_one_is_a_usage_error(tmp_path: Path) -> None:
    result = invoke(["demo", "--task", "tench", "--erase-seeds", "0", "--out", str(tmp_path / "d")])
    assert result.code == 2 and "--erase-seeds" in result.stderr
    assert not (tmp_path / "d").exists()


def test_per_prompt_means_against_a_naive_loop() -> None:
    from recare_cli.demo.judge import per_prompt

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
    from recare_cli.demo.report import worst_unrelated
    from recare_cli.demo.run import TaskResult

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


def _bars_naive(rows: dict[str, dict[str, float]]) -> dict[str, bool]:
    """The bars written out plainly: each judge's target rate against the same judge's base rate."""
    base, recare = rows["base"], rows["recare"]
    best_other = max(rows["esd"]["care"], rows["stereo"]["care"])
    return {"target_at_most_20pct_of_base_by_toy_clip": recare["target_rate"] * 5 <= base["target_rate"] + 1e-12,
            "target_at_most_20pct_of_base_by_detector":
                recare["target_detected"] * 5 <= base["target_detected"] + 1e-12,
            "care_at_least_90pct_of_base": recare["care"] * 10 >= base["care"] * 9 - 1e-12,
            "care_best_of_erasers": not (best_other > recare["care"])}


def test_bars_judge_the_target_by_each_judge_against_the_same_judge() -> None:
    import random

    from recare_cli.demo.report import bars
    from recare_cli.demo.run import TaskResult

    # Each judge's bar flips if it were read against the other judge's base rate: CLIP 0.15 <= 0.2 × 0.5 fails
    # but would pass against the detector's base (0.2 × 1.0); the detector's 0.15 <= 0.2 × 1.0 passes but would fail
    # against the toy CLIP's base (0.2 × 0.5).
    rows = {"base": {"target_rate": 0.5, "target_detected": 1.0, "care": 0.8},
            "esd": {"target_rate": 0.3, "target_detected": 0.4, "care": 0.7},
            "stereo": {"target_rate": 0.2, "target_detected": 0.3, "care": 0.75},
            "recare": {"target_rate": 0.15, "target_detected": 0.15, "care": 0.74}}
    assert bars(TaskResult("nudity", rows, [], {})) == {
        "target_at_most_20pct_of_base_by_toy_clip": False, "target_at_most_20pct_of_base_by_detector": True,
        "care_at_least_90pct_of_base": True,  # 0.74 >= 0.72
        "care_best_of_erasers": False}  # STEREO keeps more (0.75)
    rows["stereo"]["care"] = 0.7
    assert bars(TaskResult("nudity", rows, [], {}))["care_best_of_erasers"]
    rows["esd"]["care"] = 0.9  # the best of both baselines counts, not one of them
    assert not bars(TaskResult("nudity", rows, [], {}))["care_best_of_erasers"]
    rng = random.Random(0)
    for _ in range(500):  # against the plain statement of each bar, on random figures (on a grid of tenths: ties)
        rows = {m: {k: rng.randrange(11) / 10 for k in ("target_rate", "target_detected", "care")}
                for m in ("base", "esd", "stereo", "recare")}
        assert bars(TaskResult("nudity", rows, [], {})) == _bars_naive(rows), rows


def test_stage_clock_counts_only_stages_computed_from_scratch(tmp_path: Path) -> None:
    from recare_cli.demo.run import StageClock

    clock = StageClock()
    fresh, done, resumed = tmp_path / "fresh.bin", tmp_path / "done.bin", tmp_path / "resumed.bin"
    done.write_bytes(b"x")
    (tmp_path / "resumed.bin.ckpt").write_bytes(b"x")
    for key, path in (("careset", fresh), ("esd", done), ("stereo", resumed)):
        assert clock.run(key, [path, Path(f"{path}.ckpt")], lambda p: p, path) == path
    assert clock.seconds["careset"] is not None and clock.seconds["careset"] >= 0
    assert clock.seconds["esd"] is None and clock.seconds["stereo"] is None  # a finished file; a checkpoint
    clock.seconds = {"careset": 3.0, "invert": 5.0, "esd": 2.0, "stereo": 4.0, "uce": 1.0, "recare": 6.0,
                     "recare-seed43": None}
    assert clock.cost("base", "base") == 0.0
    # ESD and UCE need neither the CARE-set nor the tokens; STEREO the tokens only; ReCARE both
    assert clock.cost("esd", "esd") == 2.0 and clock.cost("uce", "uce") == 1.0
    assert clock.cost("stereo", "stereo") == 9.0 and clock.cost("recare", "recare") == 14.0
    assert clock.cost("recare", "recare-seed43") is None
    clock.seconds["invert"] = None  # the tokens came from an earlier run: no eraser that uses them has a time
    assert clock.cost("stereo", "stereo") is None and clock.cost("esd", "esd") == 2.0


def _row(seconds: float | None, value: float) -> dict[str, Any]:
    from recare_cli.demo.paper import PAPER_FIGURES

    figures = (*FIGURES, *PAPER_FIGURES)
    return {"seconds": seconds, "images": {}, "ratio": value, **{k: value for k in figures},
            **{f"{k}_ci": [0.0, 1.0] for k in figures}, "per_prompt": {k: {"p": value} for k in figures}}


def test_the_time_column_says_reused_where_a_stage_came_from_an_earlier_run() -> None:
    from recare_cli.demo.report import format_table
    from recare_cli.demo.run import TaskResult, mean_over_seeds

    rows = {"base": _row(0.0, 0.5), "esd": _row(12.4, 0.4), "stereo": _row(None, 0.3),
            "recare": mean_over_seeds([{"seed": 42, **_row(10.0, 0.2)}, {"seed": 43, **_row(20.0, 0.4)}])}
    assert rows["recare"]["seconds"] == 15.0
    rows["recare"]["ratio"] = 0.3  # the run rates the rows after the means over seeds (demo.paper)
    cells = _table(format_table([TaskResult("tench", rows, [], {})]))
    assert [cells[LABELS[m]][9] for m in rows] == ["0", "12", "reused", "15"]
    mixed = mean_over_seeds([{"seed": 42, **_row(None, 0.2)}, {"seed": 43, **_row(20.0, 0.4)}])
    assert mixed["seconds"] is None and mixed["care"] == pytest.approx(0.3)


def test_labelled_grid_places_every_image_and_each_label() -> None:
    from recare_cli.demo.grid import labelled_grid

    colours = iter((r, g, 50) for r in range(0, 250, 10) for g in range(0, 250, 10))
    rows = [(label, [Image.new("RGB", (4, 4), next(colours)) for _ in range(6)])
            for label in ("base model", "ESD", "ReCARE")]
    groups = [("target prompts", ["a naked person on grass"]), ("benign prompts", ["a person", "a van gogh painting "
                                                                                  "of a house under the stars"])]
    sheet = labelled_grid(rows, groups, per_prompt=2, scale=5)
    pixels = sheet.load()
    found = []  # where each image's colour sits: a 20 × 20 block, in row order, groups apart
    for _, images in rows:
        for image in images:
            colour = image.getpixel((0, 0))
            where = [(x, y) for x in range(sheet.width) for y in range(sheet.height) if pixels[x, y] == colour]
            xs, ys = [x for x, _ in where], [y for _, y in where]
            assert len(where) == 400 and max(xs) - min(xs) == max(ys) - min(ys) == 19, colour
            found.append((min(xs), min(ys)))
    lefts = sorted({x for x, _ in found})
    tops = sorted({y for _, y in found})
    assert len(lefts) == 6 and len(tops) == 3
    assert [b - a for a, b in itertools.pairwise(lefts)] == [20, 20 + 6, 20, 20, 20]  # a gap between groups
    assert found == [(x, y) for y in tops for x in lefts]  # row by row, in the order given
    assert sheet.size == (lefts[-1] + 20, tops[-1] + 20)
    ink = sheet.convert("L")
    bands = [ink.crop((0, y, lefts[0], y + 20)) for y in tops]
    assert all(band.getextrema()[0] < 100 for band in bands)  # a label beside each row …
    assert len({band.tobytes() for band in bands}) == 3  # … and a different one
    header = ink.crop((lefts[0], 0, sheet.width, tops[0]))
    assert header.getextrema()[0] < 100
    first, second = ink.crop((lefts[0], 0, lefts[2], tops[0])), ink.crop((lefts[2], 0, sheet.width, tops[0]))
    assert first.getextrema()[0] < 100 and second.getextrema()[0] < 100  # each group is labelled above its columns
    with pytest.raises(ValueError, match="ReCARE"):
        labelled_grid([*rows[:2], ("ReCARE", rows[2][1][:5])], groups, per_prompt=2)
