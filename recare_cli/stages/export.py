"""Stage: a base model plus recare weights, written as checkpoints other tools load (docs/export.md).

The model is loaded on the CPU in fp32, the weights are applied as ``recare sample`` applies them (refused
when made for another base model), and one writer per format writes the result, cast to ``--dtype``:

* ``single-file``: the original layout of the model's family (SD 1.x, 2.x, SDXL) in one safetensors file
  (``models.export``), for AUTOMATIC1111, ComfyUI and diffusers' ``from_single_file``;
* ``diffusers``: a complete pipeline folder (``models.weights.save_pipeline``, as ``erase --save-pipeline``),
  with the provenance in ``recare-export.json``;
* ``kohya-lora``: the adapters of one ``recare erase --lora`` file, not merged, in kohya naming
  (``models.lora.kohya_tensors``; SDXL's with the original UNet's module paths, as sd-scripts names them),
  for the web UIs' LoRA loaders and diffusers' ``load_lora_weights``.

``--weights`` also takes other tools' erased UNets and text encoders (``models.field``), applied as
``recare sample`` applies them. Token embeddings become the UIs' textual-inversion files, one per token, in
``OUTPUT-embeddings/``. Every output appears only when complete; an existing one is replaced
only with ``force``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recare_cli.dtypes import NAMES as DTYPES
from recare_cli.errors import BadInputError, RefusedError, UsageError, check_choice
from recare_cli.io.atomic import check_output_dir, staged_folder
from recare_cli.io.streams import STDIO
from recare_cli.models.sd import DEFAULT_MODEL
from recare_cli.models.weights import EMBEDDINGS_FORMAT, FORMAT_CONTENTS, LORA_FORMAT, WEIGHTS_FORMAT
from recare_cli.stages.options import recorded, run_control

KOHYA = "kohya-lora"
FORMATS = ("single-file", "diffusers", KOHYA)
FILE_FORMATS = ("single-file", KOHYA)  # formats that write one file
SINGLE_FILE_SUFFIX = ".safetensors"  # the UIs list checkpoints and LoRAs by extension
FIELD = "weights of another tool"  # the kind of a --weights file without a recare format (models.field)
PROVENANCE_FILE = "recare-export.json"  # in a diffusers folder (a single file keeps it in its metadata)
# The recare files --weights takes, by their metadata format. A new kind of weights is one entry here and one
# branch in _apply (embeddings are not applied: they are written as files of their own).
TAKES = {WEIGHTS_FORMAT: "UNet weights from recare erase", LORA_FORMAT: "LoRA adapters from recare erase --lora",
         EMBEDDINGS_FORMAT: "token embeddings from recare invert"}


@dataclass(frozen=True)
class ExportOptions:
    """Every option of ``recare export``; field order is the order provenance records them in."""

    output: str
    model: str = DEFAULT_MODEL
    weights: Sequence[Path] = ()  # recare weights of any kind TAKES; UNet weights are applied in order
    format: str = "single-file"
    dtype: str = "fp32"  # of the written tensors; fp32 keeps every value as trained
    force: bool = run_control(False)

    def validate(self) -> None:
        check_choice("--format", self.format, FORMATS, "format")
        check_choice("--dtype", self.dtype, DTYPES, "dtype")
        if self.output in ("", STDIO):
            raise UsageError("--output: recare export writes a file or a folder, not a stream: give a path")
        target = Path(self.output)
        if self.format in FILE_FORMATS:
            if not target.name.endswith(SINGLE_FILE_SUFFIX):
                raise UsageError(f"--output '{self.output}': a {self.format} file's name ends in "
                                 f"{SINGLE_FILE_SUFFIX} (the UIs list checkpoints and LoRAs by that extension)")
            if target.is_dir():
                raise UsageError(f"--output '{self.output}' is a folder; --format {self.format} writes a file")
        check_output_dir(target)

    def embeddings_folder(self) -> Path:
        """Where the UI embedding files go: ``OUTPUT-embeddings/`` (without ``.safetensors``) beside the output."""
        target = Path(self.output)
        return target.with_name(f"{target.name.removesuffix(SINGLE_FILE_SUFFIX)}-embeddings")


@dataclass
class ExportResult:
    output: Path
    format: str
    tensors: int  # tensors in a single file; 0 for a folder
    embeddings: Path | None = None
    embedding_files: list[str] = field(default_factory=list)


def read_inputs(paths: Sequence[Path]) -> list[tuple[Path, str]]:
    """Each file with its recare format (``FIELD`` for a file without one: another tool's erased model), read
    from its metadata before any model is loaded (a pickle is read weights-only here, and refused if it needs
    code)."""
    from recare_cli.models.weights import is_recare_file, read_metadata

    takes = "; ".join(TAKES.values())
    out = []
    for path in paths:
        meta = read_metadata(path)
        kind = meta.get("format") if is_recare_file(meta) else FIELD
        if kind not in TAKES and kind != FIELD:
            what = f" ({FORMAT_CONTENTS[kind]})" if kind in FORMAT_CONTENTS else ""
            raise BadInputError(f"a {kind or 'recare'} file{what}; --weights takes {takes}, or another tool's "
                                "erased model", source=str(path))
        out.append((Path(path), str(kind)))
    return out


def kohya_input(inputs: Sequence[tuple[Path, str]]) -> Path:
    """The one LoRA file ``--format kohya-lora`` converts (token embeddings may come beside it)."""
    others = [(path, kind) for path, kind in inputs if kind not in (LORA_FORMAT, EMBEDDINGS_FORMAT)]
    if others:
        path, kind = others[0]
        what = FORMAT_CONTENTS.get(kind, kind)
        raise UsageError(f"--format {KOHYA} writes LoRA adapters; {path} holds {what}, not LoRA adapters (use "
                         "--format single-file or diffusers)")
    loras = [path for path, kind in inputs if kind == LORA_FORMAT]
    if len(loras) != 1:
        raise UsageError(f"--format {KOHYA} needs exactly one --weights file from recare erase --lora "
                         f"({len(loras)} given)")
    return loras[0]


def check_outputs(targets: Sequence[Path], *, force: bool) -> None:
    """Refuse (before any work) to replace an existing output without ``force``; an empty folder is no output."""
    for target in targets:
        check_output_dir(target)
        if force or not (target.exists() or target.is_symlink()):
            continue
        if target.is_dir() and not any(target.iterdir()):
            continue
        raise RefusedError(f"'{target}' exists; pass --force to replace it")


def _apply(bundle: Any, path: Path, kind: str) -> dict[str, Any]:
    """Apply one weights file to the loaded model; returns the record provenance keeps of it."""
    from recare_cli.models.weights import apply_weight_files

    if kind in (WEIGHTS_FORMAT, LORA_FORMAT, FIELD):  # a LoRA file is merged into the weights; FIELD: models.field
        return {"kind": kind, **apply_weight_files(bundle, [path])[0]}
    raise AssertionError(f"no way to apply {kind}")  # TAKES and this function disagree


def read_tokens(bundle: Any, paths: Sequence[Path]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``{token: (n, D)}`` of every embeddings file (checked against the model's text encoder), and the record
    provenance keeps of each file. A token in two files is refused."""
    from recare_cli.models.fingerprint import state_fingerprint
    from recare_cli.models.sdxl_embeddings import read_model_tokens
    from recare_cli.models.weights import read_safetensors

    tokens: dict[str, Any] = {}
    records = []
    for path in paths:
        raw, _ = read_safetensors(path)
        found = read_model_tokens(bundle, path)  # SDXL: [clip_l row, clip_g row] per token
        for token, value in found.items():
            if token in tokens:
                raise BadInputError(f"token '{token}' is also in an earlier --weights file", source=str(path))
            tokens[token] = value
        records.append({"kind": EMBEDDINGS_FORMAT, "path": str(path), "fingerprint": state_fingerprint(raw),
                        "tokens": list(found)})
    return tokens, records


def _write_single_file(bundle: Any, opts: ExportOptions, dtype: Any, record: dict[str, Any]) -> int:
    from recare_cli.models.export import save_single_file

    return save_single_file(bundle.pipe, opts.output, dtype=dtype, meta={"provenance": record},
                            family=bundle.architecture.family)


def _write_diffusers(bundle: Any, opts: ExportOptions, dtype: Any, record: dict[str, Any]) -> int:
    from recare_cli.models.weights import save_pipeline

    pipe = bundle.pipe
    pipe.to(dtype=dtype)
    with staged_folder(opts.output, replace=opts.force) as folder:
        save_pipeline(pipe, folder)
        text = json.dumps(record, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        (folder / PROVENANCE_FILE).write_text(text, encoding="utf-8")
    return 0


def check_lora(bundle: Any, path: Path) -> dict[str, Any]:
    """Check a LoRA file against the loaded (unmodified) model without applying it: made for its base UNet,
    every adapter fitting its module. Returns the record provenance keeps of it."""
    from recare_cli.models.fingerprint import state_fingerprint
    from recare_cli.models.lora import lora_new_values
    from recare_cli.models.weights import check_base_unet, read_safetensors

    tensors, meta = read_safetensors(path)
    check_base_unet(meta, bundle.unet_fingerprint, str(path))
    if not tensors:
        raise BadInputError("holds no tensors", source=str(path))
    lora_new_values(bundle.pipe.unet.state_dict(), tensors, meta, str(path))
    return {"kind": LORA_FORMAT, "path": str(path), "fingerprint": state_fingerprint(tensors),
            "base_unet": meta.get("base_unet"), "tensors": len(tensors)}


def _write_kohya(bundle: Any, opts: ExportOptions, dtype: Any, record: dict[str, Any]) -> int:
    from recare_cli.models.export import UI_METADATA, unet_module_names
    from recare_cli.models.lora import kohya_tensors, lora_modules, lora_scale
    from recare_cli.models.weights import read_safetensors, write_safetensors

    path = kohya_input(read_inputs(opts.weights))
    tensors, meta = read_safetensors(path)
    # sd-scripts trains SDXL on the original (SGM) UNet and names its modules by that UNet's paths
    rename = unet_module_names(bundle.pipe.unet.state_dict()) if bundle.architecture.sdxl else None
    converted = kohya_tensors(tensors, meta, str(path), dtype, rename)
    rank = next(v for k, v in tensors.items() if k.endswith(".lora_A.weight")).shape[0]
    # what sd-scripts records of a LoRA network; the UIs show these keys
    network = {"ss_network_module": "networks.lora", "ss_network_dim": str(rank),
               "ss_network_alpha": str(lora_scale(meta, str(path)) * rank)}
    write_safetensors(opts.output, converted, {**UI_METADATA, **network, "base_unet": meta.get("base_unet", ""),
                                               "modules": len(lora_modules(tensors)), "provenance": record})
    return len(converted)


WRITERS: dict[str, Callable[[Any, ExportOptions, Any, dict[str, Any]], int]] = {
    "single-file": _write_single_file,
    "diffusers": _write_diffusers,
    KOHYA: _write_kohya,
}


def run_export(opts: ExportOptions) -> ExportResult:
    from recare_cli.dtypes import torch_dtype
    from recare_cli.io.provenance import provenance
    from recare_cli.models.export import save_ui_embeddings
    from recare_cli.models.sd import load_sd

    opts.validate()
    inputs = read_inputs(opts.weights)
    lora = kohya_input(inputs) if opts.format == KOHYA else None
    embedding_paths = [path for path, kind in inputs if kind == EMBEDDINGS_FORMAT]
    folder = opts.embeddings_folder() if embedding_paths else None
    check_outputs([Path(opts.output)] + ([folder] if folder is not None else []), force=opts.force)

    bundle = load_sd(opts.model, device="cpu", dtype="fp32")  # fingerprints of the unmodified model
    if opts.format == KOHYA and bundle.architecture.family not in ("sd1", "sd2", "sdxl"):
        raise UsageError(f"--format {KOHYA} writes SD 1.x, 2.x and SDXL UNet LoRAs; '{opts.model}' is "
                         f"{bundle.architecture.family}")
    identity = bundle.identity()
    if lora is not None:  # converted, not applied: the adapters are checked against the model
        applied = [check_lora(bundle, lora)]
    else:
        applied = [_apply(bundle, path, kind) for path, kind in inputs if kind != EMBEDDINGS_FORMAT]
    tokens, token_records = read_tokens(bundle, embedding_paths)
    record = provenance("export", recorded(opts), model=identity, weights=applied + token_records)
    dtype = torch_dtype(opts.dtype)
    result = ExportResult(Path(opts.output), opts.format, 0, folder)
    with contextlib.ExitStack() as stack:  # the embeddings folder appears after the checkpoint, or not at all
        if folder is not None:
            staged = stack.enter_context(staged_folder(folder, replace=opts.force))
            result.embedding_files = save_ui_embeddings(staged, tokens, dtype=dtype, meta={"provenance": record})
        result.tensors = WRITERS[opts.format](bundle, opts, dtype, record)
    return result
