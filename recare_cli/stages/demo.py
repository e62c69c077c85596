"""The offline demo: the whole method on the shipped toy world, compared with the baselines.

For one task (toyworld.tasks) it runs every stage through the same library functions the CLI
commands call, writing each stage's file into ``out/<task>/``:

1. ``sample`` the base model on the target prompts → the target images (as the paper generates them);
2. ``mine`` → ``cluster`` → ``refine`` over the world's vocabulary → ``care.json``;
3. ``invert`` → ``adv.safetensors`` (adversarial tokens);
4. ``erase`` three ways from the same engine: ESD, STEREO-style (CARE anchors, no retain loss), ReCARE;
5. ``sample`` base and erased models on target, benign and unrelated prompts, same seeds;
6. judge: how often the target appears, by the toy CLIP (tasks.shows_target) and by the world's detector
   (toyworld.detector: an independent CNN, as the paper judges with NudeNet and classifiers), the CARE score of the
   benign concept (``score --metric care`` with the world's labels), CLIP score on unrelated prompts.

Finished files are reused when the demo is run again with the same settings (a killed run resumes);
a folder holding a run with other settings is refused.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recare_cli import console
from recare_cli.errors import RefusedError
from recare_cli.io.atomic import atomic_write_bytes
from recare_cli.io.jsonl import dumps_json, write_jsonl
from recare_cli.io.streams import open_output

METHODS = ("base", "esd", "stereo", "recare")
KINDS = ("target", "benign", "unrelated")  # the prompts every model is sampled on
LABELS = {"base": "base model", "esd": "ESD", "stereo": "STEREO-style", "recare": "ReCARE"}


@dataclass(frozen=True)
class DemoSettings:
    mine_images: int = 16  # per target prompt, for mining and inversion
    eval_images: int = 16  # per prompt and model
    # The target images are made as a user makes them (the model's own sampler: PNDM, 50 steps, as SD v1.4
    # ships it). The evaluation samples use DPM-Solver++ at 20 steps: 97.7% of 128 held-out toy samples show
    # every prompted attribute against 96.1% for PNDM-50, in a third of the time (python -m
    # recare_cli.toyworld.evaluate --scheduler dpm++ --steps 20; docs/toyworld.md). PNDM at 25 gives noise.
    mine_scheduler: str = "default"
    mine_steps: int = 50
    scheduler: str = "dpm++"
    steps: int = 20
    guidance: float = 7.5
    top_k: int = 6
    top_n: int = 40
    clusters: int = 4
    cluster_space: str = "embedding"  # recare cluster --space (see _careset)
    drop_extremes: int = 1
    alpha: float = 0.1
    invert_rounds: int = 1
    invert_erase_iterations: int = 40
    invert_erase_lr: float = 5e-4  # the erase half of invert: its own knob, as in the reference
    invert_steps: int = 150
    invert_lr: float = 5e-3
    # Cross-attention only, for all three methods: training every non-cross-attention weight (noxattn) of
    # the toy UNet at a rate that erased also wrecked unrelated prompts (docs/toyworld.md, "History").
    erase_iterations: int = 100
    erase_lr: float | None = None  # None: each task's own rate (DemoTask.erase_lr)
    retain_weight: float | None = None  # None: each task's own ReCARE λ (DemoTask.retain_weight)
    ddim_steps: int = 20
    train_method: str = "xattn"
    seed: int = 42
    # Erasures per method, with seeds seed, seed + 1, …; the erasers' figures are their mean. One erase
    # seed moved a figure by up to 40 points in the tuning (docs/toyworld.md), so one run is one draw.
    erase_seeds: int = 1


QUICK = DemoSettings(mine_images=4, eval_images=2, mine_steps=4, steps=4, top_k=4, top_n=20, clusters=3,
                     invert_erase_iterations=2, invert_steps=3, erase_iterations=3, ddim_steps=5)


@dataclass
class TaskResult:
    task: str
    rows: dict[str, dict[str, Any]]  # method → figures
    careset: list[str]
    files: dict[str, str]


def _write_json(path: Path, doc: Any) -> None:
    atomic_write_bytes(path, dumps_json(doc))


def _check_settings(folder: Path, record: dict[str, Any]) -> None:
    import orjson

    path = folder / "settings.json"
    if path.is_file():
        try:
            old = orjson.loads(path.read_bytes())
        except orjson.JSONDecodeError:
            old = None
        if old != record:
            raise RefusedError(f"'{folder}' holds a demo run with other settings; pass another --out or delete it")
    folder.mkdir(parents=True, exist_ok=True)
    _write_json(path, record)


def sample_prompts(prompts: list[str], out: Path, manifest: Path, *, model: str, weights: list[Path],
                   embeddings: list[Path], n: int, seed: int, s: DemoSettings,
                   for_mining: bool = False) -> list[dict[str, Any]]:
    """run_sample into ``out`` with the evaluation sampler (``for_mining``: the mining one); the manifest is
    written once every image exists (resume: finished images stay)."""
    from recare_cli.io.prompts import PromptRow
    from recare_cli.parallel import Shard
    from recare_cli.stages.sample import SampleSettings, run_sample

    records: list[dict[str, Any]] = []
    rows = [PromptRow(index=i, line=i + 1, prompt=p) for i, p in enumerate(prompts)]
    settings = SampleSettings(steps=s.mine_steps if for_mining else s.steps, guidance=s.guidance, height=32,
                              width=32, scheduler=s.mine_scheduler if for_mining else s.scheduler, batch_size=32)
    run_sample(rows, out_dir=out, images_per_prompt=n, seed=seed, model=model, weights=weights,
               embeddings=embeddings, settings=settings, shard=Shard(0, 1), device="cpu", dtype="fp32",
               emit=records.append)
    with open_output(manifest, binary=False) as fh:
        write_jsonl(fh, records)
    return records


def _careset(folder: Path, task: Any, target_images: list[Path], clip: str, s: DemoSettings) -> Path:
    from recare_cli.stages.cluster import run_clustering
    from recare_cli.stages.mine import run_mining
    from recare_cli.stages.refine import run_refinement
    from recare_cli.toyworld.tasks import vocabulary

    care = folder / "care.json"
    if care.is_file():
        return care
    words = vocabulary(task)
    atomic_write_bytes(folder / "vocab.txt", "".join(w + "\n" for w in words).encode())
    stream = run_mining(paths=target_images, target=task.target, top_k=s.top_k, top_n=s.top_n,
                        words=list(enumerate(words, 1)), vocab_source=str(folder / "vocab.txt"), strict=True,
                        clip=clip, device="cpu", dtype="fp32", batch_size=64, text_batch_size=1024,
                        cache_dir=None, use_cache=False,
                        params={"target": task.target, "top_k": s.top_k, "top_n": s.top_n, "demo": task.name})
    with open_output(folder / "candidates.jsonl", binary=False) as fh:
        stream.write(fh)
    # k-means on the embeddings, not on t-SNE points: t-SNE of ~20 words regrouped them when the
    # embeddings changed in the 7th digit, and the CARE-set, and every figure after it, differed
    # between machines (bench/cluster_stability.py; docs/benchmarks.md)
    run_clustering(stream, n_clusters=s.clusters, drop_extremes=s.drop_extremes, seed=s.seed, perplexity=None,
                   params={"clusters": s.clusters, "drop_extremes": s.drop_extremes, "seed": s.seed,
                           "space": s.cluster_space}, space=s.cluster_space)
    with open_output(folder / "clustered.jsonl", binary=False) as fh:
        stream.write(fh)
    careset = run_refinement(stream, alpha=s.alpha, min_cluster_size=2, prop=task.prop,
                             params={"alpha": s.alpha, "min_cluster_size": 2})
    _write_json(care, careset.to_recare())
    return care


def _invert(folder: Path, task: Any, target_images: list[Path], sd: str, s: DemoSettings) -> Path:
    from recare_cli.stages.invert import InvertOptions, run_invert

    adv = folder / "adv.safetensors"
    if not adv.is_file():
        opts = InvertOptions(target=task.target, initializer=task.initializer, property=task.prop,
                             rounds=s.invert_rounds, erase_iterations=s.invert_erase_iterations,
                             erase_lr=s.invert_erase_lr,
                             train_method=s.train_method, ddim_steps=s.ddim_steps, steps=s.invert_steps,
                             lr=s.invert_lr, resolution=32, seed=s.seed, model=sd, device="cpu", output=str(adv),
                             resume=Path(f"{adv}.ckpt").is_file(), params={"demo": task.name})
        run_invert(opts, target_images, strict=True)
    return adv


def erase_lr(task: Any, s: DemoSettings) -> float:
    return float(task.erase_lr if s.erase_lr is None else s.erase_lr)


def retain_weight(task: Any, s: DemoSettings) -> float:
    return float(task.retain_weight if s.retain_weight is None else s.retain_weight)


def erase_seeds(s: DemoSettings) -> list[int]:
    return [s.seed + i for i in range(s.erase_seeds)]


def model_tag(method: str, seed: int, s: DemoSettings) -> str:
    """The name of one erased model's files: the first erase seed keeps the method's plain name."""
    return method if seed == s.seed else f"{method}-seed{seed}"


def _erase(folder: Path, task: Any, method: str, care: Path, adv: Path, sd: str, s: DemoSettings,
           seed: int) -> Path:
    from recare_cli.stages.erase import EraseOptions, run_erase

    out = folder / f"{model_tag(method, seed, s)}.safetensors"
    if not out.is_file():
        opts = EraseOptions(target=task.target, care=None if method == "esd" else str(care),
                            adversarial=None if method == "esd" else str(adv), method=method,
                            train_method=s.train_method, iterations=s.erase_iterations, lr=erase_lr(task, s),
                            retain_weight=retain_weight(task, s) if method == "recare" else 1.0,
                            ddim_steps=s.ddim_steps, seed=seed, resolution=32, model=sd, device="cpu",
                            output=str(out), checkpoint_every=20, resume=Path(f"{out}.ckpt").is_file(),
                            params={"demo": task.name})
        run_erase(opts)
    return out


def _ci(interval: dict[str, Any] | None) -> list[float] | None:
    return None if interval is None else [round(interval["low"], 4), round(interval["high"], 4)]


def per_prompt(prompts: list[str], values: Any) -> dict[str, float]:
    """The mean of ``values`` (one per image) per prompt, prompts in the order first seen."""
    groups: dict[str, list[float]] = {}
    for prompt, value in zip(prompts, values, strict=True):
        groups.setdefault(prompt, []).append(float(value))
    return {prompt: float(np.mean(v)) for prompt, v in groups.items()}


def image_share(shown: Any, prompts: list[str]) -> tuple[float, list[float] | None, dict[str, float]]:
    """The share of images judged ``shown`` (one verdict per image), its 95% Wilson interval, and per prompt."""
    from recare_cli.core.scores import wilson_interval

    interval = wilson_interval(int(np.sum(shown)), len(shown))
    return (float(np.mean(shown)), _ci(None if interval is None else interval.to_json()), per_prompt(prompts, shown))


def target_verdicts(records: list[dict[str, Any]], task: Any, scenes: list[Any], *, judge: Any,
                    detector: Any) -> tuple[Any, Any]:
    """Per target sample, whether it shows the target, by the toy CLIP ``judge`` (tasks.shows_target) and by
    the world's ``detector`` (toyworld.detector, the part NudeNet and the paper's classifiers play); the
    images are read once for both."""
    from PIL import Image

    from recare_cli.toyworld.detector import predict, target_shown
    from recare_cli.toyworld.tasks import shows_target

    images = [Image.open(r["path"]).convert("RGB") for r in records]
    by_clip = shows_target(judge, judge.images(images), task, scenes)
    by_detector = target_shown(task, predict(detector, np.stack([np.asarray(im) for im in images])))
    return by_clip, by_detector


def score_records(records: list[dict[str, Any]], config: Any,
                  clip: str) -> tuple[float, list[float] | None, dict[str, float]]:
    """The first metric of ``config`` (care or clip) over ``records`` (run_score), with its 95% interval, and
    per prompt (CARE: the share of hits)."""
    from recare_cli.stages.score import ImageItem, run_score

    items = [ImageItem(path=Path(r["path"]), prompt=r["prompt"], sha256=r.get("sha256")) for r in records]
    result = run_score(items, config, clip=clip, device="cpu", dtype="fp32", params={}, source="demo")
    assert result is not None
    summary = result.summary["results"][0]
    metric = config.metrics[0]
    values = [row[metric]["hit"] if metric == "care" else row[metric] for row in result.per_image]
    return float(summary["value"]), _ci(summary["ci"]), per_prompt([row["prompt"] for row in result.per_image],
                                                                    values)


def care_config(task: Any) -> Any:
    """The demo's CARE score of ``task``'s benign concept: ``score --metric care`` among the world's words of its
    kind, with the task's label template."""
    from recare_cli.stages.score import ScoreConfig

    return ScoreConfig(metrics=["care"], concept=task.concept, labels=list(task.labels), labels_source="toy world",
                       template=task.care_template)


