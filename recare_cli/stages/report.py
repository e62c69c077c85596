"""Stage: the paper's table from ``recare score`` summaries (method.md §8): one row per model with its
attack success rate, CLIP score, distance to a reference (the FID column), CARE score and RATIO, the
normalised area of the radar chart over Defense = 1 − ASR, CLIP, FID and CARE (``core.ratio``).

Each model's scores may come from several summaries (one per image set: COCO prompts, the attack's
images, the concept's prompts); a metric the table reads must come from exactly one of them. Rows are
comparable only when each column's metric was computed the same way for every model: over the same
number of images, the same prompts (read from the manifests the summaries name), the same metric
parameters and reference, and the same scoring model. Anything else is refused (exit 3) before a byte is
written. docs/report.md describes the choices (which ASR, how FID and CLIP enter [0, 1]).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recare_cli.core import ratio as R
from recare_cli.errors import BadInputError, UsageError, check_choice
from recare_cli.stages.options import recorded, recorded_if_set, run_control

__all__ = ["FORMAT", "VERSION", "Cell", "FileSpec", "ModelSpec", "Report", "ReportOptions", "Row", "build_report",
           "markdown", "png", "rate_rows", "svg"]

FORMAT = "recare.report"
VERSION = 1
ASR_METRICS = ("nudity", "classify", "classifier")  # rates of images that show the target
DISTANCE_METRICS = ("clipfd", "cmmd", "fid")  # distances to a reference set, lower is closer
FID_MAPS = ("base-ratio", "exp", "minmax")
CLIP_MAPS = ("base-ratio", "raw", "minmax")
PROMPT_CHECKS = ("auto", "require", "off")


@dataclass
class ReportOptions:
    """Every option of ``recare report`` but --quiet, each default written here once."""

    model: list[str] = field(default_factory=list)  # --model NAME=FILE[,FILE…], in the order given
    models_file: Path | None = recorded_if_set()  # noqa: RUF009 (a JSON/TOML file naming models and files)
    base: str | None = None  # the model the base-ratio maps divide by; None: the first model
    asr: str = "nudity"  # the ASR column's metric: nudity, or classify / classifier for object and style targets
    fid: str = "clipfd"  # the FID column's metric; fid is the paper's (needs Inception weights; docs/report.md)
    fid_map: str = "base-ratio"  # how the FID column enters [0, 1]: min(1, base/fid), scale-free
    fid_tau: float | None = recorded_if_set()  # --fid-map exp: exp(-fid/tau); no default, FIDs' scales differ
    clip_map: str = "base-ratio"  # how the CLIP column enters [0, 1]: min(1, clip/base)
    prompt_check: str = "auto"  # compare prompt sets where the manifests are found; warn where not
    output: str | None = run_control()  # the JSON report (- for stdout instead of the markdown)
    chart: Path | None = run_control()  # noqa: RUF009 (the radar chart, .svg or .png)


@dataclass(frozen=True)
class Column:
    key: str  # asr, clip, fid, care
    title: str  # the table's heading
    axis: str  # the radar's label
    lower_is_better: bool


def columns(opts: ReportOptions) -> list[tuple[Column, str]]:
    """The table's columns, in order, each with the metric it reads."""
    return [(Column("asr", "ASR", "Defense", True), opts.asr), (Column("clip", "CLIP", "CLIP", False), "clip"),
            (Column("fid", "FID", "FID", True), opts.fid), (Column("care", "CARE", "CARE", False), "care")]


@dataclass(frozen=True)
class FileSpec:
    path: str  # as it will be opened (a models file's relative paths are joined to its folder)
    metrics: tuple[str, ...] | None = None  # only these of the file's results; None: all


@dataclass(frozen=True)
class ModelSpec:
    name: str
    files: tuple[FileSpec, ...]


@dataclass
class Cell:
    """One model's score for one column, and where it came from."""

    metric: str
    file: str
    result: dict[str, Any]
    summary: dict[str, Any]
    prompts: str | None = None  # sha256 of the sorted prompts of the summary's manifest; None: unchecked
    manifest: str | None = None  # the manifest read for them

    @property
    def value(self) -> float:
        return float(self.result["value"])

    @property
    def count(self) -> int:
        return int(self.result["count"])


@dataclass
class Row:
    name: str
    files: list[dict[str, Any]]  # each score file read: path, sha256, metrics taken from it
    cells: dict[str, Cell] = field(default_factory=dict)  # by column key
    axes: dict[str, float] = field(default_factory=dict)  # the radar's values in [0, 1], by column key
    ratio: float | None = None


