"""Sweep erase settings on one toy-world task, reusing a demo run's CARE-set and adversarial token.

Each configuration is
METHOD:TRAIN_METHOD:LR:ITERATIONS[:RETAIN_WEIGHT[:TIMESTEPS[:LR_SCHEDULE[:XT_BATCH[:TOKENS[:GUIDANCE[:LORA]]]]]]]
(TIMESTEPS: uniform, the default, or stratified; LR_SCHEDULE: constant, the default, linear or
cosine; XT_BATCH: x_t samples per iteration, 1 by default; TOKENS: how many of invert's adversarial
tokens join the erase set, `erase --num-adversarial`, 2 by default: 0 erases the target phrase alone,
with the same anchors and retain prompts; GUIDANCE: `erase --guidance`, 2 by default, the compositional
scale s of recare and recare-noretain, or ESD's negative guidance g; LORA: `erase --lora RANK`, LoRA adapters of that
rank instead of the parameters themselves, `-` or left out for none); it is trained once per erase seed
(--erase-seeds) and every model is sampled on the task's target, benign and unrelated prompts (8/8/4
images per prompt) and judged as the demo judges (the target by the toy CLIP and by the detector).
Prints a markdown table (one row per configuration and erase seed, then the mean over seeds) and the
command to reproduce it.

The demo's STEREO-style row is `recare-noretain` (ReCARE's objective without the retain loss); configurations
written `stereo:…` in docs/research-log.md ran that objective, which is `recare-noretain:…` today (`erase
--method stereo` is published STEREO, which anchors on its own prompts and is not swept here).

Tuning: the sampling seeds start at --sample-seed, 1000 by default, so a setting chosen here is not
chosen on the images the demo reports (the demo samples seeds 0–15 per prompt and mines 10000+).

    python -m experiments.demo_sweep --from recare-demo/nudity esd:xattn:5e-4:100 recare:xattn:5e-4:100
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="+",
                        help="METHOD:TRAIN_METHOD:LR:ITERATIONS[:RETAIN_WEIGHT[:TIMESTEPS[:LR_SCHEDULE"
                             "[:XT_BATCH[:TOKENS[:GUIDANCE[:LORA]]]]]]], or base")
    parser.add_argument("--from", dest="source", type=Path, required=True,
                        help="a demo task folder (care.json, adv.safetensors), e.g. recare-demo/nudity")
    parser.add_argument("--out", type=Path, default=Path("demo-sweep"))
    parser.add_argument("--ddim-steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sample-seed", type=int, default=1000,
                        help="first sampling seed per prompt (the demo reports seeds 0-15: keep clear of them)")
    parser.add_argument("--erase-seeds", default="42", help="comma-separated erase seeds, e.g. 42,43,44")
    args = parser.parse_args(argv)

    import orjson
    import torch

    from recare_cli import console
    from recare_cli.demo.settings import DemoSettings
    from recare_cli.models.clip import load_clip
    from recare_cli.models.quiet import quiet_libraries
    from recare_cli.toyworld.assets import materialise
    from recare_cli.toyworld.detector import load as load_detector
    from recare_cli.toyworld.evaluate import Judge
    from recare_cli.toyworld.tasks import TASKS

    torch.set_num_threads(args.threads)
    quiet_libraries()
    console.set_quiet(True)
    task = TASKS[orjson.loads((args.source / "results.json").read_bytes())["task"]
                 if (args.source / "results.json").is_file() else args.source.name]
    clip, sd = (str(p) for p in materialise())
    judge = Judge(load_clip(clip, device="cpu", dtype="fp32"))
    detector = load_detector()
    settings = DemoSettings()
    erase_seeds = [int(x) for x in args.erase_seeds.split(",")]
    rows: list[tuple[str, str, float, float, float, float, float]] = []
    for config in args.configs:
        method = config.split(":")[0]
        for erase_seed in [0] if method == "base" else erase_seeds:
            rows.append((config, "-" if method == "base" else str(erase_seed),
                         *_measure(config, erase_seed, args, task, sd, clip, judge, detector, settings)))
            print(f"done {config} seed {rows[-1][1]}", file=sys.stderr, flush=True)
    print(f"| {task.name}: config | erase seed | target appears: toy CLIP | target appears: detector | CARE score | "
          "CLIP score (unrelated) | erase s |")
    print("|---|---|---|---|---|---|---|")
    for config, seed, rate, detected, care_score, clip_score, seconds in rows:
        print(f"| {config} | {seed} | {rate:.1%} | {detected:.1%} | {care_score:.3f} | {clip_score:.3f} "
              f"| {seconds:.0f} |")
    for config in args.configs:
        mine = [r for r in rows if r[0] == config]
        if len(mine) > 1:
            mean = [sum(float(r[i]) for r in mine) / len(mine) for i in (2, 3, 4, 5, 6)]
            print(f"| {config} | mean of {len(mine)} | {mean[0]:.1%} | {mean[1]:.1%} | {mean[2]:.3f} | {mean[3]:.3f} "
                  f"| {mean[4]:.0f} |")
    print(f"\nReproduce: python -m experiments.demo_sweep --from {args.source} --sample-seed {args.sample_seed} "
          f"--erase-seeds {args.erase_seeds} --ddim-steps {args.ddim_steps} " + " ".join(args.configs))
    return 0


def _measure(config: str, erase_seed: int, args: argparse.Namespace, task: Any, sd: str, clip: str, judge: Any,
             detector: Any, settings: Any) -> tuple[float, float, float, float, float]:
    """Train (unless already there), sample and judge one configuration: target rate (toy CLIP, detector), CARE,
    CLIP, seconds."""
    from recare_cli.demo.judge import measure_model
    from recare_cli.stages.erase import run_erase

    method = config.split(":")[0]
    weights: list[Path] = []
    seconds = 0.0
    folder = args.out / task.name / config.replace(":", "_")
    if method != "base":
        folder = folder / f"erase-seed-{erase_seed}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "weights.safetensors"
        opts = erase_options(config, erase_seed, target=task.target, source=args.source, sd=sd,
                             ddim_steps=args.ddim_steps, output=path)
        if path.is_file():
            _check_cached(path, opts)
        else:
            started = time.perf_counter()
            run_erase(opts)
            seconds = time.perf_counter() - started
        weights = [path]
    figures, _ = measure_model(task, folder / f"sample-seed-{args.sample_seed}", sd=sd, weights=weights,
                                    clip=clip, judge=judge, detector=detector,
                                    images={"target": 8, "benign": 8, "unrelated": 4},
                                    seed=args.sample_seed, s=settings)
    return figures["target_rate"], figures["target_detected"], figures["care"], figures["clip_unrelated"], seconds


def erase_options(config: str, erase_seed: int, *, target: str, source: Path, sd: str, ddim_steps: int,
                  output: Path) -> Any:
    """The ``EraseOptions`` of one configuration
    METHOD:TRAIN_METHOD:LR:ITERATIONS[:RETAIN_WEIGHT[:TIMESTEPS[:LR_SCHEDULE[:XT_BATCH[:TOKENS[:GUIDANCE[:LORA]]]]]]]
    (fields left out take ``erase``'s defaults, but RETAIN_WEIGHT, which is 1) for erase seed ``erase_seed``,
    with the CARE-set and adversarial token of the demo folder ``source`` (neither ESD takes them)."""
    from recare_cli.stages.erase import WITHOUT_CARESET, EraseOptions

    parts = config.split(":")
    method, train_method, lr, iterations = parts[0], parts[1], float(parts[2]), int(parts[3])
    extra = parts[4:]
    return EraseOptions(
        target=target, care=None if method in WITHOUT_CARESET else str(source / "care.json"),
        adversarial=None if method in WITHOUT_CARESET else str(source / "adv.safetensors"), method=method,
        train_method=train_method, iterations=iterations, lr=lr,
        retain_weight=float(extra[0]) if len(extra) > 0 else 1.0,
        timesteps=extra[1] if len(extra) > 1 else EraseOptions.timesteps,
        lr_schedule=extra[2] if len(extra) > 2 else EraseOptions.lr_schedule,
        xt_batch=int(extra[3]) if len(extra) > 3 else EraseOptions.xt_batch,
        num_adversarial=int(extra[4]) if len(extra) > 4 else EraseOptions.num_adversarial,
        guidance=float(extra[5]) if len(extra) > 5 else EraseOptions.guidance,
        lora=int(extra[6]) if len(extra) > 6 and extra[6] != "-" else EraseOptions.lora,
        seed=erase_seed, ddim_steps=ddim_steps, resolution=32, model=sd, device="cpu", output=str(output),
        checkpoint_every=0)


def _check_cached(path: Path, opts: Any) -> None:
    """An erasure left by an earlier run is reused only if it was made from the same CARE-set, token and
    settings: the cache is keyed by folder name, and another --from into the same --out would otherwise
    report the old erasure under the new source. Settings a file predates count as their defaults."""
    import dataclasses

    from recare_cli.io.digest import sha256_file
    from recare_cli.models.weights import decode_metadata, read_safetensors
    from recare_cli.stages.erase import EraseOptions

    meta = decode_metadata(read_safetensors(path)[1])
    defaults = {f.name: f.default for f in dataclasses.fields(EraseOptions)}
    made = meta.get("hyperparameters") or {}
    wanted = opts.hyperparameters(opts.resolution)
    differ = [k for k, v in wanted.items() if made.get(k, defaults.get(k)) != v]
    if opts.care is not None and meta.get("careset_sha256") != sha256_file(opts.care):
        differ.append("CARE-set")
    adversarial = meta.get("adversarial") or {}
    if opts.adversarial is not None and adversarial.get("sha256") != sha256_file(opts.adversarial):
        differ.append("adversarial token")
    if differ:
        raise SystemExit(f"{path}: made with another {', '.join(differ)} than this run asks for; "
                         "pass another --out (or delete the folder)")


if __name__ == "__main__":
    raise SystemExit(main())
