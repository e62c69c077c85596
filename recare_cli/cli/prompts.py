"""recare prompts: the CARE evaluation prompts (method.md §7) as a CSV that recare sample reads."""

from __future__ import annotations

from typing import Annotated

import typer

from recare_cli import console
from recare_cli.cli.options import CareSetKey, Output, Quiet
from recare_cli.stages.prompts import PromptsOptions as O

OPTIONS = O
CLI_ONLY = ("quiet",)

HELP = """Write the CARE evaluation prompts: prompts that name each CARE word, one CSV row per image.

Each word of CARESET (a care.json of either layout, or - for stdin) and each --concept gives one prompt per --template (default: the CARE-set's own retain prompts, 'A photo of WORD' for objects and 'A painting of WORD' for styles, as in the reference's careset.json; 'A photo of WORD' for --concept without a CARE-set). Each prompt gives --images-per-prompt rows (default 10, as the reference's CARE evaluation) seeded --seed, --seed + 1, … (the reference's seed + i). Columns: prompt, evaluation_seed, case_number, concept. Sample the file with recare sample's default of one image per row.

Examples:

  recare prompts care.json > care_prompts.csv

  recare prompts --concept person -o person.csv

  recare sample person.csv --weights erased.safetensors --out imgs/ | recare score - -m care --concept person
"""


def prompts(
    careset: Annotated[str | None, typer.Argument(help="A CARE-set (care.json, either layout), or - for stdin.",
                                                  show_default=False)] = O.careset,
    concept: Annotated[list[str] | None, typer.Option(
        "--concept", "-c", help="A word to name in prompts (e.g. person); repeatable.", show_default=False)] = None,
    template: Annotated[list[str] | None, typer.Option(
        "--template", "-t", help="A prompt with {} where the word goes, e.g. 'A photo of a {}'; repeatable "
                                 "(default: the CARE-set's retain prompts, else 'A photo of {}').",
        show_default=False)] = None,
    images_per_prompt: Annotated[int, typer.Option("--images-per-prompt", "-n", min=1,
                                                   help="Rows (images) per prompt.")] = O.images_per_prompt,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed of each prompt's first image; image i gets "
                                                            "seed + i.")] = O.seed,
    target: CareSetKey = O.target,
    output: Output = O.output,
    quiet: Quiet = False,
) -> None:
    from recare_cli.io.careset import parse_careset
    from recare_cli.io.jsonl import loads_json
    from recare_cli.io.prompts import format_csv
    from recare_cli.io.streams import display_name, open_output, read_bytes
    from recare_cli.stages.prompts import COLUMNS, care_prompts

    console.set_quiet(quiet)
    opts = O(careset=careset, concept=tuple(concept or ()), template=tuple(template or ()),
             images_per_prompt=images_per_prompt, seed=seed, target=target, output=output)
    opts.validate()
    care = None
    if careset is not None:
        name = display_name(careset)
        care = parse_careset(loads_json(read_bytes(careset), source=name), source=name, target=target)
    rows = care_prompts(opts, care)
    text = format_csv(rows, COLUMNS)
    with open_output(output, binary=False) as out:
        out.write(text.encode("utf-8"))
    n_prompts = len(rows) // opts.images_per_prompt
    n_words = len({row["concept"] for row in rows})
    console.info(f"prompts: {console.plural(n_prompts, 'prompt')} for {console.plural(n_words, 'word')}, "
                 f"{opts.images_per_prompt} images each: {console.plural(len(rows), 'row')}")
