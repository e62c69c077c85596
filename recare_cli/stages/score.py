"""Stage: score images (method.md §7) with the metrics of ``recare_cli.stages.metrics`` (CARE score,
CLIP score, NudeNet attack success, zero-shot classification, CMMD, the CLIP Fréchet distance and FID
against a reference, and any metric registered there).

The stage validates every requested metric, loads each per-image extractor they need once, passes
over the images in batches (each image is read and decoded once, and its file checked against the
manifest's sha256), then lets each metric compute its per-image rows and its summary. A reference
(``--reference``) is resolved before the pass: a file is read and checked against the run's
models, a folder's images are embedded after the scored ones. Features read back with
``--from-features`` stand in for their extractors' pass.

Under ``accelerate launch`` (or ``torchrun``) each process runs the extractors on a contiguous slice
of the images; the main process gathers the per-image features in order, computes the scores and
writes every output; the other processes write nothing. Embeddings of an image do not depend on its
batch neighbours beyond float rounding, so the summary equals the single-process one up to rounding
in the last digits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recare_cli import console
from recare_cli.data.labels import LABEL_SETS
from recare_cli.errors import BadInputError, GateFailedError, UsageError, check_choice
from recare_cli.io.digest import sha256_file
from recare_cli.models.clip import DEFAULT_CLIP
from recare_cli.stages.metrics import (
    EXTRACTORS,
    REGISTRY,
    Extractor,
    ImageItem,
    Run,
    choices,
    inception,
    reference,
    stored,
)
from recare_cli.stages.metrics.embeddings import embed_texts
from recare_cli.stages.options import recorded, recorded_if_set, run_control

__all__ = ["FORMAT", "METRICS", "VERSION", "Gate", "ImageItem", "ScoreOptions", "ScoreResult",
           "check_gates", "embed_texts", "gates", "per_image_pass", "read_item", "run_score", "score_params",
           "validate", "write_features"]

METRICS = REGISTRY  # the registered metrics by name, in registration order (a live view)
FORMAT = "recare.scores"
VERSION = 1


@dataclass
class ScoreOptions:
    """Every option of ``recare score`` but the command line's own (input listing, --quiet), each
    default written here once.

    Provenance records the fields from ``source`` to ``seed`` in this order (:func:`score_params`),
    with ``labels`` recorded as the name of the labels used: the label file's name, or the label
    set's; ``nudenet_input`` only when the nudity metric is requested, ``classifier`` only when given,
    ``inception`` only when given and used (fid, or a written reference).
    """

    source: str | None = None  # the manifest (- for stdin) or image folder, as named
    metrics: list[str] = field(default_factory=list)  # --metric, in the order given
    concept: str | None = None  # care: the retained concept
    labels: list[str] | None = None  # the labels of --labels FILE: care's other labels, classify's classes
    template: str | None = None  # label text template with {}, or "reference"; None: the raw label
    target: str | None = None  # classify: one true label for every image
    label_field: str | None = None  # classify: per-image true label from the manifest record
    top_k: int = 1
    nudity_threshold: float = 0.75  # the reference's threshold (core.scores.NUDENET_THRESHOLD)
    nudenet_input: str = "array"  # nudity: NudeNet gets the decoded RGB array, as the reference hands it, or "path"
    prompt: str | None = None  # clip: the prompt of every image (folder input, or over the manifest's)
    clip: str = DEFAULT_CLIP
    classifier: str | None = recorded_if_set()  # classifier: a folder, hub id or torchvision .pth
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = 64
    seed: int = 42  # the clip metric's bootstrap
    label_set: str = "coco80"  # care's other labels when no --labels FILE is given; recorded as labels
    labels_source: str | None = None  # the name recorded for labels (the label file's); None: label_set
    reference: Path | None = recorded_if_set()  # noqa: RUF009 (cmmd, clipfd: image folder or reference file)
    from_features: Path | None = recorded_if_set()  # noqa: RUF009 (per-image features read from here)
    inception: Path | None = recorded_if_set()  # noqa: RUF009 (fid: the Inception weights; None: cached or fetched)
    # Where the outputs go and the gates: the command line's business, never recorded.
    per_image: Path | None = run_control()  # noqa: RUF009 (run_control makes a dataclasses.field)
    fail_under: tuple[str, ...] = run_control(())
    fail_over: tuple[str, ...] = run_control(())
    output: str = run_control("-")
    write_reference: Path | None = run_control()  # noqa: RUF009 (also write the features as a reference)
    features: Path | None = run_control()  # noqa: RUF009 (also write the per-image features here, NPY)

    def label_list(self) -> list[str]:
        """The labels: those given, else the label set's."""
        return list(self.labels) if self.labels is not None else list(LABEL_SETS[self.label_set])

    def labels_name(self) -> str:
        return self.labels_source if self.labels_source is not None else self.label_set


