"""Stage: the final erasure (method.md §5b) and its baselines (published ESD, the ReCARE reference's ESD
step, published STEREO's erasure with its own anchors (``stages/stereo.py``), ReCARE without the retain loss;
UCE's closed form in ``stages/uce.py``, AGE's target search in ``stages/age.py``, AdvUnlearn's text-encoder
training in ``stages/advunlearn.py``).

Reads the CARE-set and adversarial tokens, loads the model, trains the selected UNet parameters
with ``core.diffusion.EraseTrainer``, checkpoints atomically, writes safetensors with metadata.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from recare_cli import console
from recare_cli.core.guidance import LR_SCHEDULES, METHODS, PRECISIONS, TIMESTEP_DRAWS, TRAIN_METHODS
from recare_cli.dtypes import NAMES as DTYPES
from recare_cli.errors import BadInputError, RefusedError, UsageError, check_choice
from recare_cli.io.atomic import check_output_dir
from recare_cli.io.digest import sha256_bytes, sha256_file
from recare_cli.io.streams import STDIO, check_binary_destination
from recare_cli.models.sd import DEFAULT_MODEL
from recare_cli.stages.interrupt import checkpoint_kept_on_interrupt
from recare_cli.stages.options import recorded, recorded_if_set, recorded_when, run_control

SAVE_DTYPES = DTYPES
# The defaults of the options a method publishes its own value for (the options left None): one table.
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "recare": {"lr": 2e-5, "train_method": "noxattn", "iterations": 200},  # ReCARE reference train.py (stage 2), AdamW
    "recare-noretain": {"lr": 2e-5, "train_method": "noxattn", "iterations": 200},  # recare's, without the retain loss
    "stereo": {"lr": 2e-5, "train_method": "noxattn", "iterations": 200},  # STEREO train.py --reo_lr (AdamW), README
    "esd": {"lr": 5e-5, "train_method": "esd-x", "iterations": 200},  # esd_sd.py (Adam); README example: xattn
    "esd-recare": {"lr": 5e-6, "train_method": "noxattn", "iterations": 200},  # ReCARE reference (its invert)
    "age": {"lr": 1e-5, "train_method": "noxattn", "iterations": 1000},  # train_age.py, scripts/erasing_nudity.sh
    "uce": {"iterations": 200},  # no training: recorded as it always was
    # AdvUnlearn.py (Adam on the text encoder): its --lr, --train_method, --iterations
    "advunlearn": {"lr": 1e-5, "train_method": "text_encoder_full", "iterations": 1000},
}
WITHOUT_CARESET = ("esd", "esd-recare", "stereo")  # methods that neither anchor on nor retain the CARE-set


def _same_prompt(a: str, b: str) -> bool:
    """Two prompts CLIP's tokenizer reads alike (it lower-cases and splits on whitespace)."""
    return " ".join(a.lower().split()) == " ".join(b.lower().split())


ERASE_METHODS = (*METHODS, "uce", "age", "advunlearn")  # uce: a closed-form edit (stages/uce.py); age:
# stages/age.py; advunlearn: trains the text encoder (stages/advunlearn.py)


def _uce(opts: EraseOptions) -> bool:
    return opts.method == "uce"


def _stereo(opts: EraseOptions) -> bool:
    return opts.method == "stereo"


def _age(opts: EraseOptions) -> bool:
    return opts.method == "age"


def _advunlearn(opts: EraseOptions) -> bool:
    return opts.method == "advunlearn"


def _age_or_advunlearn(opts: EraseOptions) -> bool:
    return opts.method in ("age", "advunlearn")


# Methods --lora does not apply to, and why.
NO_LORA = {"uce": "is a closed-form edit of whole weights; it trains no adapters",
           "age": "trains the parameters themselves (its concept search runs beside them); no adapters",
           "advunlearn": "trains the text encoder's parameters themselves; no adapters"}