@dataclass
class Report:
    rows: list[Row]
    base: str
    axes: list[str]  # the column keys RATIO is computed over, in the radar's order
    opts: ReportOptions
    columns: list[tuple[Column, str]]
    warnings: list[str] = field(default_factory=list)  # for the caller to show once the report is written

    def to_json(self) -> dict[str, Any]:
        from recare_cli.io.provenance import provenance

        cols = [{"key": c.key, "title": c.title, "metric": m, "better": "lower" if c.lower_is_better else "higher"}
                for c, m in self.columns]
        axis_names = {c.key: c.axis for c, _ in self.columns}
        rows = []
        for row in self.rows:
            scores = {}
            for col, _ in self.columns:
                cell = row.cells.get(col.key)
                scores[col.key] = None if cell is None else {
                    "metric": cell.metric, "value": cell.value, "count": cell.count, "ci": cell.result.get("ci"),
                    "file": cell.file, "source": cell.summary.get("source"), "prompts": cell.prompts}
            rows.append({"model": row.name, "base": row.name == self.base, "files": row.files, "scores": scores,
                         "axes": {k: row.axes[k] for k in self.axes if k in row.axes}, "ratio": row.ratio})
        return {"format": FORMAT, "version": VERSION, "columns": cols,
                "ratio": {"axes": [axis_names[k] for k in self.axes], "definition": RATIO_DEFINITION,
                          "defense": "1 - ASR", "clip_map": self.opts.clip_map, "fid_map": self.opts.fid_map,
                          "fid_tau": self.opts.fid_tau, "base": self.base},
                "models": rows, "provenance": provenance("report", recorded(self.opts))}


RATIO_DEFINITION = "sum_i r_i * r_(i+1 mod n) / n: the radar polygon's area over the all-ones polygon's"


def validate(opts: ReportOptions) -> None:
    check_choice("--asr", opts.asr, ASR_METRICS, "ASR metric")
    check_choice("--fid", opts.fid, DISTANCE_METRICS, "distance metric")
    check_choice("--fid-map", opts.fid_map, FID_MAPS, "FID map")
    check_choice("--clip-map", opts.clip_map, CLIP_MAPS, "CLIP map")
    check_choice("--prompt-check", opts.prompt_check, PROMPT_CHECKS, "prompt check")
    if opts.fid_map == "exp" and (opts.fid_tau is None or not opts.fid_tau > 0):
        raise UsageError("--fid-map exp needs --fid-tau, a positive distance (exp(-fid/tau)); FIDs' scales differ "
                         "by metric, so there is no default")
    if opts.fid_tau is not None and opts.fid_map != "exp":
        raise UsageError("--fid-tau is for --fid-map exp")


def load_scores(path: str) -> dict[str, Any]:
    """A ``recare score`` summary, its shape checked."""
    from recare_cli.io.jsonl import loads_json
    from recare_cli.io.streams import display_name, read_bytes
    from recare_cli.stages.score import FORMAT as SCORES
    from recare_cli.stages.score import VERSION as SCORES_VERSION

    name = display_name(path)
    doc = loads_json(read_bytes(path), source=name)
    fmt = doc.get("format") if isinstance(doc, dict) else None
    if fmt != SCORES:
        raise BadInputError(f"not a {SCORES} summary (format {fmt!r}); give the JSON recare score writes",
                            source=name, field="format")
    version = doc.get("version")
    if not isinstance(version, int) or version > SCORES_VERSION:
        raise BadInputError(f"summary version {version!r} is not one this recare reads ({SCORES_VERSION})",
                            source=name, field="version")
    results = doc.get("results")
    if not isinstance(results, list) or not all(isinstance(r, dict) and isinstance(r.get("metric"), str)
                                                for r in results):
        raise BadInputError("expected a list of results, each with a 'metric'", source=name, field="results")
    return doc


