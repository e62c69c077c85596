"""recare refine: leave-one-out refinement inside kept clusters; writes the CARE-set."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer

from recare_cli import console
from recare_cli.cli.options import Output, Quiet

HELP = """Refine clustered candidates into the CARE-set (care.json).

Reads the stream from `recare cluster` (a file or - for stdin) and removes, inside each kept cluster, the words that lean toward the target. Also reads a CARE-set JSON of either layout (recare or the reference's) and re-writes it, e.g. to convert between layouts after a hand edit.

Example:

  recare mine imgs/ --target nudity | recare cluster | recare refine --alpha 0.1 > care.json
"""


class Layout(str, Enum):
    recare = "recare"
    reference = "reference"


class Property(str, Enum):
    object = "object"
    style = "style"


def refine(
    source: Annotated[str, typer.Argument(help="Clustered stream (JSONL) or a CARE-set JSON, or - "
                                               "for stdin.")] = "-",
    alpha: Annotated[float, typer.Option("--alpha", min=0.0,
                                         help="Removal margin: drop word i when d_i > (1+alpha)·m_i.")] = 0.01,
    min_cluster_size: Annotated[int, typer.Option(
        "--min-cluster-size", min=2, help="Smaller kept clusters are kept whole, unrefined.")] = 2,
    prop: Annotated[Property, typer.Option(
        "--property", help="object: retain prompts 'A photo of …'; style: 'A painting of …'.")] = Property.object,
    layout: Annotated[Layout, typer.Option(
        "--format", help="recare (full record) or reference (damilab/CARE careset.json).")] = Layout.recare,
    target: Annotated[str | None, typer.Option(
        "--target", help="Which CARE-set to take from a reference file holding several.",
        show_default=False)] = None,
    output: Output = "-",
    quiet: Quiet = False,
) -> None:
    from recare_cli.errors import BadInputError
    from recare_cli.io.candidates import parse_candidates
    from recare_cli.io.careset import FORMAT, is_reference_layout, parse_careset
    from recare_cli.io.jsonl import dumps_json, loads_json
    from recare_cli.io.streams import display_name, open_output, read_bytes
    from recare_cli.stages.refine import run_refinement

    console.set_quiet(quiet)
    data = read_bytes(source)
    name = display_name(source)
    careset = None
    try:
        doc = loads_json(data, source=name)
    except BadInputError:
        doc = None  # not one JSON document: a JSONL stream
    if isinstance(doc, dict) and (doc.get("format") == FORMAT or is_reference_layout(doc)):
        careset = parse_careset(doc, source=name, target=target)
        if alpha != 0.01 or min_cluster_size != 2:
            console.warn("--alpha and --min-cluster-size apply to clustered streams; a CARE-set is "
                         "re-written as it is")
    else:
        stream = parse_candidates(data, name)
        params = {"source": source, "alpha": alpha, "min_cluster_size": min_cluster_size,
                  "property": prop.value}
        careset = run_refinement(stream, alpha=alpha, min_cluster_size=min_cluster_size,
                                 prop=prop.value, params=params)
        console.info(f"CARE-set for '{careset.target}': {len(careset.words)} words kept, "
                     f"{len(careset.removed)} removed")
    if not careset.words:
        console.warn("the CARE-set is empty: nothing would be retained")
    doc_out = careset.to_recare() if layout is Layout.recare else careset.to_reference()
    with open_output(output, binary=False) as out:
        out.write(dumps_json(doc_out))
