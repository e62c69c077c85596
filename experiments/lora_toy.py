"""ReCARE with LoRA adapters (`erase --lora`) on a toy-world task, judged exactly as `recare demo` judges its models.

Reads a finished demo task folder (its CARE-set, adversarial token and results.json), trains ReCARE with the
demo's settings for the task (train method, iterations, DDIM steps, rate, retain weight, erase seed) but LoRA
adapters of each given RANK[@LR] (LR: the demo's rate when left out), samples each model on the demo's prompts
with the demo's seeds and image counts, and prints a markdown table: the demo's base-model and full-parameter
ReCARE rows (from results.json, the same images and judges) and one row per LoRA configuration.

    python -m experiments.lora_toy --from recare-demo/nudity 4 4@5e-4
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="+", help="RANK or RANK@LR, e.g. 4 or 4@5e-4")
    parser.add_argument("--from", dest="source", type=Path, required=True,
                        help="a finished demo task folder (care.json, adv.safetensors, results.json)")
    parser.add_argument("--out", type=Path, default=Path("lora-toy"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    import orjson
    import torch

    from recare_cli import console
    from recare_cli.demo.judge import measure_model
    from recare_cli.demo.settings import KINDS, DemoSettings, erase_lr, retain_weight
    from recare_cli.models.clip import load_clip
    from recare_cli.models.quiet import quiet_libraries
    from recare_cli.stages.erase import run_erase
    from recare_cli.toyworld.assets import materialise
    from recare_cli.toyworld.detector import load as load_detector
    from recare_cli.toyworld.evaluate import Judge
    from recare_cli.toyworld.tasks import TASKS

    torch.set_num_threads(args.threads)
    quiet_libraries()
    console.set_quiet(True)
    demo = orjson.loads((args.source / "results.json").read_bytes())
    task, s = TASKS[demo["task"]], DemoSettings()
    clip, sd = (str(p) for p in materialise())
    judge, detector = Judge(load_clip(clip, device="cpu", dtype="fp32")), load_detector()
    rows = [(label, demo["results"][key]) for label, key in (("base model", "base"), ("ReCARE (full parameters)",
                                                                                        "recare"))]
    for config in args.configs:
        rank, _, lr = config.partition("@")
        opts = lora_options(task, s, args.source, sd, int(rank), float(lr) if lr else erase_lr(task, s),
                            retain_weight(task, s), args.out / task.name / config.replace("@", "_"))
        started = time.perf_counter()
        if not Path(opts.output).is_file():
            run_erase(opts)
        seconds = time.perf_counter() - started
        figures, _ = measure_model(task, Path(opts.output).parent / "samples", sd=sd, weights=[Path(opts.output)],
                                   clip=clip, judge=judge, detector=detector,
                                   images=dict.fromkeys(KINDS, s.eval_images), seed=0, s=s)
        rows.append((f"ReCARE, LoRA rank {rank}, lr {opts.lr:g}", {**figures, "seconds": seconds}))
    print(f"| {task.name}: model | target appears ↓, toy CLIP | target appears ↓, detector | CARE score ↑ | "
          "CLIP score ↑ (unrelated) | erase s |")
    print("|---|---|---|---|---|---|")
    for label, r in rows:
        print(f"| {label} | {r['target_rate']:.1%} | {r['target_detected']:.1%} | {r['care']:.3f} | "
              f"{r['clip_unrelated']:.3f} | {r.get('seconds') or 0:.0f} |")
    print(f"\nReproduce: python -m experiments.lora_toy --from {args.source} " + " ".join(args.configs))
    return 0


def lora_options(task: Any, s: Any, source: Path, sd: str, rank: int, lr: float, retain: float, folder: Path) -> Any:
    """The demo's ReCARE erasure of ``task`` (``demo.steps.erase``'s options) with LoRA adapters of ``rank``."""
    from recare_cli.stages.erase import EraseOptions

    folder.mkdir(parents=True, exist_ok=True)
    return EraseOptions(target=task.target, care=str(source / "care.json"), adversarial=str(source / "adv.safetensors"),
                        method="recare", train_method=s.train_method, iterations=s.erase_iterations, lr=lr,
                        retain_weight=retain, ddim_steps=s.ddim_steps, seed=s.seed, resolution=32, model=sd,
                        device="cpu", output=str(folder / "weights.safetensors"), checkpoint_every=0, lora=rank)


if __name__ == "__main__":
    raise SystemExit(main())
