"""Stage: iterative textual inversion against erasure (method.md §4, STEREO's "search thoroughly").

Round i: erase the current concept from the UNet with the ReCARE reference's ESD step (``esd-recare``,
starting from the previous round's erased UNet), then learn a new placeholder token on the erased UNet
from the i-th slice of the images. The next round erases that token. Only the placeholder vectors are trained; the text
encoder's embedding table is never modified (see ``core.diffusion.ExtendedEmbedding``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from recare_cli import console
from recare_cli.core.guidance import PRECISIONS, TRAIN_METHODS
from recare_cli.errors import BadInputError, UsageError, check_choice
from recare_cli.io.atomic import check_output_dir
from recare_cli.io.streams import STDIO, check_binary_destination
from recare_cli.models.sd import DEFAULT_MODEL
from recare_cli.stages.interrupt import checkpoint_kept_on_interrupt
from recare_cli.stages.options import recorded, recorded_if_set, recorded_when, run_control

# Prompt templates of the textual-inversion reference (diffusers' textual_inversion example).
OBJECT_TEMPLATES = (
    "a photo of a {}", "a rendering of a {}", "a cropped photo of the {}", "the photo of a {}",
    "a photo of a clean {}", "a photo of a dirty {}", "a dark photo of the {}", "a photo of my {}",
    "a photo of the cool {}", "a close-up photo of a {}", "a bright photo of the {}", "a cropped photo of a {}",
    "a photo of the {}", "a good photo of the {}", "a photo of one {}", "a close-up photo of the {}",
    "a rendition of the {}", "a photo of the clean {}", "a rendition of a {}", "a photo of a nice {}",
    "a good photo of a {}", "a photo of the nice {}", "a photo of the small {}", "a photo of the weird {}",
    "a photo of the large {}", "a photo of a cool {}", "a photo of a small {}",
)
STYLE_TEMPLATES = (
    "a painting in the style of {}", "a rendering in the style of {}", "a cropped painting in the style of {}",
    "the painting in the style of {}", "a clean painting in the style of {}", "a dirty painting in the style of {}",
    "a dark painting in the style of {}", "a picture in the style of {}", "a cool painting in the style of {}",
    "a close-up painting in the style of {}", "a bright painting in the style of {}",
    "a cropped painting in the style of {}", "a good painting in the style of {}",
    "a close-up painting in the style of {}", "a rendition in the style of {}", "a nice painting in the style of {}",
    "a small painting in the style of {}", "a weird painting in the style of {}", "a large painting in the style of {}",
)
TEMPLATES = {"object": OBJECT_TEMPLATES, "style": STYLE_TEMPLATES}
# Options that do not change the learned tokens (the images themselves are hashed by path).
_NOT_SHAPING = ("images", "output", "recursive", "as_list", "strict", "keep_erased", "device", "resume")
# How --initializer becomes a token: the id the word tokenises to (person</w>), or the vocabulary entry spelled
# as given (person, a word-initial piece), as the reference's convert_tokens_to_ids looks it up.
INITIALIZER_TOKENS = ("word", "reference")


def _initializer_by_entry(opts: InvertOptions) -> bool:
    return opts.initializer_token != "word"


_LORA = ("lora", "lora_alpha")  # shape the tokens, but are left out when not used (earlier files keep their bytes)


def _lora(opts: Any) -> bool:
    return opts.lora is not None


@dataclass
class InvertOptions:
    """Every option of ``recare invert``; field order is the order provenance records them in."""

    images: str  # where the images came from (folder, list file or -), for provenance and messages
    target: str
    output: str
    initializer: str = "person"
    initializer_token: str = recorded_when(_initializer_by_entry, "word")  # recorded when not the default
    property: str = "object"
    rounds: int = 2
    erase_iterations: int = 200
    erase_lr: float = 5e-6
    negative_guidance: float = 2.0
    ddim_steps: int = 50
    train_method: str = "noxattn"
    lora: int | None = recorded_if_set()  # the rounds' erasures train LoRA adapters of this rank (erase --lora)
    lora_alpha: float | None = recorded_when(_lora, None)  # None: the rank
    steps: int = 3000
    lr: float = 5e-3
    resolution: int | None = None  # None: the model's own image size
    flip: float = 0.5
    recursive: bool = False
    as_list: bool = False
    strict: bool = False
    keep_erased: str | None = None
    seed: int = 42
    model: str = DEFAULT_MODEL
    device: str = "auto"
    precision: str = "fp32"
    gradient_checkpointing: bool = False
    resume: bool = run_control(False)

    def validate(self) -> None:
        if not self.target.strip():
            raise UsageError("--target must not be empty")
        check_choice("--property", self.property, TEMPLATES, "property")
        check_choice("--initializer-token", self.initializer_token, INITIALIZER_TOKENS, "initializer token")
        check_choice("--train-method", self.train_method, TRAIN_METHODS, "train method")
        check_choice("--precision", self.precision, PRECISIONS, "precision")
        from recare_cli.stages.erase import validate_lora

        validate_lora(self, "invert")
        check_binary_destination(self.output)  # refuse now, not after the training
        if self.output != STDIO:
            check_output_dir(Path(self.output))
        if self.keep_erased is not None:
            folder = Path(self.keep_erased)
            if folder.exists() and not folder.is_dir():
                raise BadInputError("not a folder", source=str(folder))
            check_output_dir(folder)

    def checkpoint_path(self) -> Path | None:
        return None if self.output == STDIO else Path(f"{self.output}.ckpt")

    def hyperparameters(self, resolution: int) -> dict[str, Any]:
        """What shapes the learned tokens (the image size as resolved for the loaded model)."""
        from recare_cli.stages.erase import lora_alpha

        shaping = {k: v for k, v in {**asdict(self), "resolution": resolution}.items() if k not in _NOT_SHAPING}
        if not _initializer_by_entry(self):
            del shaping["initializer_token"]  # the default: files and checkpoints keep the bytes they had
        if self.lora is None:
            return {k: v for k, v in shaping.items() if k not in _LORA}
        return {**shaping, "lora_alpha": lora_alpha(self)}

    def digest(self, resolution: int, identity: dict[str, str], images: list[Path]) -> str:
        from recare_cli.models.fingerprint import combine

        second = [identity["text_encoder_2"]] if "text_encoder_2" in identity else []  # SDXL's
        return combine(sorted(self.hyperparameters(resolution).items()), identity["unet"], identity["text_encoder"],
                       [str(p) for p in images], *second)

    def tokens(self) -> list[str]:
        from recare_cli.io.careset import reference_key

        key = reference_key(self.target) or "concept"
        return [f"<{key}-adv{i}>" for i in range(self.rounds)]


def load_pixels(paths: list[Path], *, strict: bool, resolution: int, source: str) -> tuple[Any, list[Path]]:
    """Readable images as (N, 3, R, R) in [-1, 1] (bicubic resize to a square, as the reference); the
    unreadable ones are skipped with a warning (or stop the command with ``strict``)."""
    import numpy as np
    import torch
    from PIL import Image

    from recare_cli.io.images import iter_images

    skipped: list[tuple[Path, str]] = []
    used: list[Path] = []
    arrays = []
    for path, image in iter_images(paths, strict=strict, skipped=skipped):
        resized = image.resize((resolution, resolution), resample=Image.Resampling.BICUBIC)
        arrays.append(np.asarray(resized, dtype=np.float32) / 127.5 - 1.0)
        used.append(path)
    for path, why in skipped:
        console.warn(f"skipped unreadable image {path}: {why}")
    if skipped:
        console.warn(f"skipped {len(skipped)} of {console.plural(len(paths), 'image')}")
    if not arrays:
        raise BadInputError(f"none of the {len(paths)} images could be read", source=source)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous(), used


def round_slices(n_images: int, rounds: int) -> list[range]:
    """Round i trains on images ``[i·q, (i+1)·q)``, ``q = n // rounds`` (sorted, deterministic order)."""
    if n_images < rounds:
        raise BadInputError(f"{n_images} readable image(s) for {rounds} rounds: each round needs its own images "
                            "(add images or lower --rounds)")
    q = n_images // rounds
    return [range(i * q, (i + 1) * q) for i in range(rounds)]


