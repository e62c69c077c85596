"""recare mine: co-occurring candidate words from images of the target (method.md §1)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from recare_cli import console
from recare_cli.cli.options import Clip, Device, Dtype, Output, Quiet
from recare_cli.models.clip import DEFAULT_CLIP

HELP = """Mine candidate words that co-occur with TARGET in images of it.

IMAGES is a folder of images, or - to read image paths (one per line) from stdin, or a list file with --list. Writes a recare.candidates JSONL stream (docs/formats.md) to stdout.

Example:

  recare mine imgs/ --target nudity --top-k 50 --top-n 100 > candidates.jsonl
"""


def mine(
    images: Annotated[str, typer.Argument(help="Image folder, a path-list file with --list, or - "
                                               "for a path list on stdin.", show_default=False)],
    target: Annotated[str, typer.Option("--target", "-t", help="The concept to erase, e.g. nudity.",
                                        show_default=False)],
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="Words taken per image.")] = 50,
    top_n: Annotated[int, typer.Option("--top-n", min=1, help="Most frequent words kept.")] = 100,
    vocab: Annotated[Path | None, typer.Option(
        "--vocab", help="Word list (one per line) instead of CLIP's whole-word vocabulary.",
        show_default=False)] = None,
    reference: Annotated[str | None, typer.Option(
        "--reference", help="Images without the target (a folder, or a file listing image paths): rank "
                            "words by lift, the share of target images that have them less the share of "
                            "these, and drop words no more frequent in the target images.",
        show_default=False)] = None,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Search sub-folders.")] = False,
    as_list: Annotated[bool, typer.Option("--list", help="IMAGES is a text file of image paths.")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Stop at the first unreadable image "
                                                          "instead of skipping it.")] = False,
    clip: Clip = DEFAULT_CLIP,
    device: Device = "auto",
    dtype: Dtype = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward pass.")] = 64,
    text_batch_size: Annotated[int, typer.Option("--text-batch-size", min=1,
                                                 help="Words per forward pass.")] = 1024,
    cache_dir: Annotated[Path | None, typer.Option(
        "--cache-dir", envvar="RECARE_CACHE", show_envvar=True,
        help="Vocabulary-embedding cache [default: $XDG_CACHE_HOME/recare].", show_default=False)] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Neither read nor write the cache.")] = False,
    output: Output = "-",
    quiet: Quiet = False,
) -> None:
    from recare_cli.errors import BadInputError, UsageError
    from recare_cli.io.images import resolve_image_inputs
    from recare_cli.io.streams import display_name, open_output, read_text_lines

    console.set_quiet(quiet)
    if not target.strip():
        raise UsageError("--target must not be empty")
    if images == "-" and vocab is not None and str(vocab) == "-":
        raise UsageError("only one of IMAGES and --vocab can be read from stdin")
    paths = resolve_image_inputs(images, recursive=recursive, as_list=as_list)
    reference_paths = None
    if reference is not None:
        if reference == "-":
            raise UsageError("--reference must be a folder or a list file, not stdin")
        reference_paths = resolve_image_inputs(reference, recursive=recursive, as_list=Path(reference).is_file())
    words: list[tuple[int, str]] | None = None
    if vocab is not None:
        words = [(n, line.strip()) for n, line in read_text_lines(vocab) if line.strip()
                 and not line.lstrip().startswith("#")]
        if not words:
            raise BadInputError("the word list is empty", source=display_name(vocab))

    from recare_cli.stages.mine import run_mining

    stream = run_mining(
        paths=paths, target=target.strip(), top_k=top_k, top_n=top_n, words=words,
        vocab_source=display_name(vocab) if vocab is not None else "clip-whole-words",
        strict=strict, clip=clip, device=device, dtype=dtype, batch_size=batch_size,
        text_batch_size=text_batch_size, cache_dir=cache_dir,
        use_cache=not no_cache, params=_params(locals()), reference_paths=reference_paths,
        reference_source=reference or "")
    with open_output(output, binary=False) as out:
        stream.write(out)


def _params(values: dict[str, Any]) -> dict[str, Any]:
    keep = ("images", "target", "top_k", "top_n", "vocab", "reference", "recursive", "strict", "clip", "device",
            "dtype", "batch_size")
    # reference only when given: a stream mined without one keeps the bytes it had before the option existed
    return {k: (str(values[k]) if isinstance(values[k], Path) else values[k]) for k in keep
            if k != "reference" or values[k] is not None}
