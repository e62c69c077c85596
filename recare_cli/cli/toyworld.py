"""recare toyworld: train, evaluate and locate the small trained text-to-image world."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from recare_cli import console
from recare_cli.cli.options import Quiet

HELP = """A small text-to-image world (32×32 scenes, a toy CLIP, a toy Stable Diffusion) that runs on a CPU.

Examples:

  recare toyworld path                 # print the shipped model folders (built into the cache on first use)

  recare toyworld train --out tw/      # retrain from scratch (seeded; about an hour on 2 CPU cores)

  recare toyworld evaluate --clip tw/clip --sd tw/sd > report.json
"""

app = typer.Typer(help=HELP, no_args_is_help=True)


@app.command("path", help="Print the CLIP and Stable Diffusion folders of the shipped toy world (one per line: clip, then sd), materialising them into the recare cache on first use.\n\nExample:\n\n  recare mine imgs/ --target naked --clip \"$(recare toyworld path | head -n 1)\"")
def path(quiet: Quiet = False) -> None:
    from recare_cli.toyworld.assets import materialise

    console.set_quiet(quiet)
    clip_dir, sd_dir = materialise()
    sys.stdout.write(f"{clip_dir}\n{sd_dir}\n")


@app.command("train", help="Train the toy CLIP, VAE and UNet from scratch into OUT/clip and OUT/sd (seeded: same settings and thread count, same weights). The CLIP and the VAE are checkpointed; a rerun resumes.\n\nExample:\n\n  recare toyworld train --out tw/ --threads 2")
def train(
    out: Annotated[Path, typer.Option("--out", help="Output folder.")],
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
    quick: Annotated[bool, typer.Option("--quick", help="Smoke run: 3 steps per model, tiny widths (untrained).")] = False,
    clip_steps: Annotated[int | None, typer.Option("--clip-steps", min=1)] = None,
    vae_steps: Annotated[int | None, typer.Option("--vae-steps", min=1)] = None,
    unet_steps: Annotated[int | None, typer.Option("--unet-steps", min=1)] = None,
    snr_gamma: Annotated[str | None, typer.Option("--snr-gamma", help="Min-SNR-γ weighting of the UNet loss: γ above 0, or 'off' for the plain ε-MSE (default 5, as the shipped world).")] = None,
    minutes: Annotated[float | None, typer.Option("--minutes", help="Time cap per model; a capped run is no longer reproducible.")] = None,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="torch CPU threads.")] = None,
    quiet: Quiet = False,
) -> None:
    from recare_cli.toyworld.train import main, snr_gamma_value

    console.set_quiet(quiet)
    if snr_gamma is not None:
        try:
            snr_gamma_value(snr_gamma)
        except ValueError as err:
            from recare_cli.errors import UsageError

            raise UsageError(f"--snr-gamma: {err}") from err
    argv = ["--out", str(out), "--seed", str(seed)]
    for flag, value in (("--clip-steps", clip_steps), ("--vae-steps", vae_steps), ("--unet-steps", unet_steps),
                        ("--snr-gamma", snr_gamma), ("--minutes", minutes), ("--threads", threads)):
        if value is not None:
            argv += [flag, str(value)]
    if quick:
        argv.append("--quick")
    raise typer.Exit(main(argv))


@app.command("evaluate", help="Measure a toy world: the CLIP's zero-shot accuracy per attribute on held-out scenes and, with --sd, how often samples show the prompted attributes (judged by the CLIP). JSON on stdout.\n\nExample:\n\n  recare toyworld evaluate --clip tw/clip --sd tw/sd --grid samples.png > report.json")
def evaluate(
    clip: Annotated[Path | None, typer.Option("--clip", help="CLIP folder (default: the shipped one).")] = None,
    sd: Annotated[Path | None, typer.Option("--sd", help="Stable Diffusion folder to sample from.")] = None,
    n_clip: Annotated[int, typer.Option("--n-clip", min=1, help="Held-out images for the CLIP.")] = 1000,
    n_sd: Annotated[int, typer.Option("--n-sd", min=1, help="Samples from the SD model.")] = 64,
    steps: Annotated[int, typer.Option("--steps", min=1, help="Sampling steps.")] = 50,
    guidance: Annotated[float, typer.Option("--guidance", help="Classifier-free guidance scale.")] = 7.5,
    grid: Annotated[Path | None, typer.Option("--grid", help="Write the samples as a PNG grid.")] = None,
    quiet: Quiet = False,
) -> None:
    from recare_cli.models.quiet import quiet_libraries
    from recare_cli.toyworld.evaluate import clip_accuracy, sd_accuracy

    console.set_quiet(quiet)
    quiet_libraries()
    if clip is None:
        from recare_cli.toyworld.assets import materialise

        clip, _ = materialise()
    report = {"clip": clip_accuracy(clip, n=n_clip)}
    if sd is not None:
        report["sd"] = sd_accuracy(sd, clip, n=n_sd, steps=steps, guidance=guidance, grid=grid)
    sys.stdout.write(json.dumps(report, indent=2) + "\n")