def initializer_vector(pipe: Any, word: str, token: str = "word", encoder: int = 0) -> Any:
    """The embedding row the new tokens start from: the one token ``word`` tokenises to (``token="word"``:
    ``person`` → ``person</w>``), or the vocabulary entry spelled ``word`` (``"reference"``: ``person``, the
    word-initial piece, as the reference's ``convert_tokens_to_ids``); ``encoder`` 1 reads SDXL's second text
    encoder's row (through its own tokenizer)."""
    from recare_cli.models.sd import text_encoders, tokenizers

    tokenizer = tokenizers(pipe)[encoder]
    if token == "reference":
        vocab = tokenizer.get_vocab()
        if word not in vocab:
            raise UsageError(f"--initializer '{word}' is not an entry of the tokenizer's vocabulary "
                             "(--initializer-token reference looks the word up as written)")
        ids = [vocab[word]]
    else:
        ids = tokenizer(word, add_special_tokens=False).input_ids
    if len(ids) != 1:
        raise UsageError(f"--initializer '{word}' is {len(ids)} tokens; choose a word that is a single CLIP token "
                         "(person, art, …)")
    embedding = text_encoders(pipe)[encoder].get_input_embeddings()
    return embedding.weight[ids[0]].detach().clone().reshape(1, -1)