# Methods that do not run on SDXL, and why (refused with exit 2 before any weights are read).
NOT_ON_SDXL = {
    "uce": "edits to_k/to_v in closed form on one text encoder's states; SDXL's cross-attention reads two "
           "encoders' states concatenated and a pooled embedding, which the published form does not cover",
    "age": "searches concepts in one text encoder's vocabulary embedding; SDXL has two",
    "advunlearn": "trains one text encoder; SDXL conditions on two and a pooled embedding",
}


def refuse_on_sdxl(opts: EraseOptions) -> None:
    """Stop a method SDXL cannot run (``NOT_ON_SDXL``) when --model's model_index.json names an SDXL pipeline;
    a model_index.json that cannot be read is left to the loader's own message."""
    from recare_cli.models.arch import SDXL_PIPELINE, read_model_index

    if opts.method not in NOT_ON_SDXL:
        return
    try:
        index = read_model_index(opts.model, local_files_only=True)
    except OSError:
        return
    if index.get("_class_name") == SDXL_PIPELINE:
        raise UsageError(f"--method {opts.method} does not run on SDXL (model '{opts.model}'): it "
                         f"{NOT_ON_SDXL[opts.method]}; use --method recare, recare-noretain, stereo, esd or esd-recare")


def _lora(opts: Any) -> bool:
    return opts.lora is not None


