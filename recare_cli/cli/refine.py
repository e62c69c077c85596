"""recare refine: leave-one-out refinement inside kept clusters; writes the CARE-set."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer

from recare_cli import console
from recare_cli.cli.options import CareSetKey, Output, Quiet
from recare_cli.io.careset import PROPERTIES
from recare_cli.stages.refine import LAYOUTS
from recare_cli.stages.refine import RefineOptions as O

OPTIONS = O
CLI_ONLY = ("quiet",)

HELP = """Refine clustered candidates into the CARE-set (care.json).

Reads the stream from `recare cluster` (a file or - for stdin) and removes, inside each kept cluster, the words that lean toward the target. Also reads a CARE-set JSON of either layout (recare or the reference's) and re-writes it, e.g. to convert between layouts after a hand edit: the prompts follow the words (care.json's words are the one list to edit).

Example:

  recare mine imgs/ --target nudity | recare cluster | recare refine --alpha 0.1 > care.json
"""

# The choices, for --help and Typer's own checking.
Layout = Enum("Layout", {name: name for name in LAYOUTS}, type=str)  # type: ignore[misc]
Property = Enum("Property", {name: name for name in PROPERTIES}, type=str)  # type: ignore[misc]


def refine(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(help="Clustered stream (JSONL) or a CARE-set JSON, or - "
                                               "for stdin.")] = O.source,
    alpha: Annotated[float, typer.Option("--alpha", min=0.0,
                                         help="Removal margin: drop word i when d_i > (1+alpha)·m_i.")] = O.alpha,
    min_cluster_size: Annotated[int, typer.Option(
        "--min-cluster-size", min=2, help="Smaller kept clusters are kept whole, unrefined.")] = O.min_cluster_size,
    property: Annotated[Property, typer.Option(
        "--property", help="object: retain prompts 'A photo of …'; style: 'A painting of …'.")] = Property(O.property),
    format: Annotated[Layout, typer.Option(
        "--format", help="recare (full record) or reference (damilab/CARE careset.json).")] = Layout(O.format),
    target: CareSetKey = O.target,
    output: Output = O.output,
    quiet: Quiet = False,
) -> None:
    opts = O(source=source, alpha=alpha, min_cluster_size=min_cluster_size, property=Property(property).value,
             format=Layout(format).value, target=target, output=output)
    console.set_quiet(quiet)
    from recare_cli.errors import BadInputError
    from recare_cli.io.candidates import parse_candidates
    from recare_cli.io.careset import FORMAT, is_reference_layout, parse_careset
    from recare_cli.io.jsonl import dumps_json, loads_json
    from recare_cli.io.streams import display_name, open_output, read_bytes
    from recare_cli.stages.refine import run_refinement

    data = read_bytes(source)
    name = display_name(source)
    try:
        doc = loads_json(data, source=name)
    except BadInputError:
        doc = None  # not one JSON document: a JSONL stream
    if isinstance(doc, dict) and (doc.get("format") == FORMAT or is_reference_layout(doc)):
        careset = parse_careset(doc, source=name, target=target)
        given = [f"--{p.replace('_', '-')}" for p in ("alpha", "min_cluster_size")
                 if getattr(ctx.get_parameter_source(p), "name", "DEFAULT") != "DEFAULT"]
        if given:
            verb = "apply" if len(given) > 1 else "applies"
            console.warn(f"{' and '.join(given)} {verb} to clustered streams; a CARE-set is re-written as it is")
    else:
        stream = parse_candidates(data, name)
        careset = run_refinement(stream, opts)
        console.info(f"CARE-set for '{careset.target}': {len(careset.words)} words kept, "
                     f"{len(careset.removed)} removed")
    if not careset.words:
        console.warn("the CARE-set is empty: nothing would be retained")
    doc_out = careset.to_recare() if opts.format == "recare" else careset.to_reference()
    with open_output(output, binary=False) as out:
        out.write(dumps_json(doc_out))
