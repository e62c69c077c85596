"""recare sample: evaluation images from (an erased) Stable Diffusion, with a manifest (method.md §6)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from recare_cli import console
from recare_cli.cli.options import Device, Dtype, Quiet, Seed
from recare_cli.models.sd import MODEL_ENV
from recare_cli.stages.sample import SampleOptions

OPTIONS = SampleOptions
CLI_ONLY = ("prompts", "fmt", "strict", "quiet")  # reading the prompt file, and messages

HELP = """Generate evaluation images for every prompt and write a manifest.

PROMPTS is a CSV with a prompt column (and optional evaluation_seed, case_number, as in I2P and COCO-30k prompt files; other columns are kept in the manifest), a JSONL file with a prompt field, a text file with one prompt per line, or - for stdin. Images go to --out DIR with stable names; the manifest (one JSON record per image, docs/evaluation.md) goes to stdout.

A bad row (empty prompt, a seed that is not a whole number, a record with the wrong number of fields) is skipped with one warning that names the rows; --strict refuses the file instead. --row-settings honours a row's own guidance and image size (evaluation_guidance, sd_image_height, sd_image_width as in the I2P prompt files).

Image j (from 0) of a prompt uses seed evaluation_seed + j (or a seed or sd_seed column), or --seed + j when the prompt has none. Images are as large as the model was trained (512 px for SD 1.x, 1024 for SDXL) unless --height and --width say otherwise. Re-running the same command skips finished images (resume). --shard I/N, or accelerate launch, split the work and give exactly the images of one process; shard manifests concatenate in shard order. No safety checker is applied.

Examples:

  recare sample prompts.csv --weights erased.safetensors --out imgs/ > manifest.jsonl

  accelerate launch -m recare_cli sample prompts.csv --out imgs/ > manifest.jsonl
"""

_SIZE = "in pixels, a multiple of 8 (default: the model's own, its UNet sample size times the VAE scale factor)."


def sample(
    prompts: Annotated[str, typer.Argument(help="Prompt file (CSV, JSONL or text), or - for stdin.",
                                           show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-O", help="Folder for the images (created if missing).",
                                      show_default=False)],
    fmt: Annotated[str, typer.Option("--format", help="Prompt file format: auto, csv, jsonl or text.")] = "auto",
    images_per_prompt: Annotated[int, typer.Option("--images-per-prompt", "-n", min=1,
                                                   help="Images per prompt.")] = SampleOptions.images_per_prompt,
    seed: Seed = SampleOptions.seed,
    model: Annotated[str, typer.Option("--model", envvar=MODEL_ENV, show_envvar=True,
                                       help="Stable Diffusion 1.x, 2.x or SDXL model: a diffusers folder or a hub id.")
                     ] = SampleOptions.model,
    weights: Annotated[list[Path] | None, typer.Option(
        "--weights", help="recare erase outputs (UNet weights, LoRA, text-encoder weights from --method "
                    "advunlearn), or other tools' erased UNets and text encoders (ESD, UCE, the ReCARE "
                    "reference's .pt, read weights-only); repeat to apply several in order.",
        show_default=False)] = None,
    embeddings: Annotated[list[Path] | None, typer.Option(
        "--embeddings", help="Textual-inversion embeddings from recare invert (safetensors); repeatable.",
        show_default=False)] = None,
    steps: Annotated[int, typer.Option("--steps", min=1, help="Denoising steps.")] = SampleOptions.steps,
    guidance: Annotated[float, typer.Option("--guidance", min=0.0, help="Classifier-free guidance scale.")
                        ] = SampleOptions.guidance,
    height: Annotated[int | None, typer.Option("--height", min=8, help=f"Image height {_SIZE}",
                                               show_default=False)] = SampleOptions.height,
    width: Annotated[int | None, typer.Option("--width", min=8, help=f"Image width {_SIZE}",
                                              show_default=False)] = SampleOptions.width,
    scheduler: Annotated[str, typer.Option(
        "--scheduler", help="default (the model's own), ddim, pndm, dpm++, euler, euler-a or lms.")
                         ] = SampleOptions.scheduler,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1,
                                            help="Images per forward pass (part of the work plan: keep it "
                                                 "fixed across shards and resumes for identical bytes).")
                          ] = SampleOptions.batch_size,
    shard: Annotated[str, typer.Option("--shard", help="Make only part I of N (0-based), e.g. 0/4 for a "
                                                       "job array.")] = SampleOptions.shard,
    device: Device = SampleOptions.device,
    dtype: Dtype = SampleOptions.dtype,
    row_settings: Annotated[bool, typer.Option(
        "--row-settings", help="Use each row's own guidance and image size where the prompt file has them "
                               "(evaluation_guidance or guidance or sd_guidance; height or sd_image_height; width "
                               "or sd_image_width); other rows take --guidance, --height, --width.")
                            ] = SampleOptions.row_settings,
    strict: Annotated[bool, typer.Option("--strict", help="Refuse a prompt file with any bad row instead of "
                                                          "skipping the bad rows with a warning.")] = False,
    quiet: Quiet = False,
) -> None:
    from recare_cli.io.jsonl import dumps_line
    from recare_cli.io.prompts import read_prompts
    from recare_cli.io.streams import open_output
    from recare_cli.stages.sample import run_sample

    console.set_quiet(quiet)
    opts = SampleOptions(out=out, images_per_prompt=images_per_prompt, seed=seed, model=model,
                         weights=tuple(weights or ()), embeddings=tuple(embeddings or ()), steps=steps,
                         guidance=guidance, height=height, width=width, scheduler=scheduler,
                         batch_size=batch_size, shard=shard, device=device, dtype=dtype, row_settings=row_settings)
    opts.validate()  # option errors before the prompt file is read
    rows = read_prompts(prompts, fmt=fmt, strict=strict, row_settings=row_settings)
    with open_output("-", binary=False) as stdout:
        def emit(record: dict[str, Any]) -> None:
            stdout.write(dumps_line(record))
            stdout.flush()

        result = run_sample(opts, rows, emit=emit)
    console.info(f"sample: {console.plural(result.made, 'image')} made, {result.skipped:,} already present, in {out}")
