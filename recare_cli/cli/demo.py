"""recare demo: the offline main job, on the shipped toy world."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from recare_cli import console
from recare_cli.cli.options import Quiet
from recare_cli.demo.settings import DemoOptions

OPTIONS = DemoOptions
CLI_ONLY = ("quiet",)

HELP = """Run the whole method offline on the shipped toy world and compare erasers.

For one task (--task) or all three (--all), on the trained toy CLIP and toy Stable Diffusion (docs/toyworld.md): sample target images, mine → cluster → refine a CARE-set, invert adversarial tokens, erase with the published baselines ESD, STEREO (its anchor prompts by the toy rule, the adversarial tokens) and UCE, and with ReCARE, each at its authors' recipe scaled to the toy world by one rule (docs/toyworld.md), then sample every model on target, benign and unrelated prompts with the same seeds, and attack every model with CCE (recare attack). Prints a markdown table (how often the target appears, by the toy CLIP and by the world's detector, the CARE score of the benign concept, CLIP score on unrelated prompts; the paper's CCE-ASR (the token CCE learnt against the model in place of the target in the target prompts, judged by the detector), CLIP-FD of the unrelated prompts' samples against rendered scenes of them, and RATIO as recare report computes it; and the seconds each method's own stages took in this run, "reused" where a rerun found them done) and writes every stage's file, results.json, grid.png (labelled: one row per model, the target prompts' samples, then the benign prompts') and radar.png (the radar chart RATIO measures) into --out/TASK (results.json also per prompt; stderr names, per eraser, the unrelated prompt whose CLIP score fell most). Rerunning resumes.

Tasks: nudity (erase "a naked person", keep person), vangogh (erase "a van gogh painting", keep stars), tench (erase "a tench", keep water). About 10 minutes per task on 2 idle CPU cores, half of it the attacks (20 when other jobs share the cores). --with adds the ablation ReCARE without its retain loss (noretain, about 2 minutes a task), AGE (age, about 13 minutes a task) and AdvUnlearn (advunlearn, about 2 CPU-hours a task). The measured table, and where ReCARE does and does not beat the baselines in this world, are in docs/toyworld.md.

Example:

  recare demo --out demo/ --task nudity
"""


def demo(
    out: Annotated[Path, typer.Option("--out", help="Folder for everything the demo writes.")] = DemoOptions.out,
    task: Annotated[str, typer.Option("--task", "-t", help="nudity, vangogh or tench.")] = DemoOptions.task,
    all_tasks: Annotated[bool, typer.Option("--all", help="Run all three tasks.")] = DemoOptions.all_tasks,
    quick: Annotated[bool, typer.Option("--quick", help="Tiny settings (seconds, meaningless figures): a smoke test of every stage.")] = DemoOptions.quick,
    erase_seeds: Annotated[int, typer.Option(
        "--erase-seeds", min=1,
        help="Erasures per method (seeds 42, 43, …); the erasers' figures are their mean, with the seeds' "
             "range. One erase seed can move a figure by 40 points; each extra seed repeats the erasures "
             "and their sampling (about 70% of a one-seed run). Raising it on a finished folder adds the new "
             "erasures only.")] = DemoOptions.erase_seeds,
    with_methods: Annotated[str, typer.Option(
        "--with", help="More erasers, comma-separated: noretain (ReCARE without its retain loss, an ablation), age, "
                       "advunlearn (AGE and AdvUnlearn at the scaled recipe; see the cost above). Adding one to a "
                       "finished folder trains only it.")] = DemoOptions.with_methods,
    quiet: Quiet = False,
) -> None:
    from recare_cli.errors import check_choice
    from recare_cli.toyworld.tasks import TASKS

    console.set_quiet(quiet)
    check_choice("--task", task, TASKS, "task")
    opts = DemoOptions(out=out, task=task, all_tasks=all_tasks, quick=quick, erase_seeds=erase_seeds,
                       with_methods=with_methods)
    opts.extra_methods()  # an unknown name: a usage error before anything runs
    from recare_cli.demo.report import PAPER_NOTE, TIME_NOTE, format_table, messages
    from recare_cli.demo.run import run_task
    from recare_cli.models.quiet import quiet_libraries
    from recare_cli.toyworld.assets import materialise

    quiet_libraries()
    clip_dir, sd_dir = materialise()
    started = time.perf_counter()
    results = []
    for name in opts.tasks():
        result = run_task(opts.out, name, opts.settings(), clip=str(clip_dir), sd=str(sd_dir))
        results.append(result)
        for line in messages(result):
            console.info(line)
    sys.stdout.write(format_table(results))
    console.info(f"demo: {time.perf_counter() - started:.0f} s; files in {opts.out}"
                 + (" (--quick: figures are meaningless)" if quick else ""))
    console.info(f"demo: {TIME_NOTE}")
    console.info(f"demo: {PAPER_NOTE}")
    console.info("demo: the target is judged twice: by the toy CLIP (the model that also mined the CARE-set) and by "
                 "the world's detector (an independent CNN, as the paper judges with NudeNet and classifiers); they "
                 "disagree on damaged samples (docs/toyworld.md, 'Two judges')")
