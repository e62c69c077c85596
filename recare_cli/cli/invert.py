"""recare invert: adversarial token embeddings that survive erasure (method.md §4)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from recare_cli import console
from recare_cli.cli.options import Device, Quiet, Seed
from recare_cli.models.sd import DEFAULT_MODEL, MODEL_ENV

HELP = """Find token embeddings that still make the model draw TARGET after it is erased.

Each of --rounds rounds erases the current concept from the UNet with the ESD objective (the target in round 1, the previous round's token after that), then learns a new placeholder token on the erased UNet by textual inversion on that round's share of the images (sorted order, equal slices). Only the new token vectors are trained; the model is not changed on disk.

IMAGES is a folder of images of the target, or - to read image paths (one per line) from stdin, or a list file with --list. Unreadable images are skipped with a warning (--strict: stop). Writes safetensors {token: (1, D)} with metadata (docs/erase.md), loadable with diffusers' load_textual_inversion and used by recare erase --adversarial.

After each round (but the last) the tokens so far, the erased UNet and the random state go to OUTPUT.ckpt; --resume continues after the last finished round and gives the same result.

Example:

  recare invert imgs/ --target nudity -o adv.safetensors
"""


def invert(
    images: Annotated[str, typer.Argument(help="Image folder, a path-list file with --list, or - for a path "
                                               "list on stdin.", show_default=False)],
    target: Annotated[str, typer.Option("--target", "-t", help="The concept to erase, e.g. nudity.",
                                        show_default=False)],
    output: Annotated[str, typer.Option("--output", "-o", help="Output safetensors file (- for stdout).",
                                        show_default=False)],
    initializer: Annotated[str, typer.Option("--initializer", help="Single-token word the new tokens start "
                                                                   "from (person for objects, art for "
                                                                   "styles).")] = "person",
    prop: Annotated[str, typer.Option("--property", help="object or style: picks the prompt templates.")] = "object",
    rounds: Annotated[int, typer.Option("--rounds", min=1, help="Erase ↔ inversion rounds (one token "
                                                                "each).")] = 2,
    erase_iterations: Annotated[int, typer.Option("--erase-iterations", min=0, help="ESD iterations per "
                                                                                    "round.")] = 200,
    erase_lr: Annotated[float, typer.Option("--erase-lr", min=0.0, help="AdamW learning rate of the "
                                                                        "erasure.")] = 5e-6,
    negative_guidance: Annotated[float, typer.Option("--negative-guidance", help="ESD negative guidance "
                                                                                 "g.")] = 2.0,
    ddim_steps: Annotated[int, typer.Option("--ddim-steps", min=3, help="DDIM steps of the schedule x_t is drawn from (reference: 50).")] = 50,
    train_method: Annotated[str, typer.Option("--train-method", help="UNet parameters the erasure trains: "
                                                                     "noxattn, xattn, selfattn or "
                                                                     "full.")] = "noxattn",
    steps: Annotated[int, typer.Option("--steps", min=1, help="Textual-inversion steps per round.")] = 3000,
    lr: Annotated[float, typer.Option("--lr", min=0.0, help="Textual-inversion learning rate (batch "
                                                            "1).")] = 5e-3,
    resolution: Annotated[int, typer.Option("--resolution", min=8, help="Training image size in pixels.")] = 512,
    flip: Annotated[float, typer.Option("--flip", min=0.0, max=1.0, help="Probability of a horizontal "
                                                                         "flip.")] = 0.5,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Search sub-folders.")] = False,
    as_list: Annotated[bool, typer.Option("--list", help="IMAGES is a text file of image paths.")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Stop at the first unreadable image instead of "
                                                          "skipping it.")] = False,
    keep_erased: Annotated[str | None, typer.Option("--keep-erased", help="Folder for each round's erased UNet "
                                                                          "weights (roundN-unet.safetensors).",
                                                    show_default=False)] = None,
    seed: Seed = 42,
    model: Annotated[str, typer.Option("--model", envvar=MODEL_ENV, show_envvar=True,
                                       help="Stable Diffusion model: a diffusers folder or a hub id.")] = DEFAULT_MODEL,
    device: Device = "auto",
    precision: Annotated[str, typer.Option("--precision", help="fp32, or bf16/fp16 autocast (GPUs).")] = "fp32",
    gradient_checkpointing: Annotated[bool, typer.Option("--gradient-checkpointing",
                                                         help="Trade compute for activation memory.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue after the last finished round recorded in "
                                                          "OUTPUT.ckpt.")] = False,
    quiet: Quiet = False,
) -> None:
    params: dict[str, Any] = {k: v for k, v in locals().items() if k not in ("quiet", "resume")}
    from recare_cli.io.images import resolve_image_inputs
    from recare_cli.stages.invert import InvertOptions, run_invert

    console.set_quiet(quiet)
    opts = InvertOptions(target=target, initializer=initializer, property=prop, rounds=rounds,
                         erase_iterations=erase_iterations, erase_lr=erase_lr, negative_guidance=negative_guidance, ddim_steps=ddim_steps,
                         train_method=train_method, steps=steps, lr=lr, resolution=resolution, flip=flip, seed=seed,
                         precision=precision, gradient_checkpointing=gradient_checkpointing, model=model,
                         device=device, output=output, keep_erased=keep_erased, resume=resume, params=params)
    opts.validate()
    paths = resolve_image_inputs(images, recursive=recursive, as_list=as_list)
    summary = run_invert(opts, paths, strict=strict)
    console.info(f"invert: wrote {output}: tokens {', '.join(summary['tokens'])} from {summary['images']} images")
