"""Stage: sample evaluation images from (an erased) Stable Diffusion (method.md §6).

Work plan, which makes every way of running give the same bytes:

1. *Jobs*: one per (prompt, image index), in prompt order then image index. Image ``j`` of a prompt
   gets seed ``evaluation_seed + j`` when the prompt has one, else ``--seed + j`` (``j`` counts from
   0 within the prompt, as the reference's ``seed + i``); its latent comes from its own CPU
   ``torch.Generator`` seeded with it, so it does not depend on its batch neighbours.
2. *Batches*: the job list is cut into fixed consecutive batches of ``--batch-size``. A batch is
   the unit of work: shards (``--shard i/n``) and processes (``accelerate launch``) take contiguous
   runs of whole batches, so every image is computed in exactly the batch it would be in a single
   process, and the outputs are identical byte for byte. (Different batch *sizes* give the same
   images up to float rounding: batched matrix products round differently on CPU.)
   With ``--row-settings`` a row may carry its own guidance and size, and jobs of different settings
   never share a batch: the jobs of each setting are cut into batches of ``--batch-size`` in job
   order, and the batches are taken in the order of their first job (:func:`plan_batches`). With one
   setting for every row this is exactly the consecutive cut. Images and manifest records follow the
   batch order.
3. *Resume*: an image is done when its file decodes completely, has the right size and carries
   the same prompt, seed and settings digest (a PNG text chunk). A batch with any missing image
   is recomputed whole (same bytes for the images it already had) and only the missing files are
   written, each atomically. An image made with other settings is never overwritten: the run
   stops and asks for another ``--out``.

Every option lives once in :class:`SampleOptions`; ``recare sample`` takes its defaults from it.
"""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recare_cli import console
from recare_cli.errors import BadInputError, UsageError, check_choice
from recare_cli.io.atomic import atomic_write_bytes
from recare_cli.io.digest import sha256_file
from recare_cli.io.manifest import make_record
from recare_cli.io.prompts import PromptRow, truncation_note
from recare_cli.models.scheduler import SCHEDULERS, set_scheduler
from recare_cli.models.sd import DEFAULT_MODEL
from recare_cli.parallel import Shard, distributed, part
from recare_cli.stages.options import run_control

