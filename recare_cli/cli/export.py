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

--format single-file writes one safetensors file in the model's original layout (SD 1.x, SD 2.x or SDXL: UNet, VAE, text encoders), which AUTOMATIC1111, ComfyUI and diffusers' from_single_file load; --format diffusers writes a complete diffusers pipeline folder; --format kohya-lora writes the adapters of one recare erase --lora file, not merged, in kohya naming (lora_unet_…lora_down/lora_up/alpha; for SDXL with the original UNet's module names, as kohya's sd-scripts writes them), the LoRA layout the web UIs and diffusers' load_lora_weights read. Token embeddings from recare invert become one textual-inversion file per token (the layout the web UIs and diffusers' load_textual_inversion read) in OUTPUT-embeddings/ beside the output (OUTPUT without .safetensors); the file name, without the characters file systems refuse, is the word to write in a UI prompt.

--weights also takes other tools' erased models (ESD's and UCE's safetensors, the ReCARE reference's .pt, AdvUnlearn's text-encoder .pt, original-layout checkpoints; pickles read weights-only), checked by name and shape only since they record no base model. Weights made for another base model are refused. Every output appears only when complete, and an existing one is replaced only with --force. docs/export.md says where each file goes in each UI.

Examples:

  recare export --model CompVis/stable-diffusion-v1-4 --weights erased.safetensors --dtype fp16 -o sd14-erased.safetensors

  recare export --weights erased.safetensors --weights adv.safetensors --format diffusers -o sd14-erased/

  recare export --weights lora.safetensors --format kohya-lora --dtype fp16 -o recare-nudity-lora.safetensors
"""


def export(
    output: Annotated[str, typer.Option("--output", "-o", help="A .safetensors file (single-file, kohya-lora) or "
                                                               "a folder (diffusers).", show_default=False)],
    model: Annotated[str, typer.Option("--model", envvar=MODEL_ENV, show_envvar=True,
                                       help="Stable Diffusion 1.x, 2.x or SDXL model: a diffusers folder or a hub id.")
                     ] = ExportOptions.model,
    weights: Annotated[list[Path] | None, typer.Option(
        "--weights", help="recare weights: UNet weights from recare erase (applied in order; a --lora file is "
                          "merged in, or converted with --format kohya-lora) or token embeddings from recare invert; "
                          "also another tool's erased UNet or text encoder (.safetensors, .pt, .ckpt, .bin); repeatable.",
        show_default=False)] = None,
    format: Annotated[str, typer.Option(
        "--format", help="single-file (one safetensors file in the model's original layout, SD 1.x, 2.x or SDXL, "
                         "for AUTOMATIC1111, ComfyUI and from_single_file), diffusers (a pipeline folder) or kohya-lora (the adapters of a recare "
                         "erase --lora file in the web UIs' LoRA naming).")] = ExportOptions.format,
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