def round_erase_settings(opts: InvertOptions, latent_size: int) -> Any:
    """The settings of a round's erasure (``core.diffusion.EraseSettings``): the ESD step of the ReCARE
    reference and of STEREO's search (``esd-recare``), AdamW at ``--erase-lr``, constant rate, no retain loss."""
    from recare_cli.core.diffusion import EraseSettings

    return EraseSettings(method="esd-recare", iterations=opts.erase_iterations, lr=opts.erase_lr,
                         lr_schedule="constant", guidance=opts.negative_guidance, retain_weight=0.0,
                         latent_size=latent_size, sample_steps=opts.ddim_steps, precision=opts.precision, xt_batch=1)


def round_inversion_settings(opts: InvertOptions) -> Any:
    """The settings of a round's textual inversion (``core.diffusion.InversionSettings``): batch 1."""
    from recare_cli.core.diffusion import InversionSettings

    return InversionSettings(steps=opts.steps, lr=opts.lr, precision=opts.precision)


def save_round(path: Path, digest: str, done: int, learned: list[Any], unet_values: dict[str, Any],
               generator: Any, learned_2: list[Any] | None = None) -> None:
    """Round-level checkpoint: the tokens learned so far (SDXL: also the second encoder's vectors), the erased
    UNet's trained values, the generator."""
    import torch

    from recare_cli.models.weights import write_safetensors

    tensors = {f"param/{k}": v for k, v in unet_values.items()}
    tensors["tokens"] = torch.cat(learned).cpu()
    if learned_2:
        tensors["tokens_2"] = torch.cat(learned_2).cpu()
    tensors["rng"] = generator.get_state()
    write_safetensors(path, tensors, {"format": "recare.invert-checkpoint", "version": "1", "config": digest,
                                      "rounds_done": str(done)})