def measure_model(task: Any, folder: Path, *, sd: str, weights: list[Path], clip: str, judge: Any, detector: Any,
                  images: dict[str, int], seed: int, s: DemoSettings) -> tuple[dict[str, Any], dict[str, Any]]:
    """Sample one model (``weights`` on the base ``sd``) on the task's target, benign and unrelated prompts
    (``images[kind]`` per prompt, seeds from ``seed``) into ``folder/KIND`` and judge them as the demo does
    (the target by the toy CLIP ``judge`` and by the ``detector``).
    Returns the figures with their 95% intervals, and the sample records per kind."""
    from recare_cli.stages.score import ScoreConfig
    from recare_cli.toyworld.tasks import UNRELATED_SCENES, prompts

    made: dict[str, list[dict[str, Any]]] = {}
    for kind, scenes in zip(KINDS, (task.target_scenes, task.benign_scenes, UNRELATED_SCENES), strict=True):
        made[kind] = sample_prompts(prompts(scenes), folder / kind, folder / f"{kind}.jsonl", model=sd,
                                    weights=weights, embeddings=[], n=images[kind], seed=seed, s=s)
    asked = [task.target_scenes[r["prompt_index"]] for r in made["target"]]
    by_clip, by_detector = target_verdicts(made["target"], task, asked, judge=judge, detector=detector)
    target_prompts = [r["prompt"] for r in made["target"]]
    rate, rate_ci, rate_each = image_share(by_clip, target_prompts)
    detected, detected_ci, detected_each = image_share(by_detector, target_prompts)
    care_value, care_ci, care_each = score_records(made["benign"], care_config(task), clip)
    clip_value, clip_ci, clip_each = score_records(made["unrelated"], ScoreConfig(metrics=["clip"]), clip)
    return {"target_rate": rate, "target_rate_ci": rate_ci, "target_detected": detected,
            "target_detected_ci": detected_ci, "care": care_value, "care_ci": care_ci,
            "clip_unrelated": clip_value, "clip_unrelated_ci": clip_ci,
            "per_prompt": {"target_rate": rate_each, "target_detected": detected_each, "care": care_each,
                           "clip_unrelated": clip_each}}, made


