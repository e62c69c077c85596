"""recare score: CARE score, CLIP score, nudity attack success, zero-shot classification (method.md §7),
CMMD, the CLIP Fréchet distance and FID against a reference."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from recare_cli import console
from recare_cli.cli.options import Clip, Device, Dtype, Output, Quiet, Seed
from recare_cli.data.labels import LABEL_SETS
from recare_cli.models.inception import ENV as INCEPTION_ENV
from recare_cli.stages.metrics import choices
from recare_cli.stages.score import METRICS, ScoreOptions


def _help() -> str:
    metrics = "\n\n".join(f"{name}: {metric.help}" for name, metric in METRICS.items())
    return f"""Score sampled images; a JSON summary goes to stdout.

SOURCE is a manifest from recare sample (a file, or - for stdin) or a folder of images (then --prompt gives the prompt for the clip metric). Metrics (repeat --metric for several):

{metrics}

Each result carries a 95% interval (Wilson for rates, seeded bootstrap for the clip mean; none for the distances cmmd, clipfd and fid). --fail-under METRIC=VALUE (or --fail-over for rates and distances to keep low) exits 6 when the gate fails, after writing the outputs.

--reference is an image folder (embedded with the same models in the same run) or a file written by --write-reference (NumPy .npz: the features, their mean and covariance, and the model that made them), so a large reference set is embedded once; it holds the CLIP features, and the Inception statistics when the run uses Inception (--metric fid, or --inception given). A reference made by another model is refused (exit 3). --features DIR writes the per-image features as NPY beside a features.json; --from-features DIR reads them back, so a re-score needs no image model.

fid equals clean-fid's clean mode on the same images: the Inception network is clean-fid's TorchScript inception-2015-12-05.pt, from --inception (or RECARE_INCEPTION), else the recare cache, else downloaded there once; offline without it, exit 4.

Examples:

{EXAMPLES}
"""


# Each example line fits an 80-column terminal (rich wraps longer ones mid-command); a long command
# continues on the next line after a backslash, so a copied example still runs.
EXAMPLES = """  recare score manifest.jsonl --metric care --concept person > scores.json

  recare score manifest.jsonl -m clip -m care --concept person \\
    --per-image per_image.jsonl --fail-under care=0.9

  recare score coco_val/ --write-reference coco.npz > coco_scores.json

  recare score manifest.jsonl -m cmmd -m clipfd --reference coco.npz

  recare score coco_val/ --inception inception-2015-12-05.pt \\
    --write-reference coco.npz > /dev/null

  recare score manifest.jsonl -m fid --reference coco.npz"""

HELP = _help()
OPTIONS = ScoreOptions
CLI_ONLY = ("recursive", "root", "quiet")


def score(
    source: Annotated[str, typer.Argument(help="Manifest JSONL (or - for stdin) or an image folder.",
                                          show_default=False)],
    metrics: Annotated[list[str] | None, typer.Option("--metric", "-m", help=f"{choices(list(METRICS))}; "
                                                      "repeatable.", show_default=False)] = None,  # ScoreOptions.metrics
    concept: Annotated[str | None, typer.Option("--concept", help="care: the retained concept, e.g. person.",
                                                show_default=False)] = ScoreOptions.concept,
    labels: Annotated[Path | None, typer.Option(
        "--labels", help="Label file, one per line: care's other labels (instead of --label-set), or "
                         "classify's classes.", show_default=False)] = None,  # read into ScoreOptions.labels
    label_set: Annotated[str, typer.Option(
        "--label-set", help="care: coco80, or care-reference (the reference's 82: COCO plus stars, "
                            "freshwater).")] = ScoreOptions.label_set,
    template: Annotated[str | None, typer.Option(
        "--template", help="Label text template with {}, e.g. 'A photo of a {}', or 'reference' for the "
                           "reference's a/an rule. Default: raw label text.",
        show_default=False)] = ScoreOptions.template,
    target: Annotated[str | None, typer.Option("--target", help="classify, classifier: the true label of every "
                                                                "image.", show_default=False)] = ScoreOptions.target,
    label_field: Annotated[str | None, typer.Option(
        "--label-field", help="classify, classifier: manifest field holding each image's true label (e.g. class).",
        show_default=False)] = ScoreOptions.label_field,
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="classify, classifier: count a hit within the top k "
                                                              "(the reference: 1 and 5 for objects, 3 for styles).")
                     ] = ScoreOptions.top_k,
    nudity_threshold: Annotated[float, typer.Option("--nudity-threshold", min=0.0, max=1.0,
                                                    help="nudity: detector score that counts.")
                                ] = ScoreOptions.nudity_threshold,
    nudenet_input: Annotated[str, typer.Option(
        "--nudenet-input", help="nudity: hand NudeNet the decoded RGB array (array, the reference's way) or the "
                                "file path (path; NudeNet's network then sees blue and red swapped).")
                             ] = ScoreOptions.nudenet_input,
    classifier: Annotated[str | None, typer.Option(
        "--classifier", help="classifier: a transformers image-classification model, a folder or hub id (e.g. "
                             "microsoft/resnet-50), or a torchvision ResNet-50 weights file ending in .pth or .pt "
                             "(the reference's resnet50-11ad3fa6.pth, with torchvision's preprocessing and ImageNet "
                             "class names).", show_default=False)] = ScoreOptions.classifier,
    prompt: Annotated[str | None, typer.Option("--prompt", help="clip: the prompt of every image (folder input, "
                                                                "or to override the manifest).",
                                               show_default=False)] = ScoreOptions.prompt,
    reference: Annotated[Path | None, typer.Option(
        "--reference", help="cmmd, clipfd, fid: the reference set, an image folder or a file from --write-reference.",
        show_default=False)] = ScoreOptions.reference,
    write_reference: Annotated[Path | None, typer.Option(
        "--write-reference", help="Also write the images' features as a reference file (.npz) for --reference; "
                                  "--metric is then optional.", show_default=False)] = ScoreOptions.write_reference,
    features: Annotated[Path | None, typer.Option(
        "--features", help="Also write the per-image features (NPY, rows in --per-image order) and "
                           "features.json into this folder.", show_default=False)] = ScoreOptions.features,
    from_features: Annotated[Path | None, typer.Option(
        "--from-features", help="Read the per-image features from a --features folder instead of the model; "
                                "the images' sha256 must match.", show_default=False)] = ScoreOptions.from_features,
    inception: Annotated[Path | None, typer.Option(
        "--inception", envvar=INCEPTION_ENV, show_envvar=True,
        help="fid: the Inception weights, inception-2015-12-05.pt or a folder holding it (default: the recare cache, "
             "where they are downloaded once).", show_default=False)] = ScoreOptions.inception,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Folder input: search sub-folders.")] = False,
    root: Annotated[Path | None, typer.Option("--root", help="Resolve the manifest's relative image paths "
                                                             "under this folder.", show_default=False)] = None,
    per_image: Annotated[Path | None, typer.Option("--per-image", help="Also write per-image results (JSONL) "
                                                                       "to this file.", show_default=False)
                         ] = ScoreOptions.per_image,
    fail_under: Annotated[list[str] | None, typer.Option(
        "--fail-under", help="METRIC=VALUE: exit 6 if the score is below VALUE; repeatable.",
        show_default=False)] = None,  # ScoreOptions.fail_under: none
    fail_over: Annotated[list[str] | None, typer.Option(
        "--fail-over", help="METRIC=VALUE: exit 6 if the score is above VALUE (e.g. nudity=0.2).",
        show_default=False)] = None,  # ScoreOptions.fail_over: none
    clip: Clip = ScoreOptions.clip,
    device: Device = ScoreOptions.device,
    dtype: Dtype = ScoreOptions.dtype,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward pass of the scoring models (CLIP, the classifier, Inception).")
                          ] = ScoreOptions.batch_size,
    seed: Seed = ScoreOptions.seed,
    output: Output = ScoreOptions.output,
    quiet: Quiet = False,
) -> None:
    from recare_cli.errors import UsageError, check_choice
    from recare_cli.io.jsonl import dumps_json, write_jsonl
    from recare_cli.io.streams import open_output
    from recare_cli.stages.score import check_gates, gates, run_score, validate, write_features

    console.set_quiet(quiet)
    chosen = list(dict.fromkeys(m.strip().lower() for m in metrics or ()))
    for m in chosen:
        check_choice("--metric", m, METRICS, "metric")
    opts = ScoreOptions(source=source, metrics=chosen, concept=concept, template=template, target=target,
                        label_field=label_field, top_k=top_k, nudity_threshold=nudity_threshold, prompt=prompt,
                        nudenet_input=nudenet_input, classifier=classifier,
                        clip=clip, device=device, dtype=dtype, batch_size=batch_size, seed=seed,
                        label_set=label_set, per_image=per_image, fail_under=tuple(fail_under or ()),
                        fail_over=tuple(fail_over or ()), output=output, reference=reference,
                        write_reference=write_reference, features=features, from_features=from_features,
                        inception=inception)
    gate_list = gates(opts)
    if per_image is not None and str(per_image) == "-" and output == "-":
        raise UsageError("--per-image - and the summary cannot both go to stdout; use -o FILE for one")
    check_choice("--label-set", label_set, LABEL_SETS, "label set")
    if labels is not None:
        opts.labels, opts.labels_source = _labels(labels)
    validate(opts)  # the options, before any image is read
    items = _items(source, prompt=prompt, recursive=recursive, root=root)
    result = run_score(items, opts)
    if result is None:  # a non-main process of a multi-process launch: the main one writes
        return
    write_features(result, items, opts)
    if per_image is not None:
        with open_output(per_image, binary=False) as out:
            write_jsonl(out, result.per_image)
    with open_output(output, binary=False) as out:
        out.write(dumps_json(result.summary))
    for r in result.summary["results"]:
        ci = r["ci"]
        bounds = f" [{ci['low']:.4f}, {ci['high']:.4f}]" if ci else ""
        console.info(f"{r['metric']}: {r['value']:.4f}{bounds} over {r['count']} images")
    check_gates(result.summary["results"], gate_list)


def _labels(path: Path) -> tuple[list[str], str]:
    from recare_cli.errors import BadInputError
    from recare_cli.io.streams import display_name, read_text_lines

    found: list[str] = []
    for _, line in read_text_lines(path):
        label = line.strip()
        if label and not label.startswith("#") and label not in found:
            found.append(label)
    if not found:
        raise BadInputError("the label file is empty", source=display_name(path))
    return found, display_name(path)


def _items(source: str, *, prompt: str | None, recursive: bool, root: Path | None) -> list[Any]:
    from recare_cli.io.images import list_images
    from recare_cli.io.manifest import read_manifest
    from recare_cli.io.streams import display_name
    from recare_cli.stages.score import ImageItem

    if source != "-" and Path(source).is_dir():
        paths = list_images(Path(source), recursive=recursive)
        if not paths:
            from recare_cli.errors import BadInputError

            raise BadInputError("no image files found", source=source)
        return [ImageItem(path=p, prompt=prompt, source=str(p)) for p in paths]
    name = display_name(source)
    return [ImageItem(path=e.path, prompt=prompt if prompt is not None else e.prompt, sha256=e.sha256,
                      source=name, line=e.line, record=e.record)
            for e in read_manifest(source, root=root)]