def score_params(opts: ScoreOptions) -> dict[str, Any]:
    """The provenance parameters: the recorded fields, --labels FILE and --label-set as one entry."""
    params = recorded(opts)
    params["labels"] = opts.labels_name()
    del params["label_set"], params["labels_source"]
    if "nudity" not in opts.metrics:  # what NudeNet was fed is recorded by the runs that fed it
        del params["nudenet_input"]
    if inception.NAME not in needed_extractors(opts.metrics, written(opts)):  # RECARE_INCEPTION, set but unused
        params.pop("inception", None)
    return params


@dataclass
class ScoreResult:
    summary: dict[str, Any]
    per_image: list[dict[str, Any]]
    features: dict[str, Any] = field(default_factory=dict)  # each extractor's per-image features


@dataclass(frozen=True)
class Gate:
    metric: str
    value: float
    above: bool  # True: fail when the score is above value (--fail-over)

    @staticmethod
    def parse(spec: str, *, above: bool) -> Gate:
        option = "--fail-over" if above else "--fail-under"
        name, sep, raw = spec.partition("=")
        name = name.strip()
        if not sep or name not in REGISTRY:
            raise UsageError(f"{option}: expected METRIC=VALUE with METRIC one of {', '.join(REGISTRY)}, "
                             f"got '{spec}'")
        try:
            value = float(raw)
        except ValueError as err:
            raise UsageError(f"{option} {spec}: '{raw}' is not a number") from err
        return Gate(name, value, above)

    def failed(self, score: float) -> bool:
        return bool(score > self.value) if self.above else bool(score < self.value or math.isnan(score))


def gates(opts: ScoreOptions) -> list[Gate]:
    """The gates of ``opts``, each on a requested metric."""
    found = [Gate.parse(s, above=False) for s in opts.fail_under] + [Gate.parse(s, above=True)
                                                                    for s in opts.fail_over]
    for gate in found:
        if gate.metric not in opts.metrics:
            raise UsageError(f"a gate on '{gate.metric}' needs --metric {gate.metric}")
    return found


def check_gates(results: Sequence[dict[str, Any]], gates: Sequence[Gate]) -> None:
    by_metric = {r["metric"]: r["value"] for r in results}
    failed = []
    for gate in gates:
        score = by_metric[gate.metric]
        if gate.failed(score):
            failed.append(f"{gate.metric} {score:.4f} {'>' if gate.above else '<'} {gate.value:g}")
    if failed:
        raise GateFailedError("gate failed: " + "; ".join(failed))


def validate(opts: ScoreOptions, items: Sequence[ImageItem] = ()) -> None:
    """Refuse what the requested metrics cannot use; with no items, only the options are checked."""
    for name in opts.metrics:
        check_choice("--metric", name, REGISTRY, "metric")
    if not opts.metrics and opts.write_reference is None:
        raise UsageError(f"give at least one --metric ({choices(list(REGISTRY))}) or --write-reference FILE")
    check_choice("--label-set", opts.label_set, LABEL_SETS, "label set")
    if opts.reference is not None and not reference.needs(opts.metrics):
        users = [name for name, metric in REGISTRY.items() if reference.OPTION in metric.options]
        raise UsageError(f"--reference is for the metrics that compare with a reference ({choices(users)})")
    for metric in REGISTRY.values():
        if metric.name in opts.metrics:
            metric.validate(opts, items)


def read_item(item: ImageItem) -> Any:
    """Decode one image fully (RGB); a missing, corrupt or changed file stops the run."""
    from recare_cli.io.images import load_image

    source, line = item.source or str(item.path), item.line
    if not item.path.is_file():
        raise BadInputError(f"image {item.path} does not exist", source=source, line=line, field="path")
    if item.sha256 is not None:
        digest = sha256_file(item.path)
        if digest != item.sha256:
            raise BadInputError(f"image {item.path} has changed since it was sampled (sha256 differs)",
                                source=source, line=line, field="sha256")
    try:
        return load_image(item.path)
    except OSError as err:
        raise BadInputError(f"image {item.path} is unreadable ({err})", source=source, line=line,
                            field="path") from err


def per_image_pass(items: Sequence[ImageItem], extractors: dict[str, Extractor], *,
                   batch_size: int, doing: str = "scoring") -> dict[str, Any]:
    """Each extractor's features of ``items``, in order; every image is read once."""
    chunks: dict[str, list[Any]] = {name: [] for name in extractors}
    with console.progress(f"{doing} {console.plural(len(items), 'image')}", len(items)) as advance:
        for start in range(0, len(items), batch_size):
            batch = items[start:start + batch_size]
            images = [read_item(item) for item in batch]
            for name, extractor in extractors.items():
                chunks[name].append(extractor.features(batch, images))
            advance(len(batch))
    return {name: extractor.join(chunks[name]) for name, extractor in extractors.items()}


