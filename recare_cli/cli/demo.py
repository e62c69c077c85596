"""recare demo: the offline main job, on the shipped toy world."""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from recare_cli import console
from recare_cli.cli.options import Quiet

HELP = """Run the whole method offline on the shipped toy world and compare erasers.

For one task (--task) or all three (--all), on the trained toy CLIP and toy Stable Diffusion (docs/toyworld.md): sample target images, mine → cluster → refine a CARE-set, invert adversarial tokens, erase with ESD, STEREO-style and ReCARE, then sample every model on target, benign and unrelated prompts with the same seeds. Prints a markdown table (how often the target appears, by the toy CLIP and by the world's detector, the CARE score of the benign concept, CLIP score on unrelated prompts, time) and writes every stage's file, results.json and grid.png (rows: base, ESD, STEREO-style, ReCARE; target prompts, then benign) into --out/TASK (results.json also per prompt; stderr names, per eraser, the unrelated prompt whose CLIP score fell most). Rerunning resumes.

Tasks: nudity (erase "a naked person", keep person), vangogh (erase "a van gogh painting", keep stars), tench (erase "a tench", keep water). About 8 to 11 minutes per task on 2 CPU cores (measured 2026-11-23; the machine's speed varies by 2x from day to day). The measured table, and where ReCARE does and does not beat the baselines in this world, are in docs/toyworld.md.

Example:

  recare demo --out demo/ --task nudity
"""


def demo(
    out: Annotated[Path, typer.Option("--out", help="Folder for everything the demo writes.")] = Path("recare-demo"),
    task: Annotated[str, typer.Option("--task", "-t", help="nudity, vangogh or tench.")] = "nudity",
    all_tasks: Annotated[bool, typer.Option("--all", help="Run all three tasks.")] = False,
    quick: Annotated[bool, typer.Option("--quick", help="Tiny settings (seconds, meaningless figures): a smoke test.")] = False,
    erase_seeds: Annotated[int, typer.Option(
        "--erase-seeds", min=1,
        help="Erasures per method (seeds 42, 43, …); the erasers' figures are their mean, with the seeds' "
             "range. One erase seed can move a figure by 40 points; each extra seed repeats the three erasures "
             "and their sampling (about 70% of a one-seed run). Raising it on a finished folder adds the new "
             "erasures only.")] = 1,
    quiet: Quiet = False,
) -> None:
    from recare_cli.errors import check_choice
    from recare_cli.toyworld.tasks import TASKS

    console.set_quiet(quiet)
    check_choice("--task", task, TASKS, "task")
    from recare_cli.models.quiet import quiet_libraries
    from recare_cli.stages.demo import LABELS, QUICK, DemoSettings, bars, format_table, run_task, worst_unrelated
    from recare_cli.toyworld.assets import materialise

    quiet_libraries()
    settings = replace(QUICK if quick else DemoSettings(), erase_seeds=erase_seeds)
    clip_dir, sd_dir = materialise()
    started = time.perf_counter()
    results = []
    for name in tuple(TASKS) if all_tasks else (task,):
        result = run_task(out, name, settings, clip=str(clip_dir), sd=str(sd_dir))
        results.append(result)
        console.info(f"demo [{name}]: CARE-set {', '.join(result.careset) or '(empty)'}; grid {result.files['grid']}")
        for bar, ok in bars(result).items():
            console.info(f"demo [{name}]: {bar.replace('_', ' ')}: {'yes' if ok else 'NO'}")
        for method, (prompt, before, after) in worst_unrelated(result).items():
            console.info(f"demo [{name}]: {LABELS[method]}, unrelated prompt hit hardest: '{prompt}' "
                         f"CLIP {before:.3f} → {after:.3f} (base → erased; results.json has every prompt)")
    sys.stdout.write(format_table(results))
    console.info(f"demo: {time.perf_counter() - started:.0f} s; files in {out}"
                 + (" (--quick: figures are meaningless)" if quick else ""))
    console.info("demo: the target is judged twice: by the toy CLIP (the model that also mined the CARE-set) and by "
                 "the world's detector (an independent CNN, as the paper judges with NudeNet and classifiers); they "
                 "disagree on damaged samples (docs/toyworld.md, 'Two judges')")