def _gather(spec: ModelSpec, wanted: dict[str, str]) -> Row:
    """The row of one model: for each column (key → metric), the one result that provides it."""
    from recare_cli.io.digest import sha256_file
    from recare_cli.io.streams import display_name

    row = Row(spec.name, [])
    by_metric = {metric: key for key, metric in wanted.items()}
    for fs in spec.files:
        name = display_name(fs.path)
        summary = load_scores(fs.path)
        have = {r["metric"] for r in summary["results"]}
        for metric in fs.metrics or ():
            if metric not in have:
                raise BadInputError(f"no '{metric}' result (it has {', '.join(sorted(have)) or 'none'})", source=name)
        taken = []
        for result in summary["results"]:
            metric = result["metric"]
            if metric not in by_metric or (fs.metrics is not None and metric not in fs.metrics):
                continue
            key = by_metric[metric]
            if key in row.cells:
                raise BadInputError(f"model '{spec.name}': {metric} is in both {row.cells[key].file} and {name}; "
                                    f"keep one (FILE:METRIC takes only the named metrics of a file)")
            value, count = result.get("value"), result.get("count")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise BadInputError(f"{metric}: the value is not a number ({value!r})", source=name, field="value")
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise BadInputError(f"{metric}: the image count is not a positive integer ({count!r})", source=name,
                                    field="count")
            row.cells[key] = Cell(metric, name, result, summary)
            taken.append(metric)
        digest = sha256_file(fs.path) if fs.path != "-" else None  # stdin was read once, by load_scores
        row.files.append({"path": name, "sha256": digest, "metrics": taken})
    return row


def _prompt_set(cell: Cell, cache: dict[str, tuple[str | None, str | None]]) -> tuple[str | None, str | None, str]:
    """(digest of the sorted prompts, manifest read, why unchecked) for the summary behind ``cell``."""
    from recare_cli.io.digest import sha256_bytes
    from recare_cli.io.jsonl import dumps_line
    from recare_cli.io.manifest import read_manifest

    source = cell.summary.get("source")
    if not isinstance(source, str) or source in ("", "-"):
        return None, None, "its images were read from stdin"
    candidates = [Path(source)] if Path(source).is_absolute() else [Path(source), Path(cell.file).parent / source]
    found = next((p for p in candidates if p.exists()), None)
    if found is None:
        return None, None, f"manifest {source} not found"
    if found.is_dir():
        return None, None, f"{source} is an image folder (no prompts)"
    key = str(found)
    if key not in cache:
        prompts = sorted(e.prompt or "" for e in read_manifest(found))
        cache[key] = (sha256_bytes(dumps_line(prompts)), key)
    digest, manifest = cache[key]
    return digest, manifest, ""


def _identity_key(identity: Any) -> Any:
    return identity.get("fingerprint", identity) if isinstance(identity, dict) else identity


def _extractors(metric: str, a: Cell, b: Cell) -> list[str]:
    from recare_cli.stages.metrics import REGISTRY

    if metric in REGISTRY:
        return list(REGISTRY[metric].needs)
    ma = a.summary.get("provenance", {}).get("models", {}) or {}
    mb = b.summary.get("provenance", {}).get("models", {}) or {}
    return [name for name in ma if name in mb]


def _reference_key(result: dict[str, Any]) -> Any:
    ref = result.get("reference")
    if not isinstance(ref, dict):
        return ref
    return {k: v for k, v in ref.items() if k != "path"} if "sha256" in ref else ref


def _difference(metric: str, a: Cell, b: Cell) -> str | None:
    """Why ``a`` and ``b`` cannot share a column, or None."""
    if a.count != b.count:
        return f"{a.count:,} images against {b.count:,}"
    if a.prompts is not None and b.prompts is not None and a.prompts != b.prompts:
        return f"different prompt sets (manifests {a.manifest} and {b.manifest})"
    pa, pb = a.result.get("params") or {}, b.result.get("params") or {}
    for key in sorted(set(pa) | set(pb)):
        if pa.get(key) != pb.get(key):
            return f"{key} {pa.get(key)!r} against {pb.get(key)!r}"
    if _reference_key(a.result) != _reference_key(b.result):
        ra, rb = a.result.get("reference") or {}, b.result.get("reference") or {}
        return f"different references ({ra.get('path')} against {rb.get('path')})"
    ma = a.summary.get("provenance", {}).get("models", {}) or {}
    mb = b.summary.get("provenance", {}).get("models", {}) or {}
    for name in _extractors(metric, a, b):
        ia, ib = ma.get(name), mb.get(name)
        if _identity_key(ia) != _identity_key(ib):
            def named(identity: Any) -> str:
                return str(identity.get("name", identity)) if isinstance(identity, dict) else str(identity)
            return f"scored with {name} {named(ia)} against {named(ib)} (fingerprints differ)"
    return None