@dataclass
class EraseOptions:
    """Every option of ``recare erase``; field order is the order provenance records them in."""

    target: str
    output: str
    care: str | None = None
    adversarial: str | None = None
    num_adversarial: int = 2
    method: str = "recare"
    train_method: str | None = None  # None: the method's own (METHOD_DEFAULTS)
    # LoRA (recorded in LoRA runs' files only): adapters of rank `lora` beside the train method's modules
    lora: int | None = recorded_if_set()  # None: train the parameters themselves (the references)
    lora_alpha: float | None = recorded_when(_lora, None)  # None: the rank (scale alpha / rank = 1, diffusers')
    merge: bool = recorded_when(_lora, False)  # write the merged weights instead of the adapters
    iterations: int | None = None  # None: the method's own (METHOD_DEFAULTS)
    lr: float | None = None  # None: the method's own (METHOD_DEFAULTS)
    lr_schedule: str = "constant"  # constant (reference) | linear | cosine decay over the iterations
    guidance: float = 2.0
    ddim_steps: int = 50
    timesteps: str = "uniform"  # how x_t's DDIM depth is drawn: uniform (reference) | stratified
    xt_batch: int = 1  # x_t samples per iteration (reference: 1)
    retain_weight: float = 1.0
    seed: int = 42
    resolution: int | None = None  # None: the model's own image size
    model: str = DEFAULT_MODEL
    device: str = "auto"
    precision: str = "fp32"
    gradient_checkpointing: bool = False
    save_dtype: str = "fp32"
    save_pipeline: str | None = None
    erase_from: str | None = recorded_if_set()  # published ESD: the concept the target is erased from
    # STEREO's anchor prompts (recorded in STEREO's files only)
    anchors: str | None = recorded_when(_stereo, None)  # {concept: [prompts]}, the authors' anchor_prompts.json
    anchor: tuple[str, ...] = recorded_when(_stereo, ())  # more anchor prompts
    # UCE's options (the authors' names and defaults; recorded in UCE's files only)
    guide: str = recorded_when(_uce, "")  # "": the authors' guide for objects and unsafe concepts
    preserve: tuple[str, ...] = recorded_when(_uce, ())  # the authors preserve nothing by default
    preserve_file: str | None = recorded_when(_uce, None)
    erase_scale: float = recorded_when(_uce, 1.0)
    preserve_scale: float = recorded_when(_uce, 1.0)
    lamb: float = recorded_when(_uce, 0.5)
    # AGE's options (the authors' names; defaults of their scripts/erasing_nudity.sh; recorded in AGE's files only)
    concepts: str | None = recorded_when(_age, None)  # the concept dictionary (theirs: data/english_3000.csv)
    negative_guidance: float = recorded_when(_age_or_advunlearn, 1.0)  # both authors' g: 1
    lamda: float = recorded_when(_age, 1.0)  # weight of the preservation loss
    gumbel_lr: float = recorded_when(_age, 1e-2)
    gumbel_temp: float = recorded_when(_age, 2.0)
    gumbel_hard: int = recorded_when(_age, 1)  # 1: straight-through one-hot, 0: soft top-k
    gumbel_topk: int = recorded_when(_age, 2)  # soft top-k only
    gumbel_num_centers: int = recorded_when(_age, 100)
    gumbel_k_closest: int = recorded_when(_age, 100)
    pgd_num_steps: int = recorded_when(_age, 2)  # loop steps per UNet update (the others move the weights)
    keep_special_tokens: bool = recorded_when(_age, False)  # theirs: --ignore_special_tokens True
    # AdvUnlearn's options (the authors' names; defaults: their README's command, else AdvUnlearn.py's; recorded
    # in AdvUnlearn's files only)
    retain_prompts: str | None = recorded_when(_advunlearn, None)  # required: the authors ship theirs
    retain_batch: int = recorded_when(_advunlearn, 5)
    retain_loss_w: float = recorded_when(_advunlearn, 0.3)  # README; AdvUnlearn.py's default is 1.0
    warmup_iter: int = recorded_when(_advunlearn, 200)
    attack_step: int = recorded_when(_advunlearn, 30)
    attack_lr: float = recorded_when(_advunlearn, 1e-3)
    attack_init: str = recorded_when(_advunlearn, "random")  # README; AdvUnlearn.py's default is latest
    attack_type: str = recorded_when(_advunlearn, "prefix_k")
    attack_method: str = recorded_when(_advunlearn, "pgd")
    adv_prompt_num: int = recorded_when(_advunlearn, 1)
    adv_prompt_update_step: int = recorded_when(_advunlearn, 1)
    # Run control: a resumed run writes the same bytes as an uninterrupted one.
    checkpoint: str | None = run_control()  # default <output>.ckpt when checkpoint_every > 0
    checkpoint_every: int = run_control(50)
    resume: bool = run_control(False)

    def resolved(self) -> EraseOptions:
        """A copy with every option left None set to the method's own default (METHOD_DEFAULTS)."""
        table: dict[str, Any] = dict(METHOD_DEFAULTS.get(self.method, {}))
        if self.lora is not None:
            table["lora_alpha"] = lora_alpha(self)
        return replace(self, **{k: v for k, v in table.items() if getattr(self, k) is None})

    def validate(self) -> None:
        if not self.target.strip():
            raise UsageError("--target must not be empty")
        check_choice("--method", self.method, ERASE_METHODS, "method")
        if self.train_method is not None and self.method not in ("age", "advunlearn"):  # their own names
            check_choice("--train-method", self.train_method, TRAIN_METHODS, "train method")
        if self.erase_from is not None:
            if self.method != "esd":
                raise UsageError(f"--erase-from: only --method esd erases a concept from another (got --method "
                                 f"{self.method})")
            if not self.erase_from.strip():
                raise UsageError("--erase-from must not be empty")
            if _same_prompt(self.erase_from, self.target):
                raise UsageError(f"--erase-from '{self.erase_from}' is the target itself: leave --erase-from out "
                                 "to erase the target from itself")
        check_choice("--lr-schedule", self.lr_schedule, LR_SCHEDULES, "lr schedule")
        check_choice("--timesteps", self.timesteps, TIMESTEP_DRAWS, "timestep draw")
        if self.xt_batch < 1:
            raise UsageError(f"--xt-batch: must be at least 1 (got {self.xt_batch})")
        check_choice("--precision", self.precision, PRECISIONS, "precision")
        check_choice("--save-dtype", self.save_dtype, SAVE_DTYPES, "dtype")
        validate_lora(self, "erase")
        if self.lora is not None and self.method in NO_LORA:
            raise UsageError(f"--lora: --method {self.method} {NO_LORA[self.method]}")
        if self.method != "stereo" and (self.anchors is not None or self.anchor):
            raise UsageError(f"--anchors/--anchor: only --method stereo takes anchor prompts (got --method "
                             f"{self.method}; recare and recare-noretain anchor on the CARE-set)")
        if self.method == "uce":
            from recare_cli.stages.uce import validate_uce

            validate_uce(self)
        elif self.method == "stereo":
            from recare_cli.stages.stereo import validate_stereo

            validate_stereo(self)
        elif self.method == "age":
            from recare_cli.stages.age import validate_age

            validate_age(self)
        elif self.method == "advunlearn":
            from recare_cli.stages.advunlearn import validate_advunlearn

            validate_advunlearn(self)
        elif self.method not in WITHOUT_CARESET and self.care is None:
            raise UsageError(f"--method {self.method} needs --care (a CARE-set from recare refine)")
        if self.resume and self.checkpoint_path() is None:
            raise UsageError("--resume needs a checkpoint file: --checkpoint PATH, or --checkpoint-every N with "
                             "a file output")
        check_binary_destination(self.output)  # refuse now, not after the training
        if self.output != STDIO:
            check_output_dir(Path(self.output))
        if self.save_pipeline is not None:
            target = Path(self.save_pipeline)
            check_output_dir(target)
            if target.exists() and (not target.is_dir() or any(target.iterdir())):
                raise RefusedError(f"--save-pipeline: '{target}' exists and is not an empty folder")
        ckpt = self.checkpoint_path()
        if ckpt is not None:
            check_output_dir(ckpt)

    def checkpoint_path(self) -> Path | None:
        if self.checkpoint is not None:
            return Path(self.checkpoint)
        if self.checkpoint_every <= 0 or self.output == STDIO:
            return None
        return Path(f"{self.output}.ckpt")

    def hyperparameters(self, resolution: int) -> dict[str, Any]:
        """What shapes the trained weights (the image size as resolved for the loaded model)."""
        keys = ("method", "train_method", "iterations", "lr", "lr_schedule", "guidance", "retain_weight", "seed",
                "resolution", "ddim_steps", "timesteps", "xt_batch", "precision", "num_adversarial")
        values = {**asdict(self.resolved()), "resolution": resolution}
        out = {k: values[k] for k in keys}
        if self.lora is not None:
            out.update(lora=self.lora, lora_alpha=values["lora_alpha"])
        if self.erase_from is not None:
            out["erase_from"] = self.erase_from.strip()
        return out


