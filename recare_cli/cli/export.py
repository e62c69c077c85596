"""recare export: a base model plus recare weights as checkpoints the web UIs and diffusers load."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from recare_cli import console
from recare_cli.cli.options import Quiet
from recare_cli.models.sd import MODEL_ENV
from recare_cli.stages.export import ExportOptions

OPTIONS = ExportOptions
CLI_ONLY = ("quiet",)

HELP = """Write a base model plus recare weights as checkpoints other tools load.

--format single-file writes one safetensors file in the original Stable Diffusion 1.x layout (UNet, VAE, text encoder), which AUTOMATIC1111, ComfyUI and diffusers' from_single_file load; --format diffusers writes a complete diffusers pipeline folder. Token embeddings from recare invert become one textual-inversion file per token (the layout the web UIs and diffusers' load_textual_inversion read) in OUTPUT-embeddings/ beside the output (OUTPUT without .safetensors); the file name, without the characters file systems refuse, is the word to write in a UI prompt.

Weights made for another base model are refused. Every output appears only when complete, and an existing one is replaced only with --force. docs/export.md says where each file goes in each UI.

Examples:

  recare export --model CompVis/stable-diffusion-v1-4 --weights erased.safetensors --dtype fp16 -o sd14-erased.safetensors

  recare export --weights erased.safetensors --weights adv.safetensors --format diffusers -o sd14-erased/
"""


def export(
    output: Annotated[str, typer.Option("--output", "-o", help="A .safetensors file (single-file) or a folder "
                                                               "(diffusers).", show_default=False)],
    model: Annotated[str, typer.Option("--model", envvar=MODEL_ENV, show_envvar=True,
                                       help="Stable Diffusion 1.x, 2.x or SDXL model: a diffusers folder or a hub id.")
                     ] = ExportOptions.model,
    weights: Annotated[list[Path] | None, typer.Option(
        "--weights", help="recare weights: UNet weights from recare erase (applied in order; a --lora file is "
                          "merged in) or token embeddings from recare invert; repeatable.", show_default=False)] = None,
    format: Annotated[str, typer.Option(
        "--format", help="single-file (one safetensors file in the SD 1.x layout, for AUTOMATIC1111, ComfyUI and "
                         "from_single_file) or diffusers (a pipeline folder).")] = ExportOptions.format,
    dtype: Annotated[str, typer.Option(
        "--dtype", help="fp32, fp16 or bf16: the type of the written tensors (the weights are applied in fp32; fp16 "
                        "halves the file, as the UIs' own checkpoints are).")] = ExportOptions.dtype,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing output.")] = ExportOptions.force,
    quiet: Quiet = False,
) -> None:
    from recare_cli.stages.export import run_export

    console.set_quiet(quiet)
    opts = ExportOptions(output=output, model=model, weights=tuple(weights or ()), format=format, dtype=dtype,
                         force=force)
    result = run_export(opts)
    what = console.plural(result.tensors, "tensor") if result.tensors else "a diffusers pipeline folder"
    console.info(f"export: {result.output} ({result.format}, {what}, {opts.dtype})")
    if result.embeddings is not None:
        console.info(f"export: {console.plural(len(result.embedding_files), 'embedding file')} in "
                     f"{result.embeddings}: {', '.join(result.embedding_files)}")