def needed_extractors(metrics: Sequence[str], extra: Sequence[str] = ()) -> list[str]:
    """The extractors the metrics need (and ``extra``), in registration order."""
    needs = {need for name in metrics for need in REGISTRY[name].needs} | set(extra)
    unknown = needs - set(EXTRACTORS)
    if unknown:
        raise ValueError(f"no extractor registered as {', '.join(sorted(unknown))}")
    return [name for name in EXTRACTORS if name in needs]


def written(opts: ScoreOptions) -> list[str]:
    """The extractors whose features ``--write-reference`` stores (none without it)."""
    return reference.written(opts) if opts.write_reference is not None else []


def gathered_pass(items: Sequence[ImageItem], extractors: dict[str, Extractor], opts: ScoreOptions, rank: int,
                  world: int, state: Any, doing: str = "scoring") -> dict[str, Any]:
    """:func:`per_image_pass` over this process's slice of ``items``, gathered in order (every process
    gets the whole)."""
    from recare_cli.parallel import part

    if not extractors:
        return {}
    mine = [items[i] for i in part(len(items), rank, world)]
    features = per_image_pass(mine, extractors, batch_size=opts.batch_size, doing=doing)
    if state is None:
        return features
    from accelerate.utils import gather_object

    gathered = gather_object([features])
    return {name: extractor.join([g[name] for g in gathered]) for name, extractor in extractors.items()}


def run_score(items: Sequence[ImageItem], opts: ScoreOptions) -> ScoreResult | None:
    """Score ``items``; returns None in the non-main processes of a multi-process launch."""
    from recare_cli.io.provenance import provenance
    from recare_cli.parallel import distributed

    validate(opts, items)
    ref, ref_items = reference.load(opts.reference) if opts.reference is not None else (None, [])
    kept, kept_ids = stored.read(opts.from_features, items) if opts.from_features is not None else ({}, {})
    rank, world, state = distributed(opts.device)
    device = str(state.device) if state is not None and opts.device == "auto" else opts.device
    names = needed_extractors(opts.metrics, written(opts))
    extractors = {name: stored.extractor(name, kept_ids[name], opts, device, opts.from_features)
                  if name in kept and opts.from_features is not None else EXTRACTORS[name](opts, device)
                  for name in names}
    compared = reference.needs(opts.metrics)
    if ref is not None and ref.kind == "file":  # checked before any image is embedded
        for name in compared:
            ref.check(name, extractors[name].identity())

    features = {name: kept[name] for name in names if name in kept}
    features.update(gathered_pass(items, {n: e for n, e in extractors.items() if n not in kept}, opts, rank, world,
                                  state))
    if ref is not None and ref.kind == "folder":
        ref.features = gathered_pass(ref_items, {n: extractors[n] for n in compared}, opts, rank, world, state,
                                     doing="embedding the reference's")
        ref.identities = {name: extractors[name].identity() for name in compared}
    if state is not None and not state.is_main_process:
        return None

    run = Run(items, opts, {**features, reference.KEY: ref} if ref is not None else features, extractors)
    per_image: list[dict[str, Any]] = [{"path": str(item.path), **({"line": item.line} if item.line else {}),
                                        "prompt": item.prompt} for item in items]
    results: list[dict[str, Any]] = []
    for name in opts.metrics:
        scored = REGISTRY[name].compute(run)
        for row, value in zip(per_image, scored.rows, strict=True):
            row[name] = value
        results.append(scored.summary)
    models = {name: extractor.identity() for name, extractor in extractors.items()}
    record = provenance("score", score_params(opts), **models)
    summary = {"format": FORMAT, "version": VERSION, "source": opts.source, "images": len(items),
               "results": results, "provenance": record}
    return ScoreResult(summary, per_image, features)


def write_features(result: ScoreResult, items: Sequence[ImageItem], opts: ScoreOptions) -> None:
    """Write what ``--features`` and ``--write-reference`` ask for, from a finished run."""
    models = result.summary["provenance"].get("models", {})
    if opts.features is not None:
        arrays = stored.arrays(result.features, list(result.features), len(items))
        stored.write(opts.features, items, arrays, {name: models[name] for name in arrays}, source=opts.source)
        if arrays:
            console.info(f"wrote the {', '.join(arrays)} features of {console.plural(len(items), 'image')} to "
                         f"{opts.features}")
        else:
            console.warn("--features: no metric computed per-image features that are arrays; nothing to re-use")
    if opts.write_reference is not None:
        names = written(opts)
        reference.write(opts.write_reference, {name: result.features[name] for name in names},
                        {name: models[name] for name in names}, source=opts.source,
                        provenance=result.summary["provenance"])
        console.info(f"wrote a reference of {console.plural(len(items), 'image')} ({', '.join(names)}) to "
                     f"{opts.write_reference}")