def validate_lora(opts: Any, command: str) -> None:
    """The LoRA options of ``erase`` and ``invert``: a rank of at least 1, alpha above 0, both only together."""
    if opts.lora is None:
        given = [flag for flag, value in (("--lora-alpha", opts.lora_alpha is not None),
                                          ("--merge", getattr(opts, "merge", False))) if value]
        if given:
            raise UsageError(f"{given[0]}: only with --lora RANK (recare {command} --lora 4 {given[0]} …)")
        return
    if opts.lora < 1:
        raise UsageError(f"--lora: the rank must be at least 1 (got {opts.lora})")
    if opts.lora_alpha is not None and opts.lora_alpha <= 0:
        raise UsageError(f"--lora-alpha: must be above 0 (got {opts.lora_alpha:g})")


def lora_alpha(opts: Any) -> float | None:
    """``--lora-alpha`` as used: left unset, the rank (scale alpha / rank = 1, as diffusers' LoRA training)."""
    if opts.lora is None:
        return None
    return float(opts.lora_alpha if opts.lora_alpha is not None else opts.lora)


def lora_settings(opts: Any) -> Any:
    """The trainer's LoRA settings (``core.lora.LoraSettings``), or None without ``--lora``."""
    from recare_cli.core.lora import LoraSettings

    alpha = lora_alpha(opts)
    return None if alpha is None else LoraSettings(rank=opts.lora, alpha=alpha, seed=opts.seed)


