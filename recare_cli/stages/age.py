"""Stage: ``recare erase --method age``, AGE's adaptive target search (``core/age.py``, ``core/age_trainer.py``;
docs/erase.md, "AGE").

Reads the concept dictionary, keeps the ``--gumbel-k-closest`` concepts nearest the target (L2 between the
text encoder's whole last hidden states) and, when there are more than ``--gumbel-num-centers``, one per
k-means centre of their similarities; then trains the UNet and the weights over those concepts, checkpointing
as ``recare erase`` does, and writes ``recare.unet-weights``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from recare_cli import console
from recare_cli.errors import BadInputError, RefusedError, UsageError, check_choice

if TYPE_CHECKING:
    from recare_cli.stages.erase import EraseOptions


def _same_concept(a: str, b: str) -> bool:
    """Equal as CLIP's tokenizer reads them (lower case, runs of white space as one)."""
    return " ".join(a.lower().split()) == " ".join(b.lower().split())


def validate_age(opts: EraseOptions) -> None:
    """What can be checked before anything is read or loaded."""
    from recare_cli.core.age import AGE_TRAIN_METHODS
    from recare_cli.stages.erase import EraseOptions

    if opts.concepts is None:
        raise UsageError("--method age needs --concepts FILE, the concept dictionary the target is searched in "
                         "(the authors' is data/english_3000.csv of their repository; docs/erase.md)")
    if opts.train_method is not None:
        check_choice("--train-method", opts.train_method, AGE_TRAIN_METHODS, "train method for --method age")
    if opts.gumbel_hard not in (0, 1):
        raise UsageError(f"--gumbel-hard: 0 (soft top-k) or 1 (one-hot) (got {opts.gumbel_hard})")
    for name, value in (("--gumbel-temp", opts.gumbel_temp), ("--gumbel-lr", opts.gumbel_lr)):
        if not value > 0:
            raise UsageError(f"{name}: must be above 0 (got {value})")
    for name, count in (("--gumbel-topk", opts.gumbel_topk), ("--gumbel-k-closest", opts.gumbel_k_closest),
                        ("--pgd-num-steps", opts.pgd_num_steps)):
        if count < 1:
            raise UsageError(f"{name}: must be at least 1 (got {count})")
    # erase's options AGE has its own for, or no use for: refused rather than silently ignored
    if opts.guidance != EraseOptions.guidance:
        raise UsageError("--guidance: --method age uses --negative-guidance (the authors' name)")
    if opts.retain_weight != EraseOptions.retain_weight:
        raise UsageError("--retain-weight: --method age weights its preservation loss with --lamda (the authors' "
                         "name)")
    if opts.xt_batch != 1:
        raise UsageError("--xt-batch: --method age samples one x_t per step, as the authors")
    if opts.timesteps != "uniform":
        raise UsageError("--timesteps: --method age draws its timesteps as the authors (uniform)")


# ---- the concept dictionary ---------------------------------------------------------------------------------


@dataclass
class Dictionary:
    """The concepts a run searches in: ``words`` in file order after the refusals, and why others were left."""

    words: list[str]
    special: int  # left out as special tokens (--ignore-special-tokens)
    repeated: int
    target: int  # the target itself


def read_concepts(data: bytes, name: str) -> list[tuple[str, str]]:
    """``(where, word)`` for every concept of a dictionary file's bytes: the authors' CSV with a ``word`` column
    (a ``.csv`` file), or a word list (one concept a line, ``#`` comments). An empty dictionary is refused."""
    from recare_cli.io.streams import decode_lines

    if not name.lower().endswith(".csv"):
        words = [(f"{name}:{n}", line.strip()) for n, line in decode_lines(data, name)
                 if line.strip() and not line.lstrip().startswith("#")]
    else:
        text = "\n".join(line for _, line in decode_lines(data, name))
        try:
            rows = list(csv.DictReader(io.StringIO(text)))
        except csv.Error as err:
            raise BadInputError(f"not a readable CSV ({err})", source=name) from err
        if rows and "word" not in rows[0]:
            raise BadInputError("no 'word' column (the authors' english_3000.csv layout)", source=name)
        words = [(f"{name}:{n}", (row["word"] or "").strip()) for n, row in enumerate(rows, start=2)]
    if not any(w for _, w in words):
        raise BadInputError("the concept dictionary is empty", source=name)
    return words