def load_round(path: Path, digest: str, unet: Any, generator: Any) -> tuple[list[Any], list[Any]]:
    from recare_cli.models.weights import read_safetensors

    tensors, meta = read_safetensors(path)
    if meta.get("format") != "recare.invert-checkpoint":
        raise BadInputError("not a recare invert checkpoint", source=str(path), field="format")
    if meta.get("config") != digest:
        raise BadInputError("checkpoint made with other settings, model or images; delete it or rerun with the "
                            "settings it was made with", source=str(path), field="config")
    params = {k[len("param/"):]: v for k, v in tensors.items() if k.startswith("param/")}
    unet.load_state_dict(params, strict=False)
    generator.set_state(tensors["rng"])
    done = int(meta["rounds_done"])
    second = [row.reshape(1, -1) for row in tensors["tokens_2"][:done]] if "tokens_2" in tensors else []
    return [row.reshape(1, -1) for row in tensors["tokens"][:done]], second


def run_invert(opts: InvertOptions, paths: list[Path], *,
               on_step: Callable[[str, int, float], None] | None = None) -> dict[str, Any]:
    import torch

    from recare_cli.core.diffusion import (
        ErasePrompts,
        EraseSchedule,
        EraseTrainer,
        InversionTrainer,
        SecondEncoder,
        extend_tokenizer,
        latent_distributions,
        tokenize,
    )
    from recare_cli.core.guidance import select_parameters
    from recare_cli.io.provenance import provenance
    from recare_cli.models.sd import load_sd, native_square_resolution
    from recare_cli.models.sdxl_embeddings import save_sdxl_embeddings
    from recare_cli.models.weights import save_embeddings, save_unet_weights
    from recare_cli.stages.erase import condition_encoder, lora_settings, with_tokens

    opts.validate()
    ckpt = opts.checkpoint_path()
    if ckpt is not None and ckpt.exists() and not opts.resume:
        from recare_cli.errors import RefusedError

        raise RefusedError(f"checkpoint '{ckpt}' exists: pass --resume to continue that run, or delete it")
    bundle = load_sd(opts.model, device=opts.device, dtype="fp32")
    identity = bundle.identity()
    pipe, device = bundle.pipe, bundle.device
    resolution = opts.resolution or native_square_resolution(pipe)
    pixels, used = load_pixels(paths, strict=opts.strict, resolution=resolution, source=opts.images)
    slices = round_slices(len(used), opts.rounds)
    xl = bundle.architecture.sdxl  # one vector per text encoder per token
    inits = [initializer_vector(pipe, opts.initializer, opts.initializer_token, i).to(device)
             for i in range(2 if xl else 1)]
    init = inits[0]
    tokens = opts.tokens()
    try:
        tokenizer, first_id = extend_tokenizer(pipe.tokenizer, tokens)
        tokenizer_2, first_id_2 = extend_tokenizer(pipe.tokenizer_2, tokens) if xl else (None, 0)
    except ValueError as err:
        raise UsageError(f"--target: {err}") from err
    with console.progress(f"encoding {console.plural(len(used), 'image')} (and flips) with the VAE", len(used)):
        latents = latent_distributions(pipe.vae, pixels).to(device)
    del pixels
    if opts.keep_erased is not None:
        Path(opts.keep_erased).mkdir(exist_ok=True)

    unet = pipe.unet
    names = select_parameters(unet, opts.train_method)
    if opts.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    generator = torch.Generator().manual_seed(opts.seed)
    learned: list[torch.Tensor] = []
    learned_2: list[torch.Tensor] = []  # SDXL: the second text encoder's vectors
    digest = opts.digest(resolution, identity, used)
    if opts.resume and ckpt is not None and ckpt.exists():
        first, second = load_round(ckpt, digest, unet, generator)
        learned, learned_2 = [v.to(device) for v in first], [v.to(device) for v in second]
        console.info(f"invert: resuming from {ckpt} after round {len(learned)}/{opts.rounds}")
    templates = TEMPLATES[opts.property]
    latent_size = resolution // pipe.vae_scale_factor
    losses: dict[str, float] = {}
    with checkpoint_kept_on_interrupt(ckpt):
        for r in range(len(learned), opts.rounds):
            concept = opts.target.strip() if r == 0 else tokens[r - 1]
            # the placeholder rows: the tokens learned so far (the rows after them are never read)
            known = [torch.cat(learned) if learned else init]
            if xl:
                known.append(torch.cat(learned_2) if learned_2 else inits[1])
            toks, ctx = with_tokens(pipe, tokens[:len(known[0])], known)
            with ctx:
                enc = condition_encoder(bundle, resolution, toks)
                prompts = ErasePrompts(uncond=enc([""]), erase=enc([concept]))
            settings = round_erase_settings(opts, latent_size)
            unet.train()
            eraser = EraseTrainer(unet, names, prompts, EraseSchedule(erase=[0] * opts.erase_iterations), settings,
                                  pipe.scheduler.config, generator, lora=lora_settings(opts))
            erasing = f"round {r + 1}/{opts.rounds}: erasing '{concept}'"
            with console.progress(erasing, opts.erase_iterations) as advance:
                for i in range(opts.erase_iterations):
                    out = eraser.step(i)
                    advance(1)
                    if on_step is not None:
                        on_step("erase", i, out["loss"])
            losses[f"round{r}_erase"] = out["loss"] if opts.erase_iterations else float("nan")
            if opts.keep_erased is not None:
                save_unet_weights(Path(opts.keep_erased) / f"round{r}-unet.safetensors", eraser.trained_values(),
                                  base_unet=identity["unet"], base_model=identity["name"], method="esd-recare",
                                  train_method=opts.train_method, target=concept, round=str(r),
                                  provenance=provenance("invert", recorded(opts), model=identity))
            erased_values = {k: v.detach().clone() for k, v in eraser.trained_values().items()}
            eraser.release()
            del eraser
            unet.eval()

            filled = [t.format(tokens[r]) for t in templates]
            ids = tokenize(tokenizer, filled)
            fixed = torch.cat(learned) if learned else init[:0]
            round_second = None if not xl else SecondEncoder(
                pipe.text_encoder_2, first_id_2, torch.cat(learned_2) if learned_2 else inits[1][:0], inits[1],
                tokenize(tokenizer_2, filled), (resolution, resolution))
            trainer = InversionTrainer(unet, pipe.text_encoder, first_id, fixed, init, latents[slices[r].start:
                                       slices[r].stop], ids, pipe.scheduler.config,
                                       round_inversion_settings(opts),
                                       generator, flip_p=opts.flip, second=round_second)
            loss = float("nan")
            learning = f"round {r + 1}/{opts.rounds}: learning {tokens[r]} on {console.plural(len(slices[r]), 'image')}"
            with console.progress(learning, opts.steps) as advance:
                for s in range(opts.steps):
                    loss = trainer.step()
                    advance(1)
                    if on_step is not None:
                        on_step("invert", s, loss)
            losses[f"round{r}_inversion"] = loss
            learned.append(trainer.vector().to(device))
            if xl:
                learned_2.append(trainer.vectors()[1].to(device))
            if ckpt is not None and r + 1 < opts.rounds:
                save_round(ckpt, digest, r + 1, learned, erased_values, generator, learned_2)

    record = provenance("invert", recorded(opts), model=identity)
    meta: dict[str, Any] = dict(
        base_unet=identity["unet"], base_model=identity["name"], target=opts.target.strip(),
        initializer=opts.initializer, property=opts.property, rounds=opts.rounds, images=len(used),
        hyperparameters=opts.hyperparameters(resolution), provenance=record)
    if xl:
        save_sdxl_embeddings(opts.output, tokens, [torch.cat(learned).cpu(), torch.cat(learned_2).cpu()],
                             base_text_encoder=identity["text_encoder"],
                             base_text_encoder_2=identity["text_encoder_2"], **meta)
    else:
        result = {t: v.cpu() for t, v in zip(tokens, learned, strict=True)}
        save_embeddings(opts.output, result, base_text_encoder=identity["text_encoder"], **meta)
    if ckpt is not None and ckpt.exists():
        ckpt.unlink()
    return {"tokens": tokens, "images": len(used), "losses": losses}