PNG_KEY = "recare"
_SAFE_CASE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class SampleOptions:
    """Every option of ``recare sample``; a field's default is the option's default."""

    out: Path
    images_per_prompt: int = 1
    seed: int = 42
    model: str = DEFAULT_MODEL
    weights: Sequence[Path] = ()  # recare erase outputs, applied in order
    embeddings: Sequence[Path] = ()  # recare invert outputs
    steps: int = 50
    guidance: float = 7.5
    height: int | None = None  # None: the model's own size (as diffusers pipelines choose it)
    width: int | None = None
    scheduler: str = "default"
    batch_size: int = 4  # part of the work plan: fixed across shards and resumes for identical bytes
    shard: str = run_control("0/1")
    device: str = run_control("auto")
    dtype: str = "auto"
    row_settings: bool = False  # honour a prompt row's own guidance / height / width (I2P's columns)

    def validate(self) -> Shard:
        """Check what can be checked before any file is read; returns the parsed ``--shard``."""
        for name in ("images_per_prompt", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
        if (self.height is not None and self.height % 8) or (self.width is not None and self.width % 8):
            raise UsageError("--height and --width must be multiples of 8")
        check_choice("--scheduler", self.scheduler, SCHEDULERS, "scheduler")
        return Shard.parse(self.shard)

    def sampling(self, *, height: int, width: int, dtype: str, guidance: float | None = None) -> dict[str, Any]:
        """The settings an image record carries (the guidance, size and dtype actually used)."""
        return {"steps": self.steps, "guidance": self.guidance if guidance is None else guidance,
                "height": height, "width": width, "scheduler": self.scheduler, "dtype": dtype,
                "safety_checker": False}


@dataclass(frozen=True)
class Setting:
    """What may differ between the images of one run: guidance and size (``--row-settings``)."""

    guidance: float
    height: int
    width: int


def job_setting(row: PromptRow, opts: SampleOptions, size: tuple[int, int]) -> Setting:
    """The row's own guidance and size when ``--row-settings`` is on and the row has them, else the
    command's (``size``: the command's (height, width))."""
    height, width = size
    if not opts.row_settings:
        return Setting(opts.guidance, height, width)
    return Setting(opts.guidance if row.guidance is None else row.guidance,
                   height if row.height is None else row.height, width if row.width is None else row.width)


def plan_batches(keys: Sequence[Any], batch_size: int) -> list[list[int]]:
    """Batches of job numbers: the jobs of each key (setting) cut into consecutive runs of at most
    ``batch_size`` in job order, ordered by their first job. With one key, the consecutive cut."""
    groups: dict[Any, list[int]] = {}
    for number, key in enumerate(keys):
        groups.setdefault(key, []).append(number)
    batches = [jobs[s:s + batch_size] for jobs in groups.values() for s in range(0, len(jobs), batch_size)]
    return sorted(batches, key=lambda batch: batch[0])


def pick_batches(batches: list[list[int]], shard: Shard, process: int, processes: int) -> list[list[int]]:
    """This shard's contiguous run of batches, then this process's contiguous part of it."""
    in_shard = [batches[i] for i in part(len(batches), shard.index, shard.count)]
    return [in_shard[i] for i in part(len(in_shard), process, processes)]


@dataclass(frozen=True)
class Job:
    number: int  # 0-based position in the whole job list
    row: PromptRow
    image_index: int
    seed: int
    name: str  # file name inside --out


def file_stems(rows: Sequence[PromptRow]) -> list[str]:
    """``case-<case_number>`` when every prompt has a distinct, file-name-safe case number, else
    ``prompt-<index>`` (0-based, six digits)."""
    cases = [str(r.case_number) if r.case_number is not None else "" for r in rows]
    if all(_SAFE_CASE.match(c) for c in cases) and len(set(cases)) == len(cases):
        return [f"case-{c}" for c in cases]
    return [f"prompt-{r.index:06d}" for r in rows]


def plan_jobs(rows: Sequence[PromptRow], *, images_per_prompt: int, seed: int) -> list[Job]:
    jobs: list[Job] = []
    for row, stem in zip(rows, file_stems(rows), strict=True):
        base = row.seed if row.seed is not None else seed
        for j in range(images_per_prompt):
            jobs.append(Job(len(jobs), row, j, base + j, f"{stem}_{j:04d}.png"))
    return jobs


def config_digest(model: dict[str, Any], weights: list[dict[str, Any]], embeddings: list[dict[str, Any]],
                  sampling: dict[str, Any]) -> str:
    from recare_cli.models.fingerprint import combine

    second = [model["text_encoder_2"]] if "text_encoder_2" in model else []  # SDXL's
    return combine(model.get("unet"), model.get("text_encoder"), *second, [w["fingerprint"] for w in weights],
                   [e["fingerprint"] for e in embeddings], sorted(sampling.items()))


def image_tag(job: Job, config: str) -> str:
    import orjson

    return orjson.dumps({"config": config, "prompt": job.row.prompt, "seed": job.seed}).decode()


def check_existing(path: Path, *, size: tuple[int, int], tag: str) -> bool:
    """True when ``path`` is a finished image of this job; False when absent or unreadable (to be
    made again); raises when it is a readable image made otherwise (never overwritten)."""
    from PIL import Image

    if not path.exists():
        return False
    try:
        with Image.open(path) as im:
            im.load()
            found_size, found_tag = im.size, im.info.get(PNG_KEY)
    except (OSError, ValueError, SyntaxError):
        console.warn(f"{path} is unreadable (cut off by a crash?); making it again")
        return False
    if found_tag != tag or found_size != size:
        raise BadInputError("exists but was made with other settings, prompt or seed; refusing to overwrite "
                            "it (use another --out, or delete the folder's images)", source=str(path))
    return True


def encode_png(pixels: Any, tag: str) -> bytes:
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text(PNG_KEY, tag)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def check_input_files(opts: SampleOptions) -> None:
    """Each --weights / --embeddings file is readable and of the kind its option takes (read from its metadata,
    before any model is loaded). A --weights file of another tool (no recare metadata; a PyTorch checkpoint is
    read weights-only here, and refused if it needs code) is checked by name and shape once the model is loaded."""
    from recare_cli.models.weights import (
        CHECKPOINT_FORMAT,
        EMBEDDINGS_FORMAT,
        LORA_FORMAT,
        TEXT_ENCODER_FORMAT,
        WEIGHT_FORMATS,
        WEIGHTS_FORMAT,
        check_format,
        read_metadata,
    )

    takes = {WEIGHTS_FORMAT: "--weights", TEXT_ENCODER_FORMAT: "--weights", LORA_FORMAT: "--weights",
             EMBEDDINGS_FORMAT: "--embeddings",
             CHECKPOINT_FORMAT: "recare erase --resume to finish that run, then give its output to --weights"}
    wanted: tuple[str, ...]
    for paths, wanted in ((opts.weights, WEIGHT_FORMATS), (opts.embeddings, (EMBEDDINGS_FORMAT,))):
        for path in paths:
            check_format(path, read_metadata(path), wanted, takes)


def load_embeddings(bundle: Any, paths: Sequence[Path]) -> list[dict[str, Any]]:
    """Add ``recare invert`` tokens (``{token: (n, D)}``) to the tokenizer and text encoder; files that
    record another base text encoder are refused."""
    from recare_cli.models.fingerprint import state_fingerprint
    from recare_cli.models.sdxl_embeddings import check_kind, load_sdxl_embeddings_into
    from recare_cli.models.weights import load_embeddings_into, read_safetensors

    loaded: list[dict[str, Any]] = []
    xl = bundle.architecture.sdxl
    for path in paths:  # every file's kind first: a mismatch stops the command before any token is added
        check_kind(path, read_safetensors(path)[0], sdxl_model=xl)
    for path in paths:
        tensors, _ = read_safetensors(path)
        if xl:
            tokens = load_sdxl_embeddings_into(bundle.pipe, path, text_encoders=(bundle.text_encoder_fingerprint,
                                                                                 bundle.text_encoder_2_fingerprint))
        else:
            tokens = load_embeddings_into(bundle.pipe, path, text_encoder=bundle.text_encoder_fingerprint)
        loaded.append({"path": str(path), "fingerprint": state_fingerprint(tensors), "tokens": tokens})
    return loaded


def image_size(opts: SampleOptions, pipe: Any) -> tuple[int, int]:
    """(height, width): as given, else the model's own size."""
    from recare_cli.models.sd import native_resolution

    native_h, native_w = native_resolution(pipe)
    height = opts.height if opts.height is not None else native_h
    width = opts.width if opts.width is not None else native_w
    if height % 8 or width % 8:
        raise UsageError(f"the model's own size is {native_h}x{native_w}, not a multiple of 8: pass --height "
                         "and --width")
    return height, width


def warn_long_prompts(pipe: Any, rows: Sequence[PromptRow]) -> None:
    """One warning for the prompts the text encoder will truncate."""
    from recare_cli.models.sd import prompt_lengths

    if not rows:
        return
    texts = sorted({row.prompt for row in rows})
    length = dict(zip(texts, prompt_lengths(pipe, texts), strict=True))
    note = truncation_note([length[row.prompt] for row in rows], int(pipe.tokenizer.model_max_length))
    if note is not None:
        console.warn(note)


@dataclass
class SampleResult:
    jobs: int
    made: int
    skipped: int


def run_sample(opts: SampleOptions, rows: Sequence[PromptRow], *,
               emit: Callable[[dict[str, Any]], None]) -> SampleResult:
    """Make this shard's (and this process's) images in ``opts.out``; ``emit`` each manifest record.

    ``opts.out`` is created only once the inputs are checked and the model is loaded, and removed again
    when this run created it and fails before writing anything into it."""
    shard = opts.validate()
    check_input_files(opts)
    out_dir = Path(opts.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise BadInputError("exists and is not a folder", source=str(out_dir))
    jobs = plan_jobs(rows, images_per_prompt=opts.images_per_prompt, seed=opts.seed)
    rank, world, state = distributed(opts.device)

    from recare_cli.models.device import dtype_name
    from recare_cli.models.sd import load_sd
    from recare_cli.models.weights import apply_weight_files

    device = str(state.device) if state is not None and opts.device == "auto" else opts.device
    bundle = load_sd(opts.model, device=device, dtype=opts.dtype)
    set_scheduler(bundle.pipe, opts.scheduler)
    applied = apply_weight_files(bundle, opts.weights)
    tokens = load_embeddings(bundle, opts.embeddings)
    size = image_size(opts, bundle.pipe)
    identity = bundle.identity()
    dtype = dtype_name(bundle.dtype)
    settings = [job_setting(job.row, opts, size) for job in jobs]
    plans: dict[Setting, dict[str, Any]] = {}
    for setting in dict.fromkeys(settings):
        sampling = opts.sampling(height=setting.height, width=setting.width, dtype=dtype, guidance=setting.guidance)
        plans[setting] = {"sampling": sampling, "model": identity, "weights": applied, "embeddings": tokens,
                          "config": config_digest(identity, applied, tokens, sampling)}
    batches = plan_batches(settings, opts.batch_size)
    if opts.row_settings:
        n = len(batches)
        console.info(f"sample: --row-settings: {console.plural(len(plans), 'setting')} of guidance and size, "
                     f"{n:,} {'batch' if n == 1 else 'batches'}")
    mine = pick_batches(batches, shard, rank, world)
    warn_long_prompts(bundle.pipe, list({jobs[i].row.index: jobs[i].row for batch in mine for i in batch}.values()))

    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        work = Work(jobs=jobs, settings=settings, plans=plans, batches=batches, mine=mine)
        return _make(opts, work, out_dir=out_dir, shard=shard, rank=rank, world=world, state=state,
                     pipe=bundle.pipe, emit=emit)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                out_dir.rmdir()  # only succeeds when nothing was written
        raise


@dataclass
class Work:
    """The whole plan (every job, its setting, the batches) and this process's batches."""

    jobs: list[Job]
    settings: list[Setting]
    plans: dict[Setting, dict[str, Any]]  # per setting: the record fields (sampling, model, ..., config)
    batches: list[list[int]]
    mine: list[list[int]]


def _make(opts: SampleOptions, work: Work, *, out_dir: Path, shard: Shard, rank: int, world: int, state: Any,
          pipe: Any, emit: Callable[[dict[str, Any]], None]) -> SampleResult:
    """Check the finished images, make the missing ones, emit the records."""
    import torch

    jobs, settings, plans = work.jobs, work.settings, work.plans

    def record(job: Job) -> dict[str, Any]:
        path = out_dir / job.name
        return make_record(path=str(path), sha256=sha256_file(path), prompt=job.row.prompt,
                           prompt_index=job.row.index, case_number=job.row.case_number,
                           image_index=job.image_index, seed=job.seed, extra=job.row.extra,
                           **plans[settings[job.number]])

    def done(job: Job) -> bool:
        setting = settings[job.number]
        return check_existing(out_dir / job.name, size=(setting.width, setting.height),
                              tag=image_tag(job, plans[setting]["config"]))

    todo = [[jobs[i] for i in batch] for batch in work.mine]
    n_mine = sum(len(b) for b in todo)
    missing = [[j for j in batch if not done(j)] for batch in todo]
    n_missing = sum(len(m) for m in missing)
    where = f" (shard {shard.index}/{shard.count})" if shard.count > 1 else ""
    where += f" (process {rank}/{world})" if world > 1 else ""
    console.info(f"sample{where}: {console.plural(n_mine, 'image')}, {n_mine - n_missing:,} already done, "
                 f"{n_missing:,} to make")
    with contextlib.ExitStack() as stack:
        advance = stack.enter_context(console.progress("sampling", n_missing)) if n_missing else None
        for batch, need in zip(todo, missing, strict=True):
            if need:
                setting = settings[batch[0].number]
                pixels = _generate(pipe, batch, opts, setting, torch)
                wanted = {job.number for job in need}
                config = plans[setting]["config"]
                for job, px in zip(batch, pixels, strict=True):
                    if job.number in wanted:
                        atomic_write_bytes(out_dir / job.name, encode_png(px, image_tag(job, config)))
                if advance is not None:
                    advance(len(need))
            if state is None:
                for job in batch:
                    emit(record(job))
    if state is not None:
        state.wait_for_everyone()
        if state.is_main_process:
            for i in (i for batch in pick_batches(work.batches, shard, 0, 1) for i in batch):
                emit(record(jobs[i]))
    return SampleResult(n_mine, n_missing, n_mine - n_missing)


def _generate(pipe: Any, batch: Sequence[Job], opts: SampleOptions, setting: Setting, torch: Any) -> Any:
    """uint8 (B, H, W, 3) pixels, rounded as diffusers' own ``numpy_to_pil`` does."""
    generators = [torch.Generator(device="cpu").manual_seed(job.seed) for job in batch]
    with torch.inference_mode():
        images = pipe(prompt=[job.row.prompt for job in batch], generator=generators,
                      num_inference_steps=opts.steps, guidance_scale=setting.guidance,
                      height=setting.height, width=setting.width, output_type="np").images
    return (images * 255).round().astype("uint8")