def dictionary(entries: list[tuple[str, str]], target: str, keep_special_tokens: bool, source: str) -> Dictionary:
    """The usable concepts, first occurrences in file order: not empty, not the target, and (unless
    ``keep_special_tokens``; the authors leave them out by default) made of letters only. None left is refused."""
    from recare_cli.core.age import is_special

    words: list[str] = []
    seen: set[str] = set()
    special = repeated = itself = 0
    for _, word in entries:
        if not word:
            continue
        if _same_concept(word, target):
            itself += 1
        elif not keep_special_tokens and is_special(word):
            special += 1
        elif word in seen:
            repeated += 1
        else:
            seen.add(word)
            words.append(word)
    if not words:
        why = ([f"the target itself: {itself}"] if itself else []) + (
            [f"characters other than letters: {special}, --keep-special-tokens keeps them"] if special else [])
        raise BadInputError(f"no concept other than the target to search in ({'; '.join(why)})", source=source)
    return Dictionary(words, special, repeated, itself)


def search_set(bundle: Any, opts: EraseOptions, words: list[str]) -> tuple[list[str], list[float], Any]:
    """The concepts the weights range over (nearest first, or k-means representatives), their similarities to
    the target, and their text states (n, 77, D)."""
    from recare_cli.core.age import concept_similarities, kmeans_representatives, nearest
    from recare_cli.core.diffusion import encode_prompts

    pipe = bundle.pipe
    target = encode_prompts(pipe.tokenizer, pipe.text_encoder, [opts.target.strip()], device=bundle.device)
    sims = concept_similarities(pipe.tokenizer, pipe.text_encoder, target, words, device=bundle.device)
    closest = nearest(sims, opts.gumbel_k_closest)
    values = [float(sims[i]) for i in closest]
    picked = [closest[j] for j in kmeans_representatives(values, opts.gumbel_num_centers)]
    chosen = [words[i] for i in picked]
    states = encode_prompts(pipe.tokenizer, pipe.text_encoder, chosen, device=bundle.device)
    return chosen, [float(sims[i]) for i in picked], states


# ---- the run ------------------------------------------------------------------------------------------------


def hyperparameters(opts: EraseOptions, resolution: int) -> dict[str, Any]:
    """What shapes the trained weights (``opts`` resolved; the image size as used)."""
    keys = ("method", "train_method", "iterations", "lr", "lr_schedule", "negative_guidance", "lamda", "gumbel_lr",
            "gumbel_temp", "gumbel_hard", "gumbel_topk", "gumbel_num_centers", "gumbel_k_closest", "pgd_num_steps",
            "keep_special_tokens", "seed", "ddim_steps", "precision")
    out = {k: getattr(opts, k) for k in keys}
    out["resolution"] = resolution
    return out


