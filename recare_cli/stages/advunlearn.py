"""Stage: ``recare erase --method advunlearn``, AdvUnlearn's adversarial training of the text encoder
(``core/advunlearn.py``; docs/erase.md, "AdvUnlearn").

Reads the retain prompts, loads the model, encodes the target and the retain prompts once with the original
text encoder, trains the text encoder with checkpoints, and writes the trained parameters as
``recare.text-encoder-weights``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from recare_cli import console
from recare_cli.errors import BadInputError, RefusedError, UsageError, check_choice

if TYPE_CHECKING:
    from recare_cli.stages.erase import EraseOptions

RETAIN_HINT = ("the authors' are data/prompts/train/*.csv of github.com/OPTML-Group/AdvUnlearn "
               "(coco_object_retain.csv for nudity)")
# recare's options advunlearn does not read, with the value that means "not given"
_UNUSED = {"guidance": ("--guidance", 2.0, "--negative-guidance"), "retain_weight": ("--retain-weight", 1.0,
                                                                                    "--retain-loss-w"),
           "timesteps": ("--timesteps", "uniform", None), "xt_batch": ("--xt-batch", 1, None),
           "lr_schedule": ("--lr-schedule", "constant", None), "num_adversarial": ("--num-adversarial", 2, None)}


def validate_advunlearn(opts: EraseOptions) -> None:
    """What can be checked before anything is read or loaded."""
    from recare_cli.core.advunlearn import ATTACK_INITS, ATTACK_METHODS, ATTACK_TYPES, TRAIN_METHODS

    if opts.retain_prompts is None:
        raise UsageError(f"--method advunlearn needs --retain-prompts FILE (prompts to keep, CSV or one a line; "
                         f"{RETAIN_HINT})")
    if opts.train_method is not None:
        check_choice("--train-method", opts.train_method, TRAIN_METHODS, "advunlearn train method")
    check_choice("--attack-type", opts.attack_type, ATTACK_TYPES, "attack type")
    check_choice("--attack-init", opts.attack_init, ATTACK_INITS, "attack init")
    check_choice("--attack-method", opts.attack_method, ATTACK_METHODS, "attack method")
    for name, low in (("retain_batch", 1), ("attack_step", 1), ("adv_prompt_num", 1), ("adv_prompt_update_step", 1),
                      ("warmup_iter", 0)):
        if getattr(opts, name) < low:
            raise UsageError(f"--{name.replace('_', '-')}: must be at least {low} (got {getattr(opts, name)})")
    if not opts.attack_lr > 0:
        raise UsageError(f"--attack-lr: must be above 0 (got {opts.attack_lr})")
    if opts.precision == "fp16":
        raise UsageError("--precision fp16: advunlearn trains in fp32 or bf16 (fp16 would need loss scaling)")
    words = len(opts.target.split())
    k = words if opts.attack_type == "add" else opts.adv_prompt_num
    if words + k > 75:
        raise UsageError(f"--target has {words} words and the attack adds {k}: more than the 75 a prompt holds")


def hyperparameters(opts: EraseOptions, resolution: int) -> dict[str, Any]:
    """What shapes the trained text encoder (``opts`` resolved; the image size as used)."""
    keys = ("method", "train_method", "iterations", "lr", "seed", "ddim_steps", "precision", "retain_batch",
            "retain_loss_w", "negative_guidance", "warmup_iter", "attack_step", "attack_lr", "attack_init",
            "attack_type", "attack_method", "adv_prompt_num", "adv_prompt_update_step")
    return {**{k: getattr(opts, k) for k in keys}, "resolution": resolution}


def read_retain_prompts(path: str) -> tuple[list[str], str]:
    """The retain prompts (recare's prompt readers: a CSV with a ``prompt`` column, JSONL, or one a line) and
    the hash of the prompt list."""
    from recare_cli.io.digest import sha256_bytes
    from recare_cli.io.prompts import read_prompts

    prompts = [row.prompt for row in read_prompts(path)]
    return prompts, sha256_bytes("\n".join(prompts).encode())


def _warn_unused(opts: EraseOptions) -> None:
    for given, name in ((opts.care, "--care"), (opts.adversarial, "--adversarial")):
        if given is not None:
            console.warn(f"--method advunlearn does not use {name}; ignoring it")
    for field, (option, default, instead) in _UNUSED.items():
        if getattr(opts, field) != default:
            console.warn(f"--method advunlearn does not use {option}; ignoring it"
                         + (f" (its own is {instead})" if instead else ""))


def run_advunlearn(opts: EraseOptions, *,
                   on_step: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, Any]:
    """Train and write the output (``opts`` validated and resolved); returns a summary."""
    import numpy as np
    import torch

    from recare_cli.core.advunlearn import (
        AdvUnlearnPrompts,
        AdvUnlearnSettings,
        AdvUnlearnTrainer,
        adversarial_count,
        retain_schedule,
        trained_parameters,
    )
    from recare_cli.core.diffusion import encode_prompts, tokenize
    from recare_cli.dtypes import torch_dtype
    from recare_cli.io.provenance import provenance
    from recare_cli.models.fingerprint import combine
    from recare_cli.models.sd import load_sd, native_square_resolution
    from recare_cli.models.weights import save_pipeline, save_text_encoder_weights
    from recare_cli.stages.erase import resume_point, train_with_checkpoints
    from recare_cli.stages.options import recorded

    assert opts.train_method is not None and opts.lr is not None and opts.iterations is not None  # resolved
    assert opts.retain_prompts is not None  # validated
    ckpt = opts.checkpoint_path()
    if ckpt is not None and ckpt.exists() and not opts.resume:
        raise RefusedError(f"checkpoint '{ckpt}' exists: pass --resume to continue that run, or delete it")
    _warn_unused(opts)
    retain, retain_hash = read_retain_prompts(opts.retain_prompts)
    if len(retain) < opts.retain_batch:
        raise BadInputError(f"{len(retain)} retain prompts, fewer than --retain-batch {opts.retain_batch}",
                            source=opts.retain_prompts)

    bundle = load_sd(opts.model, device=opts.device, dtype="fp32")
    identity = bundle.identity()
    pipe, device = bundle.pipe, bundle.device
    te = pipe.text_encoder
    names = trained_parameters(te, opts.train_method)
    if not names:
        raise UsageError(f"--train-method {opts.train_method}: the model's text encoder has no such layers")
    target = opts.target.strip()
    words = len(target.split())
    prompts = AdvUnlearnPrompts(
        uncond=encode_prompts(pipe.tokenizer, te, [""], device=device),
        target=encode_prompts(pipe.tokenizer, te, [target], device=device),
        target_ids=tokenize(pipe.tokenizer, [target]).to(device),
        retain=encode_prompts(pipe.tokenizer, te, retain, device=device),
        retain_ids=tokenize(pipe.tokenizer, retain).to(device),
        k=adversarial_count(opts.attack_type, opts.adv_prompt_num, words), n_words=words)
    schedule = retain_schedule(len(retain), opts.retain_batch, opts.iterations, np.random.default_rng(opts.seed))
    resolution = opts.resolution or native_square_resolution(pipe)
    settings = AdvUnlearnSettings(
        iterations=opts.iterations, lr=opts.lr, warmup_iter=opts.warmup_iter, attack_step=opts.attack_step,
        attack_lr=opts.attack_lr, attack_init=opts.attack_init, attack_type=opts.attack_type,
        attack_method=opts.attack_method, adv_prompt_update_step=opts.adv_prompt_update_step,
        negative_guidance=opts.negative_guidance, retain_loss_w=opts.retain_loss_w, ddim_steps=opts.ddim_steps,
        latent_size=resolution // pipe.vae_scale_factor, precision=opts.precision)
    if opts.gradient_checkpointing:
        pipe.unet.enable_gradient_checkpointing()
    trainer = AdvUnlearnTrainer(pipe.unet, te, names, prompts, schedule, settings, pipe.scheduler.config,
                                torch.Generator().manual_seed(opts.seed))
    hyper = hyperparameters(opts, resolution)
    digest = combine(json.dumps(hyper, sort_keys=True), identity["unet"], identity["text_encoder"], retain_hash,
                     target)
    start = resume_point(opts, ckpt, trainer, digest)
    n_params = sum(p.numel() for p in trainer.params)
    console.info(f"erase: advunlearn, text encoder {opts.train_method} ({len(names)} tensors, {n_params:,} "
                 f"parameters), target '{target}', {len(retain)} retain prompts, lr {opts.lr:g}, "
                 f"{opts.iterations} iterations ({opts.warmup_iter} without attack), {opts.attack_step} attack "
                 f"steps each")
    last = train_with_checkpoints(opts, trainer, ckpt, digest, start, on_step)
    trained = trainer.trained_values()
    record = provenance("erase", recorded(opts), model=identity)
    save_text_encoder_weights(opts.output, trained, base_text_encoder=identity["text_encoder"],
                              dtype=torch_dtype(opts.save_dtype), base_unet=identity["unet"],
                              base_model=identity["name"], method="advunlearn", train_method=opts.train_method,
                              target=target, hyperparameters=hyper, seed=opts.seed,
                              retain_prompts={"sha256": retain_hash, "count": len(retain)}, provenance=record)
    trainer.release()
    if opts.save_pipeline is not None:
        save_pipeline(pipe, opts.save_pipeline)
    if ckpt is not None and ckpt.exists():
        ckpt.unlink()
    return {"losses": last, "tensors": len(names), "parameters": n_params, "erase_set": [target]}
