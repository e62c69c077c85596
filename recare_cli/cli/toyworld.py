"""recare toyworld: train, evaluate and locate the small trained text-to-image world."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from recare_cli import console
from recare_cli.cli.options import Quiet
from recare_cli.toyworld.options import (
    STAGES,
    DetectorOptions,
    EvaluateOptions,
    ShipOptions,
    TrainConfig,
    TrainOptions,
)


@dataclass(frozen=True)
class PathOptions:
    """``recare toyworld path`` takes no option but --quiet."""


OPTIONS = {"path": PathOptions, "train": TrainOptions, "evaluate": EvaluateOptions, "ship": ShipOptions,
           "detector": DetectorOptions}
CLI_ONLY = dict.fromkeys(OPTIONS, ("quiet",))

HELP = """A small text-to-image world (32×32 scenes, a toy CLIP, a toy Stable Diffusion) that runs on a CPU.

Examples:

  recare toyworld path                 # print the shipped model folders (built into the cache on first use)

  recare toyworld train --out tw/      # retrain from scratch (seeded; about an hour on 2 CPU cores)

  recare toyworld evaluate --clip tw/clip --sd tw/sd > report.json

  recare toyworld ship --trained tw/ --report report.json   # make it the shipped world

  recare toyworld detector --ship      # then train the target detector on its VAE
"""

app = typer.Typer(help=HELP, no_args_is_help=True)

_QUICK = TrainConfig.quick()


def _recipe(name: str) -> str:
    """The recipe's value of a TrainConfig field, as a help text says it."""
    full, quick = getattr(TrainConfig, name), getattr(_QUICK, name)
    return f"(default: {full})" if full == quick else f"(default: {full}, {quick} with --quick)"


@app.command("path", help="Print the CLIP and Stable Diffusion folders of the shipped toy world (one per line: clip, then sd), materialising them into the recare cache on first use.\n\nExample:\n\n  recare mine imgs/ --target naked --clip \"$(recare toyworld path | head -n 1)\"")
def path(quiet: Quiet = False) -> None:
    from recare_cli.toyworld.assets import materialise

    console.set_quiet(quiet)
    clip_dir, sd_dir = materialise()
    sys.stdout.write(f"{clip_dir}\n{sd_dir}\n")


@app.command("train", help="Train the toy CLIP, VAE and UNet from scratch into OUT/clip and OUT/sd (seeded: same options and thread count, same weights). The CLIP and the VAE are checkpointed (OUT/clip, OUT/vae): a rerun with the same options reuses them, so a run can be split with --until.\n\nExample:\n\n  recare toyworld train --out tw/ --threads 2")
def train(
    out: Annotated[Path, typer.Option("--out", help="Output folder (clip/, sd/, train_log.json).")],
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = TrainOptions.seed,
    quick: Annotated[bool, typer.Option("--quick", help="Smoke run: 3 steps per model, tiny widths (untrained).")] = TrainOptions.quick,
    clip_steps: Annotated[int | None, typer.Option("--clip-steps", min=1, help=f"CLIP training steps {_recipe('clip_steps')}.")] = TrainOptions.clip_steps,
    vae_steps: Annotated[int | None, typer.Option("--vae-steps", min=1, help=f"VAE training steps {_recipe('vae_steps')}.")] = TrainOptions.vae_steps,
    unet_steps: Annotated[int | None, typer.Option("--unet-steps", min=1, help=f"UNet training steps {_recipe('unet_steps')}.")] = TrainOptions.unet_steps,
    clip_batch: Annotated[int | None, typer.Option("--clip-batch", min=1, help=f"CLIP batch size {_recipe('clip_batch')}.")] = TrainOptions.clip_batch,
    vae_batch: Annotated[int | None, typer.Option("--vae-batch", min=1, help=f"VAE batch size {_recipe('vae_batch')}.")] = TrainOptions.vae_batch,
    unet_batch: Annotated[int | None, typer.Option("--unet-batch", min=1, help=f"UNet batch size {_recipe('unet_batch')}.")] = TrainOptions.unet_batch,
    n_images: Annotated[int | None, typer.Option("--n-images", min=1, help=f"Scenes the VAE and the UNet train on {_recipe('n_images')}.")] = TrainOptions.n_images,
    unet_layers: Annotated[int | None, typer.Option("--unet-layers", min=1, help=f"Resnet + attention layers per UNet down block {_recipe('unet_layers')}.")] = TrainOptions.unet_layers,
    snr_gamma: Annotated[str | None, typer.Option("--snr-gamma", help=f"Min-SNR-γ weighting of the UNet loss: γ above 0, or 'off' for the plain ε-MSE (default: {TrainConfig.snr_gamma:g}).")] = TrainOptions.snr_gamma,
    minutes: Annotated[float | None, typer.Option("--minutes", help="Time cap per model; a capped run is no longer reproducible.")] = TrainOptions.minutes,
    until: Annotated[str, typer.Option("--until", help="Stop after this stage: clip, vae, vae-only (the VAE alone, so that it can train beside an --until clip run) or unet (everything). A later run with the same options resumes.")] = TrainOptions.until,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="torch CPU threads (default: torch's choice).")] = TrainOptions.threads,
    quiet: Quiet = False,
) -> None:
    from recare_cli.errors import UsageError, check_choice

    console.set_quiet(quiet)
    check_choice("--until", until, STAGES, "stage")
    opts = TrainOptions(out=out, seed=seed, quick=quick, clip_steps=clip_steps, vae_steps=vae_steps,
                        unet_steps=unet_steps, clip_batch=clip_batch, vae_batch=vae_batch, unet_batch=unet_batch,
                        n_images=n_images, unet_layers=unet_layers, snr_gamma=snr_gamma, minutes=minutes,
                        until=until, threads=threads)
    try:
        config = opts.config()
    except ValueError as err:
        raise UsageError(str(err)) from err
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    from recare_cli.toyworld.train import train_all

    log = train_all(out, config, until=until)
    if until != "unet":
        console.info(f"stopped after the {until} stage: {out}")
    else:
        console.info(f"trained in {log['training_seconds']} s of training steps: {out / 'clip'}, {out / 'sd'}")