def run_task(out: Path, task_name: str, s: DemoSettings, *, clip: str, sd: str) -> TaskResult:
    import orjson
    from PIL import Image

    from recare_cli.io.careset import parse_careset
    from recare_cli.models.clip import load_clip
    from recare_cli.toyworld.detector import load as load_detector
    from recare_cli.toyworld.evaluate import Judge, save_grid
    from recare_cli.toyworld.tasks import TASKS, prompts

    task = TASKS[task_name]
    folder = out / task.name
    # erase_seeds is left out: more seeds on a finished folder add erasures, the first ones stay valid
    _check_settings(folder, {"task": task.name, "settings": {k: v for k, v in asdict(s).items() if k != "erase_seeds"},
                             "erase_lr": erase_lr(task, s), "retain_weight": retain_weight(task, s),
                             "clip": clip, "sd": sd})
    # Seconds each step took when it ran; a rerun that reuses a step's file reports its recorded time.
    timings_path = folder / "timings.json"
    seconds: dict[str, float] = orjson.loads(timings_path.read_bytes()) if timings_path.is_file() else {}

    def timed(key: str, fn: Any, *args: Any) -> Any:
        started = time.perf_counter()
        value = fn(*args)
        if key not in seconds:
            seconds[key] = round(time.perf_counter() - started, 1)
            _write_json(timings_path, seconds)
        return value

    console.info(f"demo [{task.name}]: sampling target images from the base model")
    target_prompts = prompts(task.target_scenes)
    mined = sample_prompts(target_prompts, folder / "target-images", folder / "target-images.jsonl", model=sd,
                           weights=[], embeddings=[], n=s.mine_images, seed=10_000, s=s, for_mining=True)
    images = [Path(r["path"]) for r in mined]
    console.info(f"demo [{task.name}]: CARE-set (mine → cluster → refine)")
    care = timed("careset", _careset, folder, task, images, clip, s)
    console.info(f"demo [{task.name}]: adversarial tokens (invert)")
    adv = timed("invert", _invert, folder, task, images, sd, s)
    weights: dict[str, list[Path]] = {"base": []}
    for method in METHODS[1:]:
        for seed in erase_seeds(s):
            tag = model_tag(method, seed, s)
            console.info(f"demo [{task.name}]: erase ({LABELS[method]}" + (f", seed {seed})" if tag != method else ")"))
            weights[tag] = [timed(tag, _erase, folder, task, method, care, adv, sd, s, seed)]

    judge = Judge(load_clip(clip, device="cpu", dtype="fp32"))
    detector = load_detector()
    # what a method needs beyond the base model: STEREO-style and ReCARE both use the CARE-set and the
    # adversarial token; ESD uses neither
    shared = seconds.get("careset", 0.0) + seconds.get("invert", 0.0)

    def evaluate(method: str, tag: str) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
        figures, made = measure_model(task, folder / "samples" / tag, sd=sd, weights=weights[tag], clip=clip,
                                      judge=judge, detector=detector, images=dict.fromkeys(KINDS, s.eval_images),
                                      seed=0, s=s)
        cost = 0.0 if method == "base" else seconds.get(tag, 0.0) + (0.0 if method == "esd" else shared)
        return {**figures, "seconds": round(cost, 1), "images": {k: len(v) for k, v in made.items()}}, made

    rows: dict[str, dict[str, Any]] = {}
    grid: list[Any] = []
    for method in METHODS:
        console.info(f"demo [{task.name}]: sampling and scoring the {LABELS[method]}")
        per_seed = []
        for seed in [s.seed] if method == "base" else erase_seeds(s):
            row, made = evaluate(method, model_tag(method, seed, s))
            per_seed.append({"seed": seed, **row})
            if seed == s.seed:
                # two samples (the same seeds in every row) of each target prompt, then of each benign prompt
                grid += [Image.open(r["path"]).convert("RGB") for kind in ("target", "benign") for r in made[kind]
                         if r["image_index"] < 2]
        rows[method] = mean_over_seeds(per_seed)
    columns = 2 * (len(target_prompts) + len(task.benign_scenes))
    save_grid(grid, folder / "grid.png", columns=columns, scale=3)
    careset = parse_careset(orjson.loads(care.read_bytes()), source=str(care)).words
    result = TaskResult(task.name, rows, list(careset), {
        "care": str(care), "adversarial": str(adv), "grid": str(folder / "grid.png"),
        **{tag: str(paths[0]) for tag, paths in weights.items() if paths}})
    _write_json(folder / "results.json", {"format": "recare.demo", "version": 1, "task": task.name,
                                           "target": task.target, "concept": task.concept,
                                           "settings": {**asdict(s), "erase_lr": erase_lr(task, s),
                                                        "retain_weight": retain_weight(task, s),
                                                        "care_template": task.care_template},
                                           "careset": result.careset, "results": rows,
                                           "files": result.files})
    return result