def check_comparable(rows: list[Row], cols: list[tuple[Column, str]], prompt_check: str) -> list[str]:
    """Refuse (exit 3) a column whose cells were computed differently; return a warning about prompt sets left
    unchecked, if any."""
    cache: dict[str, tuple[str | None, str | None]] = {}
    unchecked: dict[str, str] = {}
    if prompt_check != "off":
        for row in rows:
            for cell in row.cells.values():
                cell.prompts, cell.manifest, why = _prompt_set(cell, cache)
                if cell.prompts is None:
                    if prompt_check == "require":
                        raise BadInputError(f"cannot check the prompts of {cell.metric}: {why} "
                                            "(--prompt-check require)", source=cell.file)
                    unchecked.setdefault(cell.file, why)
    for col, metric in cols:  # every pair: a prompt set left unchecked on one side must not hide another pair's
        cells = [(row, row.cells[col.key]) for row in rows if col.key in row.cells]
        for i, (first_row, first) in enumerate(cells):
            for row, cell in cells[i + 1:]:
                why_not = _difference(metric, first, cell)
                if why_not:
                    raise BadInputError(f"{metric} of '{first_row.name}' ({first.file}) and of '{row.name}' "
                                        f"({cell.file}) are not comparable: {why_not}")
    if unchecked and len(rows) > 1:
        listed = "; ".join(f"{f} ({why})" for f, why in unchecked.items())
        return [f"prompt sets not compared for {listed}"]
    return []


def _axes(rows: list[Row], base: Row, opts: ReportOptions) -> list[str]:
    """Fill each row's radar values; return the axes RATIO uses (the columns some model has)."""
    present = [key for key in ("asr", "clip", "fid", "care") if any(key in row.cells for row in rows)]
    for key in present:
        have = [row for row in rows if key in row.cells]
        values = [row.cells[key].value for row in have]
        if key == "asr":
            mapped = [R.defense(v) for v in values]
        elif key == "care":
            mapped = [R.clamp01(v) for v in values]
        else:
            how = opts.clip_map if key == "clip" else opts.fid_map
            option = "--clip-map" if key == "clip" else "--fid-map"
            if how == "minmax":
                mapped = R.min_max(values, higher_is_better=key == "clip")
            elif how == "raw":
                mapped = [R.clamp01(v) for v in values]
            elif how == "exp":
                assert opts.fid_tau is not None
                mapped = [R.exp_decay(v, opts.fid_tau) for v in values]
            else:  # base-ratio
                if key not in base.cells:
                    raise BadInputError(f"{option} base-ratio divides by the base model's {base_metric(key, opts)}, "
                                        f"but '{base.name}' has none; add its score file or choose another {option}")
                ref = base.cells[key].value
                if key == "clip" and not ref > 0:
                    raise BadInputError(f"{option} base-ratio: the base model's clip score {ref:.4f} is not positive "
                                        f"({base.cells[key].file}); choose --clip-map raw or minmax")
                if key == "fid" and (ref < 0 or any(v < 0 for v in values)):
                    raise BadInputError(f"{opts.fid}: a negative distance; is this a distance?")
                mapped = [R.higher_vs_base(v, ref) if key == "clip" else R.lower_vs_base(v, ref) for v in values]
        for row, value in zip(have, mapped, strict=True):
            row.axes[key] = value
    return present


def base_metric(key: str, opts: ReportOptions) -> str:
    return {"asr": opts.asr, "clip": "clip", "fid": opts.fid, "care": "care"}[key]


