"""recare demo: the offline main job."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from recare_cli import console
from recare_cli.cli.options import Quiet, Seed

HELP = """Run the CARE-set pipeline offline on tiny models and images built on the spot.

Writes images/, models/, candidates.jsonl, clustered.jsonl and care.json into --out, and prints the same pipeline as shell commands. The models are UNTRAINED: this shows the pipeline working without a GPU or a model hub, not meaningful words.

Example:

  recare demo --out demo/
"""


def demo(
    out: Annotated[Path, typer.Option("--out", help="Folder for everything the demo writes.")] = Path("recare-demo"),
    target: Annotated[str, typer.Option("--target", "-t", help="Target word.")] = "circle",
    images: Annotated[int, typer.Option("--images", min=3, help="Images to draw.")] = 48,
    seed: Seed = 42,
    quiet: Quiet = False,
) -> None:
    from recare_cli.stages.demo import run_demo

    console.set_quiet(quiet)
    files = run_demo(out, target=target, n_images=images, seed=seed)
    clip = out / "models" / "tiny-clip"
    console.info("the same pipeline from the shell:\n"
                 f"  recare mine {out / 'images'} --target {target} --clip {clip} "
                 f"| recare cluster -n 6 | recare refine > care.json")
    for name, path in files.items():
        sys_path = str(path)
        console.info(f"  {name:<10} {sys_path}")