def run_age(opts: EraseOptions, *, on_step: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, Any]:
    """Search and train, write the output (``opts`` validated and resolved); returns a summary."""
    import torch

    from recare_cli.core.age import age_parameters
    from recare_cli.core.age_trainer import AgeSettings, AgeTrainer
    from recare_cli.core.diffusion import ErasePrompts, encode_prompts
    from recare_cli.dtypes import torch_dtype
    from recare_cli.io.digest import sha256_bytes
    from recare_cli.io.provenance import provenance
    from recare_cli.io.streams import display_name, read_bytes
    from recare_cli.models.fingerprint import combine
    from recare_cli.models.sd import load_sd, native_square_resolution
    from recare_cli.models.weights import save_pipeline, save_unet_weights
    from recare_cli.stages.erase import erase_settings, resume_point, train_with_checkpoints
    from recare_cli.stages.options import recorded

    assert opts.concepts is not None and opts.train_method is not None and opts.iterations is not None
    ckpt = opts.checkpoint_path()
    if ckpt is not None and ckpt.exists() and not opts.resume:
        raise RefusedError(f"checkpoint '{ckpt}' exists: pass --resume to continue that run, or delete it")
    for given, name in ((opts.care, "--care"), (opts.adversarial, "--adversarial")):
        if given is not None:
            console.warn(f"--method age does not use {name}; ignoring it")
    target = opts.target.strip()
    source = display_name(opts.concepts)
    data = read_bytes(opts.concepts)
    found = dictionary(read_concepts(data, source), target, opts.keep_special_tokens, source)
    concepts_hash = sha256_bytes(data)

    bundle = load_sd(opts.model, device=opts.device, dtype="fp32")
    identity = bundle.identity()
    pipe = bundle.pipe
    chosen, sims, states = search_set(bundle, opts, found.words)
    left = [f"{found.target} the target" if found.target else "", f"{found.special} special" if found.special
            else "", f"{found.repeated} repeated" if found.repeated else ""]
    console.info(f"erase: age searches {len(chosen)} of {len(found.words)} concepts of {source}"
                 + (f" ({', '.join(x for x in left if x)} left out)" if any(left) else "")
                 + f"; nearest: {', '.join(chosen[:5])}")
    uncond, concept = (encode_prompts(pipe.tokenizer, pipe.text_encoder, [p], device=bundle.device)
                       for p in ("", target))
    prompts = ErasePrompts(uncond=uncond, erase=concept)

    unet = pipe.unet
    names = age_parameters(unet, opts.train_method)
    if not names:
        raise BadInputError(f"--train-method {opts.train_method} selects no parameter of this UNet")
    if opts.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    resolution = opts.resolution or native_square_resolution(pipe)
    settings = erase_settings(opts, resolution // pipe.vae_scale_factor)
    settings.guidance, settings.retain_weight = opts.negative_guidance, opts.lamda
    age = AgeSettings(gumbel_lr=opts.gumbel_lr, gumbel_temp=opts.gumbel_temp, gumbel_hard=opts.gumbel_hard,
                      gumbel_topk=opts.gumbel_topk, pgd_num_steps=opts.pgd_num_steps)
    trainer = AgeTrainer(unet, names, prompts, states, settings, age, pipe.scheduler.config,
                         torch.Generator().manual_seed(opts.seed))
    hyper = hyperparameters(opts, resolution)
    digest = combine(json.dumps(hyper, sort_keys=True), identity["unet"], identity["text_encoder"], concepts_hash,
                     target)
    start = resume_point(opts, ckpt, trainer, digest)
    n_params = sum(p.numel() for p in trainer.params)
    console.info(f"erase: age, {opts.train_method} ({len(names)} tensors, {n_params:,} parameters), lr {opts.lr:g}, "
                 f"{opts.iterations} iterations of {opts.pgd_num_steps} steps")
    last = train_with_checkpoints(opts, trainer, ckpt, digest, start, on_step)
    unet.eval()
    final = chosen[trainer.chosen()]
    weights = [float(w) for w in trainer.pi.detach().cpu()[0]]
    record = provenance("erase", recorded(opts), model=identity)
    save_unet_weights(opts.output, trainer.trained_values(), base_unet=identity["unet"],
                      dtype=torch_dtype(opts.save_dtype), base_model=identity["name"],
                      base_text_encoder=identity["text_encoder"], method="age", train_method=opts.train_method,
                      target=target, hyperparameters=hyper, seed=opts.seed, erase_set=json.dumps([target]),
                      concepts_sha256=concepts_hash, age_concepts=json.dumps(chosen),
                      age_similarities=json.dumps(sims), age_weights=json.dumps(weights), age_target=final,
                      provenance=record)
    trainer.release()
    if opts.save_pipeline is not None:
        save_pipeline(pipe, opts.save_pipeline)
    if ckpt is not None and ckpt.exists():
        ckpt.unlink()
    console.info(f"erase: age's target concept at the end: '{final}'")
    return {"losses": {k: v for k, v in last.items() if k != "concept"}, "tensors": len(names),
            "parameters": n_params, "erase_set": [target], "concepts": chosen, "age_target": final}
