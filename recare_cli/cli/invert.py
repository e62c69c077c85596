"""recare invert: adversarial token embeddings that survive erasure (method.md §4)."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer

from recare_cli import console
from recare_cli.cli.options import (
    AsList,
    Device,
    Flip,
    Images,
    LoraAlpha,
    LoraRank,
    Quiet,
    Recursive,
    SafetensorsOutput,
    Seed,
    StrictImages,
    TrainResolution,
)
from recare_cli.models.sd import MODEL_ENV
from recare_cli.stages.invert import INITIALIZER_TOKENS
from recare_cli.stages.invert import InvertOptions as O

OPTIONS = O
CLI_ONLY = ("quiet",)
InitializerToken = Enum("InitializerToken", {n: n for n in INITIALIZER_TOKENS}, type=str)  # type: ignore[misc]

HELP = """Find token embeddings that still make the model draw TARGET after it is erased.

Each of --rounds rounds erases the current concept from the UNet with the ESD objective (the target in round 1, the previous round's token after that), then learns a new placeholder token on the erased UNet by textual inversion on that round's share of the images (sorted order, equal slices). Only the new token vectors are trained; the model is not changed on disk. With its defaults this is the search stage of published STEREO ("search thoroughly enough"; its erase stage is recare erase --method stereo; docs/erase.md).

IMAGES is a folder of images of the target, or - to read image paths (one per line) from stdin, or a list file with --list. Unreadable images are skipped with a warning (--strict: stop). Writes safetensors {token: (1, D)} with metadata (docs/erase.md), loadable with diffusers' load_textual_inversion and used by recare erase --adversarial.

--lora RANK trains LoRA adapters in each round's erasure (recare erase --lora) and merges them into the UNet at the end of the round.

After each round (but the last) the tokens so far, the erased UNet and the random state go to OUTPUT.ckpt; --resume continues after the last finished round and gives the same result.

Example:

  recare invert imgs/ --target nudity -o adv.safetensors
"""


def invert(
    images: Images,
    target: Annotated[str, typer.Option("--target", "-t", help="The concept to erase, e.g. nudity.",
                                        show_default=False)],
    output: SafetensorsOutput,
    initializer: Annotated[str, typer.Option("--initializer", help="Single-token word the new tokens start "
                                                                   "from (person for objects, art for "
                                                                   "styles).")] = O.initializer,
    initializer_token: Annotated[InitializerToken, typer.Option(
        "--initializer-token", help="word: the token --initializer tokenises to (person</w>); reference: the "
                                    "vocabulary entry spelled as given (person, the word-initial piece), as the "
                                    "ReCARE reference looks it up.")] = InitializerToken(O.initializer_token),
    property: Annotated[str, typer.Option("--property", help="object or style: picks the prompt templates.")] = O.property,
    rounds: Annotated[int, typer.Option("--rounds", min=1, help="Erase ↔ inversion rounds (one token "
                                                                "each).")] = O.rounds,
    erase_iterations: Annotated[int, typer.Option("--erase-iterations", min=0, help="ESD iterations per "
                                                                                    "round.")] = O.erase_iterations,
    erase_lr: Annotated[float, typer.Option("--erase-lr", min=0.0, help="AdamW learning rate of the "
                                                                        "erasure.")] = O.erase_lr,
    negative_guidance: Annotated[float, typer.Option("--negative-guidance", help="ESD negative guidance "
                                                                                 "g.")] = O.negative_guidance,
    ddim_steps: Annotated[int, typer.Option("--ddim-steps", min=3, help="DDIM steps of the schedule x_t is drawn from (reference: 50).")] = O.ddim_steps,
    train_method: Annotated[str, typer.Option("--train-method", help="UNet parameters the erasure trains: "
                                                                     "noxattn, xattn, selfattn or "
                                                                     "full.")] = O.train_method,
    lora: LoraRank = O.lora,
    lora_alpha: LoraAlpha = O.lora_alpha,
    steps: Annotated[int, typer.Option("--steps", min=1, help="Textual-inversion steps per round.")] = O.steps,
    lr: Annotated[float, typer.Option("--lr", min=0.0, help="Textual-inversion learning rate (batch "
                                                            "1).")] = O.lr,
    resolution: TrainResolution = O.resolution,
    flip: Flip = O.flip,
    recursive: Recursive = O.recursive,
    as_list: AsList = O.as_list,
    strict: StrictImages = O.strict,
    keep_erased: Annotated[str | None, typer.Option("--keep-erased", help="Folder for each round's erased UNet "
                                                                          "weights (roundN-unet.safetensors).",
                                                    show_default=False)] = O.keep_erased,
    seed: Seed = O.seed,
    model: Annotated[str, typer.Option("--model", envvar=MODEL_ENV, show_envvar=True,
                                       help="Stable Diffusion 1.x, 2.x or SDXL model: a diffusers folder or a hub id.")] = O.model,
    device: Device = O.device,
    precision: Annotated[str, typer.Option("--precision", help="fp32, or bf16/fp16 autocast (GPUs).")] = O.precision,
    gradient_checkpointing: Annotated[bool, typer.Option("--gradient-checkpointing",
                                                         help="Trade compute for activation memory.")] = O.gradient_checkpointing,
    resume: Annotated[bool, typer.Option("--resume", help="Continue after the last finished round recorded in "
                                                          "OUTPUT.ckpt.")] = O.resume,
    quiet: Quiet = False,
) -> None:
    console.set_quiet(quiet)
    opts = O(**{k: v for k, v in locals().items() if k not in CLI_ONLY})
    opts.initializer_token = InitializerToken(initializer_token).value
    from recare_cli.io.images import resolve_image_inputs
    from recare_cli.stages.invert import run_invert

    opts.validate()
    paths = resolve_image_inputs(images, recursive=recursive, as_list=as_list)
    summary = run_invert(opts, paths)
    console.info(f"invert: wrote {output}: tokens {', '.join(summary['tokens'])} from {summary['images']} images")