def erase_settings(opts: EraseOptions, latent_size: int) -> Any:
    """The trainer's settings for ``opts`` (``core.diffusion.EraseSettings``), method defaults resolved."""
    from recare_cli.core.diffusion import EraseSettings

    opts = opts.resolved()
    assert opts.lr is not None and opts.iterations is not None, f"no default lr for method '{opts.method}'"
    return EraseSettings(method=opts.method, iterations=opts.iterations, lr=opts.lr, lr_schedule=opts.lr_schedule,
                         guidance=opts.guidance, retain_weight=opts.retain_weight, latent_size=latent_size,
                         sample_steps=opts.ddim_steps, precision=opts.precision, xt_batch=opts.xt_batch)


def read_care(path: str, target: str) -> tuple[Any, str]:
    """The CARE-set (either layout) and the hash of its bytes."""
    import orjson

    from recare_cli.io.careset import parse_careset
    from recare_cli.io.streams import display_name, read_bytes

    data = read_bytes(path)
    name = display_name(path)
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as err:
        raise BadInputError(f"not valid JSON ({err})", source=name) from err
    care = parse_careset(doc, source=name, target=target)
    if not care.anchor_prompts or not care.retain_prompts:
        raise BadInputError("the CARE-set has no words: nothing to anchor or retain (check the refine step, "
                            "or use --method esd)", source=name, field="words")
    return care, sha256_bytes(data)


def with_tokens(pipe: Any, tokens: list[str], extras: list[Any]) -> tuple[list[Any], Any]:
    """Tokenizers that know ``tokens`` and a context in which each text encoder reads them as its ``extras``
    (one (len(tokens), D) tensor per text encoder: one for SD 1.x/2.x, two for SDXL). Raises ``ValueError`` when a
    token is already a word of a tokenizer."""
    import contextlib

    from recare_cli.core.diffusion import extend_tokenizer, placeholder_embeddings
    from recare_cli.models.sd import text_encoders, tokenizers

    stack = contextlib.ExitStack()
    if not tokens:
        return tokenizers(pipe), stack
    extended = []
    for tokenizer, encoder, extra in zip(tokenizers(pipe), text_encoders(pipe), extras, strict=True):
        tokenizer, first_id = extend_tokenizer(tokenizer, tokens)
        extended.append(tokenizer)
        stack.enter_context(placeholder_embeddings(encoder, first_id, extra))
    return extended, stack


def condition_encoder(bundle: Any, resolution: int, tokenizers: list[Any]) -> Callable[[list[str]], Any]:
    """prompts → what the UNet is conditioned on: the text encoder's last hidden states (SD 1.x/2.x), or SDXL's
    conditions for square images of ``resolution`` pixels (``core.conditioning.encode_sdxl``)."""
    from recare_cli.core.conditioning import encode_sdxl
    from recare_cli.core.diffusion import encode_prompts
    from recare_cli.models.sd import text_encoders

    pipe = bundle.pipe
    if bundle.architecture.sdxl:
        return lambda prompts: encode_sdxl(tokenizers, text_encoders(pipe), prompts, size=(resolution, resolution),
                                           device=bundle.device)
    return lambda prompts: encode_prompts(tokenizers[0], pipe.text_encoder, prompts, device=bundle.device)


def pipeline_uncond(bundle: Any, uncond: Any) -> Any:
    """The unconditional input the pipeline itself samples with, when it is not the empty prompt's ``uncond``:
    SDXL with ``force_zeros_for_empty_prompt`` (SDXL base) samples with zeros (published ESD's SDXL code draws x_t
    with the pipeline); None otherwise."""
    from recare_cli.core.conditioning import zeros_like

    if bundle.architecture.sdxl and bundle.pipe.config.get("force_zeros_for_empty_prompt", False):
        return zeros_like(uncond)
    return None