@app.command("evaluate", help="Measure a toy world: the CLIP's zero-shot accuracy per attribute on held-out scenes and, with --sd, how often samples show the prompted attributes (judged by the CLIP). JSON on stdout.\n\nExample:\n\n  recare toyworld evaluate --clip tw/clip --sd tw/sd --grid samples.png > report.json")
def evaluate(
    clip: Annotated[Path | None, typer.Option("--clip", help="CLIP folder (default: the shipped one).")] = EvaluateOptions.clip,
    sd: Annotated[Path | None, typer.Option("--sd", help="Stable Diffusion folder to sample from.")] = EvaluateOptions.sd,
    n_clip: Annotated[int, typer.Option("--n-clip", min=1, help="Held-out images for the CLIP.")] = EvaluateOptions.n_clip,
    n_sd: Annotated[int, typer.Option("--n-sd", min=1, help="Samples from the SD model.")] = EvaluateOptions.n_sd,
    steps: Annotated[int, typer.Option("--steps", min=1, help="Sampling steps.")] = EvaluateOptions.steps,
    guidance: Annotated[float, typer.Option("--guidance", help="Classifier-free guidance scale.")] = EvaluateOptions.guidance,
    scheduler: Annotated[str, typer.Option("--scheduler", help="Sampler, as recare sample --scheduler names it (default: the model's own).")] = EvaluateOptions.scheduler,
    no_clip: Annotated[bool, typer.Option("--no-clip", help="Skip the CLIP's own accuracy (the samples only).")] = EvaluateOptions.no_clip,
    grid: Annotated[Path | None, typer.Option("--grid", help="Write the samples as a PNG grid.")] = EvaluateOptions.grid,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="torch CPU threads (default: torch's choice).")] = EvaluateOptions.threads,
    quiet: Quiet = False,
) -> None:
    from recare_cli.errors import check_choice
    from recare_cli.models.scheduler import SCHEDULERS
    from recare_cli.toyworld.evaluate import report

    console.set_quiet(quiet)
    check_choice("--scheduler", scheduler, SCHEDULERS, "scheduler")
    opts = EvaluateOptions(clip=clip, sd=sd, n_clip=n_clip, n_sd=n_sd, steps=steps, guidance=guidance,
                           scheduler=scheduler, no_clip=no_clip, grid=grid, threads=threads)
    sys.stdout.write(json.dumps(report(opts), indent=2) + "\n")


@app.command("ship", help="Make a trained world the shipped one: write its fp16 weights, configs and manifest (fingerprints, the training log, and the evaluation report given) into the package data, or --dest. The shipped detector is kept while the VAE it was trained on is unchanged.\n\nExample:\n\n  recare toyworld ship --trained tw/ --report report.json")
def ship(
    trained: Annotated[Path, typer.Option("--trained", help="A recare toyworld train output folder (clip/, sd/).")],
    report: Annotated[Path | None, typer.Option("--report", help="recare toyworld evaluate's JSON report, recorded in the manifest.")] = ShipOptions.report,
    dest: Annotated[Path | None, typer.Option("--dest", help="Folder to write into (default: the package data).")] = ShipOptions.dest,
    quiet: Quiet = False,
) -> None:
    from recare_cli.toyworld.assets import ship_trained

    console.set_quiet(quiet)
    manifest = ship_trained(ShipOptions(trained=trained, report=report, dest=dest))
    console.info(f"shipped {manifest['bytes'] / 2**20:.1f} MiB of weights; fingerprints {manifest['fingerprints']}")


@app.command("detector", help="Train the toy world's target detector (a small CNN, independent of the toy CLIP) on the shipped world's renders, half of them through its VAE; measure it on 2,000 held-out scenes; ship it beside the world (--ship) or write it to a file (--out).\n\nExample:\n\n  recare toyworld detector --ship --threads 2")
def detector(
    ship: Annotated[bool, typer.Option("--ship", help="Write into the package data and its manifest.")] = DetectorOptions.ship,
    out: Annotated[Path | None, typer.Option("--out", help="Write a safetensors file here instead.")] = DetectorOptions.out,
    train: Annotated[int, typer.Option("--train", min=1, help="Training scenes.")] = DetectorOptions.train,
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Passes over the training scenes.")] = DetectorOptions.epochs,
    seed: Annotated[int, typer.Option("--seed", help="Random seed of the weights and the batches.")] = DetectorOptions.seed,
    threads: Annotated[int, typer.Option("--threads", min=1, help="torch CPU threads (the weights depend on it).")] = DetectorOptions.threads,
    quiet: Quiet = False,
) -> None:
    from recare_cli.errors import UsageError

    console.set_quiet(quiet)
    if ship == (out is not None):
        raise UsageError("give one of --ship (into the package data) and --out FILE")
    from recare_cli.toyworld.detector import HEADS, train_and_save

    written, report = train_and_save(DetectorOptions(train=train, epochs=epochs, seed=seed, threads=threads,
                                                     ship=ship, out=out))
    held = report["held_out"]
    console.info(f"detector: {train} scenes × {epochs} epochs in {report['seconds']} s; held-out accuracy clean / "
                 "through the VAE: " + ", ".join(f"{h} {held['clean'][h]:.1%} / {held['vae'][h]:.1%}" for h in HEADS)
                 + f"; wrote {written}")
