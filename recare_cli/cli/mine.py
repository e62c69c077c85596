"""recare mine: co-occurring candidate words from images of the target (method.md §1)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from recare_cli import console
from recare_cli.cli.options import (
    AsList,
    Clip,
    Device,
    Dtype,
    EmbeddingsNpy,
    Images,
    Output,
    Quiet,
    Recursive,
    StrictImages,
)
from recare_cli.stages.mine import TOKENIZATIONS
from recare_cli.stages.mine import MineOptions as O

OPTIONS = O
CLI_ONLY = ("quiet",)
Tokenization = Enum("Tokenization", {name: name for name in TOKENIZATIONS}, type=str)  # type: ignore[misc]

HELP = """Mine candidate words that co-occur with TARGET in images of it.

IMAGES is a folder of images, or - to read image paths (one per line) from stdin, or a list file with --list. Writes a recare.candidates JSONL stream (docs/formats.md) to stdout.

The candidates come from CLIP's whole-word vocabulary, or from --vocab FILE; a CLIP folder that ships its own word list (recare-vocabulary.txt, as the toy world's CLIP does: it knows only its world's words) is mined over that list unless --vocab is given.

--tokenization reference mines as the ReCARE reference code does, to reproduce its CARE-set: every entry of the tokenizer's vocabulary (49,408 for CLIP), each fed as a string with its </w> (cat</w> becomes cat, </, w, >), cleaned as OpenAI's CLIP cleans text; similarities against the embeddings rounded to fp16; equal counts in first-seen order. Cluster its stream with -n 7, the reference code's default (docs/careset.md).

Example:

  recare mine imgs/ --target nudity --top-k 50 --top-n 100 > candidates.jsonl
"""


def mine(
    images: Images,
    target: Annotated[str, typer.Option("--target", "-t", help="The concept to erase, e.g. nudity.",
                                        show_default=False)],
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="Words taken per image.")] = O.top_k,
    top_n: Annotated[int, typer.Option("--top-n", min=1, help="Most frequent words kept.")] = O.top_n,
    vocab: Annotated[str | None, typer.Option(
        "--vocab", help="Word list (one per line, or - for stdin) instead of the CLIP folder's own list or "
                        "CLIP's whole-word vocabulary.", show_default=False)] = O.vocab,
    tokenization: Annotated[Tokenization, typer.Option(
        "--tokenization", help="recare: each whole word as its own token id; reference: every vocabulary entry as "
                               "the reference feeds it, ranked as it ranks (see above).")] = Tokenization(O.tokenization),
    reference: Annotated[str | None, typer.Option(
        "--reference", help="Images without the target (a folder, or a file listing image paths): rank "
                            "words by lift, the share of target images that have them less the share of "
                            "these, and drop words no more frequent in the target images.",
        show_default=False)] = O.reference,
    recursive: Recursive = O.recursive,
    as_list: AsList = O.as_list,
    strict: StrictImages = O.strict,
    clip: Clip = O.clip,
    device: Device = O.device,
    dtype: Dtype = O.dtype,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward pass.")] = O.batch_size,
    text_batch_size: Annotated[int, typer.Option("--text-batch-size", min=1,
                                                 help="Words per forward pass.")] = O.text_batch_size,
    cache_dir: Annotated[str | None, typer.Option(
        "--cache-dir", envvar="RECARE_CACHE", show_envvar=True,
        help="Vocabulary-embedding cache (default: $XDG_CACHE_HOME/recare).", show_default=False)] = O.cache_dir,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Neither read nor write the cache.")] = O.no_cache,
    output: Output = O.output,
    embeddings_npy: EmbeddingsNpy = O.embeddings_npy,
    quiet: Quiet = False,
) -> None:
    opts = O(**{k: v for k, v in locals().items() if k not in CLI_ONLY})
    opts.tokenization = Tokenization(tokenization).value
    console.set_quiet(quiet)
    from recare_cli.errors import UsageError
    from recare_cli.io.arrays import check_npy_destination, write_npy
    from recare_cli.io.images import resolve_image_inputs
    from recare_cli.io.streams import open_output
    from recare_cli.stages.mine import run_mining

    if not target.strip():
        raise UsageError("--target must not be empty")
    if images == "-" and vocab == "-":
        raise UsageError("only one of IMAGES and --vocab can be read from stdin")
    if embeddings_npy is not None:
        check_npy_destination(embeddings_npy, "--embeddings-npy", output=output)
    paths = resolve_image_inputs(images, recursive=recursive, as_list=as_list)
    reference_paths = None
    if reference is not None:
        if reference == "-":
            raise UsageError("--reference must be a folder or a list file, not stdin")
        reference_paths = resolve_image_inputs(reference, recursive=recursive, as_list=Path(reference).is_file())
    stream = run_mining(opts, paths, reference_paths)
    with open_output(output, binary=False) as out:
        stream.write(out)
    if embeddings_npy is not None:
        write_npy(embeddings_npy, stream.embeddings())
