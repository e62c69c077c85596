"""Options shared by several subcommands, declared once."""

from __future__ import annotations

from typing import Annotated

import typer

from recare_cli.models.clip import CLIP_ENV

Clip = Annotated[str, typer.Option(
    "--clip", envvar=CLIP_ENV, show_envvar=True,
    help="CLIP model: a transformers folder or a hub id.")]
Device = Annotated[str, typer.Option(
    "--device", help="auto, cpu, cuda, cuda:N or mps. auto picks CUDA, then MPS, then CPU.")]
Dtype = Annotated[str, typer.Option(
    "--dtype", help="auto, fp32, fp16 or bf16. auto: fp16 on GPU, fp32 on CPU.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No messages or progress on stderr.")]
Seed = Annotated[int, typer.Option("--seed", help="Random seed (same seed, same machine: same bytes).")]
Output = Annotated[str, typer.Option("--output", "-o", help="Output file, or - for stdout.")]


# The image inputs of mine, invert and attack.
Recursive = Annotated[bool, typer.Option("--recursive", "-r", help="Search sub-folders.")]
AsList = Annotated[bool, typer.Option("--list", help="IMAGES is a text file of image paths.")]
StrictImages = Annotated[bool, typer.Option("--strict", help="Stop at the first unreadable image instead of "
                                                             "skipping it.")]
# The training images of invert and attack.
TrainResolution = Annotated[int | None, typer.Option(
    "--resolution", min=8, help="Training image size in pixels (default: the model's own, 512 for SD 1.x, 1024 for SDXL).",
    show_default=False)]
Flip = Annotated[float, typer.Option("--flip", min=0.0, max=1.0, help="Probability of a horizontal flip.")]
Images = Annotated[str, typer.Argument(help="Image folder, a path-list file with --list, or - for a path list on "
                                            "stdin.", show_default=False)]
SafetensorsOutput = Annotated[str, typer.Option("--output", "-o", help="Output safetensors file (- for stdout).",
                                                show_default=False)]
# Reading a CARE-set file (refine, prompts).
CareSetKey = Annotated[str | None, typer.Option(
    "--target", help="Which CARE-set to take from a reference file holding several.", show_default=False)]
# The candidate streams' word embeddings as an array (mine, cluster).
EmbeddingsNpy = Annotated[str | None, typer.Option(
    "--embeddings-npy", help="Also write the words' CLIP text embeddings as a .npy array (float32, one row per word "
                             "record of the output stream, in its order), for analysis outside recare.",
    show_default=False)]
# LoRA erasure (erase, and invert's erase rounds).
LoraRank = Annotated[int | None, typer.Option(
    "--lora", metavar="RANK", min=1, help="Train LoRA adapters of this rank (peft) beside the --train-method "
                                          "modules' weights (biases stay frozen) instead of the parameters "
                                          "themselves; the teacher is the base model with the adapters off. "
                                          "--lr keeps the method's default, set for full parameters: adapters "
                                          "need a higher rate (docs/erase.md).",
    show_default=False)]
LoraAlpha = Annotated[float | None, typer.Option(
    "--lora-alpha", help="With --lora: alpha, the update being (alpha / rank) B A (default: the rank, scale 1).",
    show_default=False)]
