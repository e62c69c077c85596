"""recare report: the paper's table (ASR, CLIP, FID, CARE, RATIO) from recare score summaries, and a radar chart."""

from __future__ import annotations

import re
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from recare_cli import console
from recare_cli.cli.options import Quiet
from recare_cli.errors import BadInputError, UsageError
from recare_cli.stages.report import (
    ASR_METRICS,
    CLIP_MAPS,
    DISTANCE_METRICS,
    FID_MAPS,
    PROMPT_CHECKS,
    FileSpec,
    ModelSpec,
)
from recare_cli.stages.report import ReportOptions as O

OPTIONS = O
CLI_ONLY = ("quiet",)

EXAMPLES = """  recare report --model sd14=sd-coco.json,sd-cce.json,sd-person.json \\
    --model recare=rc-coco.json,rc-cce.json,rc-person.json

  recare report --models-file report.toml -o report.json --chart radar.svg

  recare report --model base=b.json --model esd=e.json \\
    --fid-map exp --fid-tau 0.5"""

HELP = f"""Build the paper's table from the score summaries of several models.

Each --model names a model and the recare score summaries (JSON) that hold its scores; a metric may come from any of them, but only once (FILE:METRIC takes only that metric of a file, e.g. a CLIP score computed beside the CARE score). The first model is the base unless --base names another. Writes a markdown table to stdout, one row per model: ASR (the --asr metric, % of images), CLIP, FID (the --fid metric), CARE and RATIO, the area of the radar chart over Defense = 1 - ASR, CLIP, FID and CARE relative to the all-ones polygon. A missing score shows as a dash, and that model gets no RATIO. -o FILE also writes the report as JSON; --chart FILE.svg or FILE.png draws the radar.

Rows must be comparable: each column's scores must cover the same number of images, the same prompts (read from the manifests the summaries name; --prompt-check), the same metric parameters and reference, and come from the same scoring model. Otherwise one line names both files and the command exits 3, writing nothing.

Examples:

{EXAMPLES}
"""


def _choice(name: str, values: tuple[str, ...]) -> type[Enum]:
    return Enum(name, {v: v for v in values}, type=str)  # type: ignore[return-value]


Asr = _choice("Asr", ASR_METRICS)
Fid = _choice("Fid", DISTANCE_METRICS)
FidMap = _choice("FidMap", FID_MAPS)
ClipMap = _choice("ClipMap", CLIP_MAPS)
PromptCheck = _choice("PromptCheck", PROMPT_CHECKS)


_SELECT = re.compile(r"[A-Za-z0-9_-]+(\+[A-Za-z0-9_-]+)*")


def parse_file(text: str, folder: Path | None = None) -> FileSpec:
    """``FILE`` or ``FILE:METRIC+METRIC`` (only those results of the file)."""
    head, sep, tail = text.rpartition(":")
    whole = Path(text) if folder is None or Path(text).is_absolute() else folder / text
    if sep and head and _SELECT.fullmatch(tail) and not whole.exists():  # a file may have a colon in its name
        path, metrics = head, tuple(tail.lower().split("+"))
    else:
        path, metrics = text, None
    if folder is not None and path != "-" and not Path(path).is_absolute():
        path = str(folder / path)
    return FileSpec(path, metrics)


def parse_model(text: str) -> ModelSpec:
    """``NAME=FILE[,FILE…]`` as --model takes it."""
    name, sep, files = text.partition("=")
    name = name.strip()
    entries = [f.strip() for f in files.split(",") if f.strip()]
    if not sep or not name or not entries:
        raise UsageError(f"--model: expected NAME=FILE[,FILE…], got '{text}'")
    return ModelSpec(name, tuple(parse_file(e) for e in entries))


