"""recare attack: learn a token that brings an erased concept back (CCE), as a file any model can be tested with."""

from __future__ import annotations

from typing import Annotated

import typer

from recare_cli import console
from recare_cli.cli.options import (
    AsList,
    Device,
    Flip,
    Images,
    Quiet,
    Recursive,
    SafetensorsOutput,
    Seed,
    StrictImages,
    TrainResolution,
)
from recare_cli.models.sd import MODEL_ENV
from recare_cli.stages.attack import AttackOptions as O

OPTIONS = O
CLI_ONLY = ("quiet",)

HELP = """Attack an erased model: learn one token by textual inversion against it on images of TARGET (CCE, Circumventing Concept Erasure).

The erased model is --model with --weights applied (recare erase outputs; none: the base model). The settings default to the CCE authors' published recipe: 5,000 steps of batch 4 with 4 accumulated micro-batches, AdamW at 5e-3 scaled by the effective batch of 16, 25 images, random flips (docs/evaluation.md, Attacks). On one GPU at 512 px this is the cost of a textual inversion (tens of minutes); --precision fp16 is the authors' mixed precision.

Writes the token as recare.embeddings safetensors (replay it against any model with recare sample --embeddings) and, with --prompts FILE, a prompt CSV that uses it (recare sample FILE -n 10 --embeddings OUTPUT). Checkpoints every --checkpoint-every steps to OUTPUT.ckpt; --resume continues to the same bytes.

IMAGES is a folder of images of the target, or - to read image paths from stdin, or a list file with --list.

Example:

  recare attack imgs/ --target nudity --weights erased.safetensors -o cce.safetensors --prompts cce.csv
"""


def attack(
    images: Images,
    target: Annotated[str, typer.Option("--target", "-t", help="The erased concept, e.g. nudity.",
                                        show_default=False)],
    output: SafetensorsOutput,
    method: Annotated[str, typer.Option("--method", help="cce (the only attack so far).")] = O.method,
    weights: Annotated[list[str] | None, typer.Option(
        "--weights", help="recare erase outputs (UNet, LoRA or text-encoder weights) or other tools' erased "
                          "checkpoints (as recare sample --weights) applied to --model, in order; repeatable. "
                          "None: attack the base model.", show_default=False)] = None,
    initializer: Annotated[str, typer.Option("--initializer", help="Single-token word the token starts from "
                                                                   "(CCE: art for styles).")] = O.initializer,
    property: Annotated[str, typer.Option("--property", help="object or style: the prompt templates.")] = O.property,
    steps: Annotated[int, typer.Option("--steps", min=1, help="Optimizer steps.")] = O.steps,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per micro-batch.")] = O.batch_size,
    accumulation: Annotated[int, typer.Option("--accumulation", min=1,
                                              help="Micro-batches per optimizer step.")] = O.accumulation,
    lr: Annotated[float, typer.Option("--lr", min=0.0, help="Learning rate before scaling by batch size × "
                                                            "accumulation (the reference's --scale_lr).")] = O.lr,
    num_images: Annotated[int, typer.Option("--num-images", min=1, help="Images that train the token (the "
                                                                        "first N, sorted).")] = O.num_images,
    resolution: TrainResolution = O.resolution,
    flip: Flip = O.flip,
    recursive: Recursive = O.recursive,
    as_list: AsList = O.as_list,
    strict: StrictImages = O.strict,
    seed: Seed = O.seed,
    model: Annotated[str, typer.Option("--model", envvar=MODEL_ENV, show_envvar=True,
                                       help="Stable Diffusion 1.x, 2.x or SDXL model: a diffusers folder or a hub id.")] = O.model,
    device: Device = O.device,
    precision: Annotated[str, typer.Option("--precision", help="fp32, or bf16/fp16 autocast (GPUs).")] = O.precision,
    prompts: Annotated[str | None, typer.Option("--prompts", help="Also write a prompt CSV using the token "
                                                                  "(- for stdout).", show_default=False)] = O.prompts,
    prompt_seed: Annotated[int, typer.Option("--prompt-seed", help="First evaluation seed of the prompt "
                                                                   "file.")] = O.prompt_seed,
    checkpoint_every: Annotated[int, typer.Option("--checkpoint-every", min=0, help="Steps between checkpoints "
                                                                                    "(0: none).")] = O.checkpoint_every,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from OUTPUT.ckpt if there is one.")] = O.resume,
    quiet: Quiet = False,
) -> None:
    values = {k: v for k, v in locals().items() if k not in CLI_ONLY}
    values["weights"] = tuple(weights or ())
    opts = O(**values)
    console.set_quiet(quiet)
    from recare_cli.io.images import resolve_image_inputs
    from recare_cli.stages.attack import run_attack

    opts.validate()
    paths = resolve_image_inputs(images, recursive=recursive, as_list=as_list)
    summary = run_attack(opts, paths)
    console.info(f"attack: wrote {output}: token {summary['token']} from {console.plural(summary['images'], 'image')}"
                 f"; last loss {summary['loss']:.4g}")