def prepare_prompts(bundle: Any, opts: EraseOptions, care: Any, adversarial: dict[str, Any],
                    stereo_anchors: list[str] | None = None, resolution: int = 0) -> tuple[Any, Any, list[str]]:
    """Prompt embeddings (computed once) and the balanced schedules (drawn once from the seed). The anchors
    are the CARE-set's, or for ``stereo`` ``stereo_anchors`` (``stages.stereo.read_anchors``). ``adversarial``
    maps each token to its vectors, one (1, D) tensor per text encoder (a list of two for SDXL);
    ``resolution`` is SDXL's image size (its size ids)."""
    import numpy as np
    import torch

    from recare_cli.core.diffusion import ErasePrompts, EraseSchedule
    from recare_cli.core.guidance import balanced_schedule, esd_step_choices, stratified_steps

    iterations = opts.resolved().iterations
    assert iterations is not None  # every training method has a default
    tokens = list(adversarial)
    erase_set = [opts.target.strip(), *tokens]
    if len(set(erase_set)) != len(erase_set):
        raise BadInputError("the adversarial tokens repeat the target or each other", source=opts.adversarial)
    vectors = [v if isinstance(v, list) else [v] for v in adversarial.values()]
    extras = [torch.cat([v[i] for v in vectors]).to(bundle.device) for i in range(len(vectors[0]))] if tokens else []
    try:
        tokenizers, ctx = with_tokens(bundle.pipe, tokens, extras)
    except ValueError as err:
        raise BadInputError(str(err), source=opts.adversarial) from err
    if opts.method == "stereo":
        anchors = list(stereo_anchors or [])
    else:
        anchors = care.anchor_prompts if care is not None and opts.method not in WITHOUT_CARESET else []
    retains = care.retain_prompts if care is not None and opts.method == "recare" else []

    enc = condition_encoder(bundle, resolution, tokenizers)
    with ctx:
        uncond = enc([""])
        prompts = ErasePrompts(uncond=uncond, erase=enc(erase_set),
                               anchors=enc(anchors) if anchors else None, retains=enc(retains) if retains else None,
                               erase_from=enc([opts.erase_from.strip()]) if opts.erase_from is not None else None,
                               sample_uncond=pipeline_uncond(bundle, uncond) if opts.method == "esd" else None)
    rng = np.random.default_rng(opts.seed)
    anchor_idx = balanced_schedule(list(range(len(anchors))), iterations, rng) if anchors else None
    retain_idx = balanced_schedule(list(range(len(retains))), iterations, rng) if retains else None
    erase_idx = balanced_schedule(list(range(len(erase_set))), iterations, rng)
    # drawn last: the prompt schedules of a seed are the same whichever timestep draw is chosen
    choices = esd_step_choices(opts.ddim_steps) if opts.method == "esd" else None
    steps = (stratified_steps(opts.ddim_steps, iterations, rng, choices) if opts.timesteps == "stratified"
             else None)
    return prompts, EraseSchedule(erase=erase_idx, anchor=anchor_idx, retain=retain_idx, steps=steps), erase_set


def config_digest(opts: EraseOptions, resolution: int, identity: dict[str, str], care_hash: str | None,
                  adv_hash: str | None, anchors_hash: str | None = None) -> str:
    from recare_cli.models.fingerprint import combine

    extra = [anchors_hash] if anchors_hash is not None else []  # stereo's; the other methods' digests stay
    if "text_encoder_2" in identity:  # SDXL's second encoder (SD 1.x/2.x digests unchanged)
        extra.append(identity["text_encoder_2"])
    return combine(json.dumps(opts.hyperparameters(resolution), sort_keys=True), identity["unet"],
                   identity["text_encoder"], care_hash, adv_hash, opts.target.strip(), *extra)


def load_checkpoint(path: Path, trainer: Any, digest: str) -> int:
    from recare_cli.models.weights import CHECKPOINT_FORMAT, read_safetensors

    tensors, meta = read_safetensors(path)
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise BadInputError("not a recare erase checkpoint", source=str(path), field="format")
    if meta.get("config") != digest:
        raise BadInputError("checkpoint made with other settings, model, CARE-set or tokens; delete it or "
                            "rerun with the settings it was made with", source=str(path), field="config")
    try:
        trainer.load_state_tensors(tensors)
        return int(meta["iteration"])
    except (KeyError, ValueError, RuntimeError) as err:
        raise BadInputError(f"damaged checkpoint ({err})", source=str(path)) from err


