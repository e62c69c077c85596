"""Stage: attack an erased model (method.md §8, CCE: Circumventing Concept Erasure, Pham et al.).

CCE learns one new token by textual inversion *against the erased model* on images of the target; the
token, put in a prompt, brings the target back when the erasure only hid the word. The settings default
to the authors' published recipe (NYU-DICE-Lab/circumventing-concept-erasure, ``*/train.sh`` and
``concept_inversion.py``, itself diffusers' textual-inversion example): 5,000 optimizer steps of batch 4
with 4 accumulated micro-batches, AdamW at 5e-3 scaled by the effective batch (0.08), weight decay 0.01,
constant rate, 25 training images, a horizontal flip with probability 0.5, t ~ U[0, 1000), the MSE against
the noise (against v for a v-prediction model, as the reference). The attack is a file: a ``recare.embeddings``
safetensors that ``recare sample --embeddings`` replays against any model, and a prompt file that uses the
token.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from recare_cli import console
from recare_cli.core.guidance import PRECISIONS
from recare_cli.errors import BadInputError, RefusedError, UsageError, check_choice
from recare_cli.io.atomic import check_output_dir
from recare_cli.io.streams import STDIO, check_binary_destination
from recare_cli.models.sd import DEFAULT_MODEL
from recare_cli.stages.interrupt import checkpoint_kept_on_interrupt
from recare_cli.stages.invert import TEMPLATES
from recare_cli.stages.options import recorded, run_control

METHODS = ("cce",)
CHECKPOINT_FORMAT = "recare.attack-checkpoint"


@dataclass
class AttackOptions:
    """Every option of ``recare attack``; field order is the order provenance records them in. The defaults
    are CCE's published ones."""

    images: str  # where the target images came from (folder, list file or -)
    target: str
    output: str
    method: str = "cce"
    weights: tuple[str, ...] = ()  # recare erase outputs applied to --model before the attack (none: the base)
    initializer: str = "person"  # CCE: "art" for styles, an object word for objects
    property: str = "object"  # object or style: the prompt templates (as recare invert's)
    steps: int = 5000  # optimizer steps
    batch_size: int = 4
    accumulation: int = 4  # micro-batches per optimizer step
    lr: float = 5e-3  # scaled by batch_size × accumulation (the reference's --scale_lr): 0.08
    num_images: int = 25  # the first N images (sorted) train the token
    resolution: int | None = None  # None: the model's own image size (the reference: 512)
    flip: float = 0.5
    recursive: bool = False
    as_list: bool = False
    strict: bool = False
    seed: int = 42
    model: str = DEFAULT_MODEL
    device: str = "auto"
    precision: str = "fp32"  # the reference trains in fp16 mixed precision on GPUs: --precision fp16
    prompts: str | None = None  # also write a prompt file (CSV) that uses the learnt token
    prompt_seed: int = 0  # first evaluation seed of that file
    checkpoint_every: int = run_control(500)
    resume: bool = run_control(False)

    def validate(self) -> None:
        if not self.target.strip():
            raise UsageError("--target must not be empty")
        check_choice("--method", self.method, METHODS, "attack")
        check_choice("--property", self.property, TEMPLATES, "property")
        check_choice("--precision", self.precision, PRECISIONS, "precision")
        for name in ("steps", "batch_size", "accumulation", "num_images"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')}: must be at least 1 (got {getattr(self, name)})")
        check_binary_destination(self.output)  # refuse now, not after the training
        if self.output != STDIO:
            check_output_dir(Path(self.output))
        if self.prompts is not None and self.prompts != STDIO:
            check_output_dir(Path(self.prompts))
        if self.prompts == STDIO and self.output == STDIO:
            raise UsageError("--prompts - and the embeddings cannot both go to stdout")

    def token(self) -> str:
        from recare_cli.io.careset import reference_key

        return f"<{reference_key(self.target) or 'concept'}-{self.method}>"

    def effective_lr(self) -> float:
        return self.lr * self.batch_size * self.accumulation

    def checkpoint_path(self) -> Path | None:
        if self.output == STDIO or self.checkpoint_every <= 0:
            return None
        return Path(f"{self.output}.ckpt")

    def hyperparameters(self, resolution: int) -> dict[str, Any]:
        """What shapes the learnt token (the image size as resolved for the loaded model)."""
        shaping = ("method", "initializer", "property", "steps", "batch_size", "accumulation", "lr", "num_images",
                   "flip", "seed", "precision")
        values = asdict(self)
        return {**{k: values[k] for k in shaping}, "resolution": resolution, "effective_lr": self.effective_lr()}


def prompt_rows(opts: AttackOptions) -> list[dict[str, Any]]:
    """The prompts that replay the attack: each training template filled with the learnt token, with
    evaluation seeds ``prompt_seed + i`` (``sample -n N`` makes N images of each, seeds + j)."""
    token = opts.token()
    return [{"case_number": i, "prompt": template.format(token), "evaluation_seed": opts.prompt_seed + i}
            for i, template in enumerate(TEMPLATES[opts.property])]


def prompts_csv(opts: AttackOptions) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=["case_number", "prompt", "evaluation_seed"],
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(prompt_rows(opts))
    return out.getvalue().encode()


def _digest(opts: AttackOptions, resolution: int, identity: dict[str, Any], weights: list[dict[str, Any]],
            images: list[Path]) -> str:
    from recare_cli.models.fingerprint import combine

    second = [identity["text_encoder_2"]] if "text_encoder_2" in identity else []  # SDXL's
    return combine(json.dumps(opts.hyperparameters(resolution), sort_keys=True), identity["unet"],
                   identity["text_encoder"], [w["fingerprint"] for w in weights], [str(p) for p in images], *second)


def _check_weight_files(paths: tuple[str, ...]) -> None:
    from recare_cli.models.weights import CHECKPOINT_FORMAT as ERASE_CKPT
    from recare_cli.models.weights import EMBEDDINGS_FORMAT, WEIGHT_FORMATS, check_format, read_metadata

    takes = {EMBEDDINGS_FORMAT: "recare sample --embeddings (an attack learns its own token)",
             ERASE_CKPT: "recare erase --resume to finish that run, then give its output to --weights"}
    for path in paths:
        if not Path(path).is_file():
            raise BadInputError("no such file", source=path)
        check_format(path, read_metadata(path), WEIGHT_FORMATS, takes)


def run_attack(opts: AttackOptions, paths: list[Path], *,
               on_step: Callable[[int, float], None] | None = None) -> dict[str, Any]:
    """Learn the attack token on ``paths`` (images of the target) against ``opts.model`` with ``opts.weights``
    applied; write the embeddings (and the prompt file). ``on_step(i, loss)`` runs after step ``i``."""
    import torch

    from recare_cli.core.diffusion import (
        InversionSettings,
        InversionTrainer,
        SecondEncoder,
        extend_tokenizer,
        latent_distributions,
        tokenize,
    )
    from recare_cli.io.atomic import atomic_write_bytes
    from recare_cli.io.provenance import provenance
    from recare_cli.models.sd import load_sd, native_square_resolution
    from recare_cli.models.weights import apply_weight_files, read_safetensors, save_embeddings, write_safetensors
    from recare_cli.stages.invert import initializer_vector, load_pixels

    opts.validate()
    _check_weight_files(opts.weights)
    ckpt = opts.checkpoint_path()
    if ckpt is not None and ckpt.exists() and not opts.resume:
        raise RefusedError(f"checkpoint '{ckpt}' exists: pass --resume to continue that run, or delete it")
    chosen = sorted(paths)[: opts.num_images]
    if not chosen:
        raise BadInputError("no images of the target to attack with", source=opts.images)
    bundle = load_sd(opts.model, device=opts.device, dtype="fp32")
    identity = bundle.identity()  # the base model, fingerprinted before any weights are applied
    applied = apply_weight_files(bundle, [Path(p) for p in opts.weights])
    pipe, device = bundle.pipe, bundle.device
    resolution = opts.resolution or native_square_resolution(pipe)
    pixels, used = load_pixels(chosen, strict=opts.strict, resolution=resolution, source=opts.images)
    token = opts.token()
    xl = bundle.architecture.sdxl  # one vector per text encoder
    try:
        tokenizer, first_id = extend_tokenizer(pipe.tokenizer, [token])
        tokenizer_2, first_id_2 = extend_tokenizer(pipe.tokenizer_2, [token]) if xl else (None, 0)
    except ValueError as err:
        raise UsageError(f"--target: {err}") from err
    init = initializer_vector(pipe, opts.initializer).to(device)
    with console.progress(f"encoding {console.plural(len(used), 'image')} (and flips) with the VAE", len(used)):
        latents = latent_distributions(pipe.vae, pixels).to(device)
    del pixels
    settings = InversionSettings(steps=opts.steps, lr=opts.effective_lr(), precision=opts.precision,
                                 batch_size=opts.batch_size, accumulation=opts.accumulation)
    filled = [t.format(token) for t in TEMPLATES[opts.property]]
    ids = tokenize(tokenizer, filled)
    second = None
    if xl:
        init_2 = initializer_vector(pipe, opts.initializer, encoder=1).to(device)
        second = SecondEncoder(pipe.text_encoder_2, first_id_2, init_2[:0], init_2, tokenize(tokenizer_2, filled),
                               (resolution, resolution))
    generator = torch.Generator().manual_seed(opts.seed)
    trainer = InversionTrainer(pipe.unet, pipe.text_encoder, first_id, init[:0], init, latents, ids,
                               pipe.scheduler.config, settings, generator, flip_p=opts.flip, second=second)
    digest = _digest(opts, resolution, identity, applied, used)
    start = 0
    if opts.resume and ckpt is not None and ckpt.exists():
        tensors, meta = read_safetensors(ckpt)
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise BadInputError("not a recare attack checkpoint", source=str(ckpt), field="format")
        if meta.get("config") != digest:
            raise BadInputError("checkpoint made with other settings, model, weights or images; delete it or rerun "
                                "with the settings it was made with", source=str(ckpt), field="config")
        trainer.load_state_tensors(tensors)
        start = int(meta["step"])
        console.info(f"attack: resuming from {ckpt} at step {start}/{opts.steps}")
    console.info(f"attack: {opts.method}, token {token} from {console.plural(len(used), 'image')}, "
                 f"{opts.steps} steps of {opts.batch_size} × {opts.accumulation} at lr {opts.effective_lr():g}")
    loss = float("nan")
    with checkpoint_kept_on_interrupt(ckpt), console.progress(f"learning {token}", opts.steps - start) as advance:
        for i in range(start, opts.steps):
            loss = trainer.step()
            advance(1)
            if on_step is not None:
                on_step(i, loss)
            done = i + 1
            if ckpt is not None and done % opts.checkpoint_every == 0 and done < opts.steps:
                write_safetensors(ckpt, trainer.state_tensors(), {"format": CHECKPOINT_FORMAT, "version": "1",
                                                                  "config": digest, "step": str(done)})
    record = provenance("attack", recorded(opts), model=identity)
    written: dict[str, Any] = dict(
        base_unet=identity["unet"], base_model=identity["name"], target=opts.target.strip(),
        initializer=opts.initializer, property=opts.property, attack=opts.method, attacked_weights=applied,
        images=len(used), hyperparameters=opts.hyperparameters(resolution), provenance=record)
    if xl:
        from recare_cli.models.sdxl_embeddings import save_sdxl_embeddings

        save_sdxl_embeddings(opts.output, [token], [v.cpu() for v in trainer.vectors()],
                             base_text_encoder=identity["text_encoder"],
                             base_text_encoder_2=identity["text_encoder_2"], **written)
    else:
        save_embeddings(opts.output, {token: trainer.vector().cpu()}, base_text_encoder=identity["text_encoder"],
                        **written)
    if opts.prompts is not None:
        if opts.prompts == STDIO:
            from recare_cli.io.streams import open_output

            with open_output(STDIO, binary=True) as out:
                out.write(prompts_csv(opts))
        else:
            atomic_write_bytes(Path(opts.prompts), prompts_csv(opts))
    if ckpt is not None and ckpt.exists():
        ckpt.unlink()
    return {"token": token, "images": len(used), "loss": loss, "weights": applied}