FIGURES = ("target_rate", "target_detected", "care", "clip_unrelated")


def mean_over_seeds(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """One eraser's row from its rows per erase seed: one seed is its row; several give the mean of each
    figure (overall and per prompt) and of the time, no interval (each seed's own interval is in ``per_seed``)."""
    if len(per_seed) == 1:
        return {k: v for k, v in per_seed[0].items() if k != "seed"}
    row: dict[str, Any] = {key: float(np.mean([r[key] for r in per_seed])) for key in FIGURES}
    row.update({f"{key}_ci": None for key in FIGURES})
    row["per_prompt"] = {key: {prompt: float(np.mean([r["per_prompt"][key][prompt] for r in per_seed]))
                               for prompt in per_seed[0]["per_prompt"][key]} for key in FIGURES}
    row["seconds"] = round(float(np.mean([r["seconds"] for r in per_seed])), 1)
    row["images"] = per_seed[0]["images"]
    row["per_seed"] = per_seed
    return row


def format_table(results: list[TaskResult]) -> str:
    """A markdown table: one row per task and method."""
    from recare_cli.toyworld.tasks import TASKS

    def figure(row: dict[str, Any], key: str, percent: bool) -> str:
        main = f"{row[key]:.1%}" if percent else f"{row[key]:.3f}"
        bound = "{:.0%}" if percent else "{:.2f}"
        if "per_seed" in row:  # a mean over erase seeds: the range of the seeds' own figures
            values = [r[key] for r in row["per_seed"]]
            return f"{main} ({len(values)} erase seeds: {bound.format(min(values))}–{bound.format(max(values))})"
        ci = row.get(f"{key}_ci")
        return main if ci is None else f"{main} ({bound.format(ci[0])}–{bound.format(ci[1])})"

    lines = ["| task | model | target appears ↓, toy CLIP (95% CI) | target appears ↓, detector | "
             "CARE score ↑ (benign concept) | CLIP score ↑ (unrelated) | time (s) |", "|---|---|---|---|---|---|---|"]
    for result in results:
        task = TASKS[result.task]
        for method in METHODS:
            row = result.rows[method]
            lines.append(f"| {task.name} (erase '{task.target}', keep '{task.concept}') | {LABELS[method]} | "
                         f"{figure(row, 'target_rate', True)} | {figure(row, 'target_detected', True)} | "
                         f"{figure(row, 'care', False)} | "
                         f"{figure(row, 'clip_unrelated', False)} | {row['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def worst_unrelated(result: TaskResult) -> dict[str, tuple[str, float, float]]:
    """Per eraser, the unrelated prompt whose CLIP score fell most below the base model's: (prompt, base,
    eraser). The table's mean over five prompts can hide a concept wrecked on one of them."""
    base = result.rows["base"]["per_prompt"]["clip_unrelated"]
    out = {}
    for method in METHODS[1:]:
        mine = result.rows[method]["per_prompt"]["clip_unrelated"]
        prompt = max(base, key=lambda p: base[p] - mine[p])
        out[method] = (prompt, base[prompt], mine[prompt])
    return out


def bars(result: TaskResult) -> dict[str, bool]:
    """The issue's bars for ReCARE against the base model, and whether it keeps the concept best."""
    base, recare = result.rows["base"], result.rows["recare"]
    return {"target_at_most_20pct_of_base_by_toy_clip": recare["target_rate"] <= 0.2 * base["target_rate"],
            "target_at_most_20pct_of_base_by_detector": recare["target_detected"] <= 0.2 * base["target_detected"],
            "care_at_least_90pct_of_base": recare["care"] >= 0.9 * base["care"],
            "care_best_of_erasers": recare["care"] >= max(result.rows[m]["care"] for m in ("esd", "stereo"))}