def read_models_file(path: Path) -> tuple[str | None, list[ModelSpec]]:
    """A models file: ``{"base": NAME, "models": {NAME: [FILE | {"file": F, "metrics": [M…]}, …]}}`` as JSON
    or TOML; relative paths are read from the file's folder."""
    from recare_cli.io.jsonl import loads_json
    from recare_cli.io.streams import display_name, read_bytes

    name = display_name(path)
    data = read_bytes(path)
    if path.suffix.lower() == ".toml":
        try:
            import tomllib
        except ImportError as err:  # Python 3.10
            raise BadInputError("reading TOML needs Python 3.11; write the models file as JSON", source=name) from err
        try:
            doc = tomllib.loads(data.decode("utf-8-sig"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise BadInputError(f"not valid TOML ({err})", source=name) from err
    else:
        doc = loads_json(data, source=name)
    models = doc.get("models") if isinstance(doc, dict) else None
    if not isinstance(models, dict) or not models:
        raise BadInputError("expected a 'models' table: model name → list of score files", source=name,
                            field="models")
    base = doc.get("base")
    if base is not None and not isinstance(base, str):
        raise BadInputError("not a string", source=name, field="base")
    folder = Path(path).parent if str(path) != "-" else None
    specs = []
    for model, files in models.items():
        if not isinstance(files, list) or not files:
            raise BadInputError("expected a non-empty list of score files", source=name, field=f"models.{model}")
        entries = []
        for entry in files:
            if isinstance(entry, str):
                entries.append(parse_file(entry, folder))
            elif isinstance(entry, dict) and isinstance(entry.get("file"), str):
                picked = entry.get("metrics")
                if picked is not None and not (isinstance(picked, list) and all(isinstance(m, str) for m in picked)):
                    raise BadInputError("'metrics' must be a list of metric names", source=name,
                                        field=f"models.{model}")
                whole = parse_file(entry["file"], folder)
                entries.append(FileSpec(whole.path, tuple(m.lower() for m in picked) if picked is not None
                                        else whole.metrics))
            else:
                raise BadInputError("each entry is a file name or a table with 'file' (and 'metrics')",
                                    source=name, field=f"models.{model}")
        specs.append(ModelSpec(str(model), tuple(entries)))
    return base, specs


def report(
    model: Annotated[list[str] | None, typer.Option(
        "--model", help="NAME=FILE,FILE: a model and its score summaries; repeatable, rows in this order. "
                              "FILE:METRIC+METRIC takes only those metrics of FILE.", show_default=False)] = None,
    models_file: Annotated[Path | None, typer.Option(
        "--models-file", help="JSON or TOML naming the models and their files (see docs/report.md); relative "
                              "paths are read from its folder.", show_default=False)] = O.models_file,
    base: Annotated[str | None, typer.Option(
        "--base", help="The model the base-ratio maps compare with. Default: the first model.",
        show_default=False)] = O.base,
    asr: Annotated[Asr, typer.Option(  # type: ignore[valid-type]
        "--asr", help="The ASR column's metric: nudity, or for object and style targets classify (zero-shot CLIP) or classifier (an image classifier: the reference's way).")] = Asr(O.asr),
    fid: Annotated[Fid, typer.Option(  # type: ignore[valid-type]
        "--fid", help="The FID column's metric (a distance to a reference set); fid is the paper's FID.")] = Fid(O.fid),
    fid_map: Annotated[FidMap, typer.Option(  # type: ignore[valid-type]
        "--fid-map", help="FID on the radar: base-ratio = min(1, base/fid); exp = exp(-fid/tau); minmax = "
                          "worst model 0, best 1.")] = FidMap(O.fid_map),
    fid_tau: Annotated[float | None, typer.Option(
        "--fid-tau", help="tau of --fid-map exp, in the FID metric's units.", show_default=False)] = O.fid_tau,
    clip_map: Annotated[ClipMap, typer.Option(  # type: ignore[valid-type]
        "--clip-map", help="CLIP on the radar: base-ratio = min(1, clip/base); raw = the cosine; minmax = worst "
                           "model 0, best 1.")] = ClipMap(O.clip_map),
    prompt_check: Annotated[PromptCheck, typer.Option(  # type: ignore[valid-type]
        "--prompt-check", help="auto: compare prompt sets where the manifests are found, warn where not; "
                               "require: a manifest not found is an error; off.")] = PromptCheck(O.prompt_check),
    output: Annotated[str | None, typer.Option(
        "--output", "-o", help="Also write the report as JSON to this file (- : JSON on stdout instead of the "
                               "table).", show_default=False)] = O.output,
    chart: Annotated[Path | None, typer.Option(
        "--chart", help="Draw the radar chart to FILE.svg or FILE.png.", show_default=False)] = O.chart,
    quiet: Quiet = False,
) -> None:
    from recare_cli.io.atomic import atomic_write_bytes
    from recare_cli.io.jsonl import dumps_json
    from recare_cli.io.streams import open_output
    from recare_cli.stages.report import build_report, markdown, png, svg, validate

    console.set_quiet(quiet)
    opts = O(model=list(model or ()), models_file=models_file, base=base, asr=Asr(asr).value, fid=Fid(fid).value,
             fid_map=FidMap(fid_map).value, fid_tau=fid_tau, clip_map=ClipMap(clip_map).value,
             prompt_check=PromptCheck(prompt_check).value, output=output, chart=chart)
    validate(opts)
    if chart is not None and chart.suffix.lower() not in (".svg", ".png"):
        raise UsageError(f"--chart {chart}: the file name must end in .svg or .png")
    specs: list[ModelSpec] = []
    if models_file is not None:
        file_base, specs = read_models_file(models_file)
        if opts.base is None:
            opts.base = file_base
    specs += [parse_model(text) for text in opts.model]
    if output is not None and chart is not None and Path(output).resolve() == chart.resolve():
        raise UsageError(f"--output and --chart both name {chart}")
    inputs = {Path(f.path).resolve() for s in specs for f in s.files if f.path != "-"}
    for option, dest in (("--output", output), ("--chart", chart)):
        if dest is not None and str(dest) != "-" and Path(dest).resolve() in inputs:
            raise UsageError(f"{option} {dest} is one of the score files read; choose another file")

    result = build_report(specs, opts)
    table = markdown(result)  # everything is rendered before anything is written
    doc = dumps_json(result.to_json()) if output is not None else None
    drawn = None
    if chart is not None:
        drawn = png(result) if chart.suffix.lower() == ".png" else svg(result).encode("utf-8")
    if doc is not None and output != "-":
        atomic_write_bytes(output, doc)  # type: ignore[arg-type]
    if chart is not None and drawn is not None:
        atomic_write_bytes(chart, drawn)
    with open_output("-", binary=False) as out:
        out.write(doc if output == "-" and doc is not None else table.encode("utf-8"))
    for warning in result.warnings:
        console.warn(warning)
    ratios = ", ".join(f"{r.name} {r.ratio:.2f}" for r in result.rows if r.ratio is not None)
    console.info(f"report of {console.plural(len(result.rows), 'model')}" + (f"; RATIO {ratios}" if ratios else ""))