def save_checkpoint(path: Path, trainer: Any, digest: str, iteration: int) -> None:
    from recare_cli.models.weights import CHECKPOINT_FORMAT, write_safetensors

    write_safetensors(path, trainer.state_tensors(), {"format": CHECKPOINT_FORMAT, "version": "1",
                                                      "config": digest, "iteration": str(iteration)})


def resume_point(opts: Any, ckpt: Path | None, trainer: Any, digest: str) -> int:
    """The iteration a run starts at: a ``--resume`` run's checkpoint's, else 0."""
    if opts.resume and ckpt is not None and ckpt.exists():
        start = load_checkpoint(ckpt, trainer, digest)
        console.info(f"erase: resuming from {ckpt} at iteration {start}/{opts.iterations}")
        return start
    if opts.resume:
        console.info(f"erase: no checkpoint at {ckpt}; starting from the beginning")
    return 0


def train_with_checkpoints(opts: Any, trainer: Any, ckpt: Path | None, digest: str, start: int,
                           on_step: Callable[[int, dict[str, float]], None] | None) -> dict[str, float]:
    """Run ``trainer.step`` from ``start`` to ``opts.iterations`` with progress, writing a checkpoint every
    ``opts.checkpoint_every`` iterations (kept if interrupted); returns the last step's losses."""
    last: dict[str, float] = {}
    with checkpoint_kept_on_interrupt(ckpt), console.progress("erasing", opts.iterations - start) as advance:
        for i in range(start, opts.iterations):
            last = trainer.step(i)
            advance(1)
            if on_step is not None:
                on_step(i, last)
            done = i + 1
            if ckpt is not None and opts.checkpoint_every > 0 and done % opts.checkpoint_every == 0 \
                    and done < opts.iterations:
                save_checkpoint(ckpt, trainer, digest, done)
    return last