def build_report(specs: list[ModelSpec], opts: ReportOptions) -> Report:
    """Read every model's summaries, check the rows are comparable, compute the radar values and RATIO."""
    validate(opts)
    if not specs:
        raise UsageError("name at least one model: --model NAME=FILE[,FILE…] or --models-file FILE")
    names = [s.name for s in specs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UsageError(f"model '{twice[0]}' is named twice")
    base_name = opts.base if opts.base is not None else names[0]
    if base_name not in names:
        raise UsageError(f"--base {base_name}: no such model (models: {', '.join(names)})")
    cols = columns(opts)
    rows = [_gather(spec, {c.key: m for c, m in cols}) for spec in specs]
    return rate_rows(rows, base_name, opts, check_comparable(rows, cols, opts.prompt_check))


def rate_rows(rows: list[Row], base_name: str, opts: ReportOptions, warnings: list[str] | None = None) -> Report:
    """The radar values and RATIO of rows whose cells are filled (by ``build_report`` from score files, by
    ``recare demo`` from the figures it measured), ``base_name`` the row the base-ratio maps divide by."""
    cols = columns(opts)
    warnings = list(warnings or [])
    base = next(row for row in rows if row.name == base_name)
    axes = _axes(rows, base, opts)
    titles = {c.key: c.title for c, _ in cols}
    if len(axes) < R.MIN_AXES:
        warnings.append(f"RATIO needs at least {R.MIN_AXES} of ASR, CLIP, FID and CARE; the scores have "
                        f"{', '.join(titles[a] for a in axes) or 'none'}")
        return Report(rows, base_name, axes, opts, cols, warnings)
    incomplete = []
    for row in rows:
        if all(key in row.axes for key in axes):
            row.ratio = R.ratio([row.axes[key] for key in axes])
        else:
            incomplete.append(f"{row.name} (no {', '.join(titles[k] for k in axes if k not in row.axes)})")
    if incomplete:
        warnings.append(f"no RATIO for {'; '.join(incomplete)}: an area over fewer axes is not comparable")
    return Report(rows, base_name, axes, opts, cols, warnings)


# --- rendering -------------------------------------------------------------------------------------------------


def _figure(key: str, value: float) -> str:
    if key == "asr":
        return f"{100 * value:.2f}"
    if key == "clip":
        return f"{value:.4f}"
    if key == "fid":
        return f"{value:.4g}"
    return f"{value:.2f}"


def _escape_md(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|")


DISTANCE_WORDS = {"clipfd": "clipfd, the Fréchet distance of CLIP image embeddings to the reference",
                  "cmmd": "cmmd, the CMMD of CLIP image embeddings to the reference",
                  "fid": "fid, the Fréchet Inception Distance to the reference (clean-fid's clean mode)"}


def _map_words(how: str, x: str, higher_is_better: bool, tau: float | None) -> str:
    if how == "base-ratio":
        return f"min(1, {x}/base)" if higher_is_better else f"min(1, base/{x})"
    if how == "exp":
        return f"exp(-{x}/{tau:g})"
    if how == "minmax":
        return "worst model 0, best 1"
    return x


def markdown(report: Report) -> str:
    """The table (one row per model; – where a score is missing) and a paragraph saying what each column is."""
    arrows = {True: "↓", False: "↑"}
    head = ["model"] + [f"{c.title} {arrows[c.lower_is_better]}" for c, _ in report.columns] + ["RATIO ↑"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for row in report.rows:
        cells = [_escape_md(row.name)]
        for col, _ in report.columns:
            cell = row.cells.get(col.key)
            cells.append("–" if cell is None else _figure(col.key, cell.value))
        cells.append("–" if row.ratio is None else f"{row.ratio:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    opts = report.opts
    metric = {c.key: m for c, m in report.columns}
    axis_words = {"asr": "Defense (1 − ASR)", "care": "CARE",
                  "clip": f"CLIP ({_map_words(opts.clip_map, 'clip', True, opts.fid_tau)})",
                  "fid": f"FID ({_map_words(opts.fid_map, 'fid', False, opts.fid_tau)})"}
    if len(report.axes) >= R.MIN_AXES:
        ratio_text = (f"RATIO: the area of the radar over {', '.join(axis_words[k] for k in report.axes)}, "
                      "divided by the all-ones polygon's")
    else:
        ratio_text = f"RATIO: not computed (it needs {R.MIN_AXES} of the four columns)"
    legend = (f"ASR: {metric['asr']}, % of images. FID: {DISTANCE_WORDS.get(metric['fid'], metric['fid'])}. "
              f"{ratio_text}. Base model: {_escape_md(report.base)}.")
    return "\n".join(lines) + "\n\n" + legend + "\n"


def _series(report: Report) -> tuple[list[str], list[tuple[str, list[float]]]]:
    """The radar's axis labels, and per model with a RATIO its legend text and values."""
    if len(report.axes) < R.MIN_AXES:
        raise BadInputError(f"the radar chart needs at least {R.MIN_AXES} axes; the scores give {len(report.axes)}")
    names = {c.key: c.axis for c, _ in report.columns}
    return [names[k] for k in report.axes], [(f"{row.name}: RATIO {row.ratio:.2f}", [row.axes[k] for k in report.axes])
                                             for row in report.rows if row.ratio is not None]


def svg(report: Report) -> str:
    """The radar chart as SVG text (``core.ratio.radar_svg``): the same report gives the same bytes."""
    return R.radar_svg(*_series(report))


def png(report: Report) -> bytes:
    """The radar chart as PNG (``core.ratio.radar_png``), drawn with PIL."""
    return R.radar_png(*_series(report))
