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