def run_erase(opts: EraseOptions, *, on_step: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, Any]:
    """Train and write the output; returns a summary. ``on_step(i, losses)`` runs after step ``i``."""
    import torch

    from recare_cli.core.diffusion import EraseTrainer
    from recare_cli.core.guidance import select_parameters
    from recare_cli.dtypes import torch_dtype
    from recare_cli.io.provenance import provenance
    from recare_cli.models.sd import load_sd, native_square_resolution
    from recare_cli.models.sdxl_embeddings import read_model_tokens
    from recare_cli.models.weights import save_pipeline, save_unet_weights

    opts.validate()
    refuse_on_sdxl(opts)
    if opts.method == "uce":
        from recare_cli.stages.uce import run_uce

        return run_uce(opts.resolved())
    if opts.method == "age":
        from recare_cli.stages.age import run_age

        return run_age(opts.resolved(), on_step=on_step)

    if opts.method == "advunlearn":
        from recare_cli.stages.advunlearn import run_advunlearn

        return run_advunlearn(opts.resolved(), on_step=on_step)
    opts = opts.resolved()  # provenance and the output record the values used
    ckpt = opts.checkpoint_path()
    if ckpt is not None and ckpt.exists() and not opts.resume:
        raise RefusedError(f"checkpoint '{ckpt}' exists: pass --resume to continue that run, or delete it")
    care, care_hash = (None, None)
    if opts.care is not None:
        if opts.method in WITHOUT_CARESET:
            console.warn(f"--method {opts.method} does not use the CARE-set; ignoring --care")
        else:
            care, care_hash = read_care(opts.care, opts.target.strip())
    anchors: list[str] | None = None
    anchors_meta: dict[str, str] = {}
    anchors_hash = None
    if opts.method == "stereo":
        from recare_cli.stages.stereo import anchors_record, read_anchors

        anchors, anchors_hash = read_anchors(opts)
        anchors_meta = {"anchors": json.dumps(anchors_record(opts, anchors, anchors_hash))}
        if opts.adversarial is None:
            console.warn("--method stereo without --adversarial erases the target alone (published STEREO also "
                         "erases the tokens of its search: recare invert)")

    bundle = load_sd(opts.model, device=opts.device, dtype="fp32")
    identity = bundle.identity()
    pipe = bundle.pipe
    adversarial: dict[str, Any] = {}
    adv_hash = None
    if opts.adversarial is not None:
        tokens = read_model_tokens(bundle, opts.adversarial)
        for token, value in list(tokens.items())[: max(0, opts.num_adversarial)]:
            if not isinstance(value, list) and value.shape[0] != 1:  # SDXL: one row per encoder
                raise BadInputError(f"token '{token}' has {value.shape[0]} vectors; recare uses one per token",
                                    source=opts.adversarial, field=token)
            adversarial[token] = value
        adv_hash = sha256_file(opts.adversarial)
    resolution = opts.resolution or native_square_resolution(pipe)
    prompts, schedule, erase_set = prepare_prompts(bundle, opts, care, adversarial, anchors, resolution)

    unet = pipe.unet
    assert opts.train_method is not None and opts.lr is not None and opts.iterations is not None  # resolved
    names = select_parameters(unet, opts.train_method)
    if opts.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    latent = resolution // pipe.vae_scale_factor
    settings = erase_settings(opts, latent)
    generator = torch.Generator().manual_seed(opts.seed)
    lora = lora_settings(opts)
    trainer = EraseTrainer(unet, names, prompts, schedule, settings, pipe.scheduler.config, generator, lora=lora)
    digest = config_digest(opts, resolution, identity, care_hash, adv_hash, anchors_hash)
    start = resume_point(opts, ckpt, trainer, digest)
    n_params = sum(p.numel() for p in trainer.params)
    mapped = f" from '{opts.erase_from.strip()}'" if opts.erase_from is not None else ""
    trains = (f"{len(names)} tensors" if lora is None else
              f"LoRA rank {lora.rank}, alpha {lora.alpha:g}, on {len(trainer.names) // 2} modules")
    console.info(f"erase: {opts.method}, {opts.train_method} ({trains}, {n_params:,} parameters), "
                 f"erase set {erase_set}{mapped}, lr {opts.lr:g}, {opts.iterations} iterations"
                 + (f", {console.plural(len(anchors), 'anchor prompt')}" if anchors is not None else ""))
    last = train_with_checkpoints(opts, trainer, ckpt, digest, start, on_step)
    unet.eval()
    record = provenance("erase", recorded(opts), model=identity)
    meta = dict(base_model=identity["name"], base_text_encoder=identity["text_encoder"],
                method=opts.method, train_method=opts.train_method, target=opts.target.strip(),
                hyperparameters=opts.hyperparameters(resolution), seed=opts.seed, careset_sha256=care_hash or "",
                adversarial={"tokens": list(adversarial), "sha256": adv_hash},
                erase_set=json.dumps(erase_set), provenance=record, **anchors_meta)
    if lora is not None:
        meta["lora"] = {"rank": lora.rank, "alpha": lora.alpha, "modules": len(trainer.names) // 2}
    if lora is not None and not opts.merge:
        from recare_cli.core.lora import adapter_tensors
        from recare_cli.models.lora import save_unet_lora

        written = adapter_tensors(unet)
        save_unet_lora(opts.output, written, rank=lora.rank, alpha=lora.alpha, base_unet=identity["unet"],
                       dtype=torch_dtype(opts.save_dtype), **meta)
    else:
        written = trainer.trained_values()
        save_unet_weights(opts.output, written, base_unet=identity["unet"], dtype=torch_dtype(opts.save_dtype),
                          **meta)
    trainer.release()
    if opts.save_pipeline is not None:
        save_pipeline(pipe, opts.save_pipeline)
    if ckpt is not None and ckpt.exists():
        ckpt.unlink()
    return {"losses": last, "tensors": len(written), "parameters": n_params, "erase_set": erase_set}
