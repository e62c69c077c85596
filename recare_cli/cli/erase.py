"""recare erase: train a UNet that erases the target and keeps the CARE-set (method.md §5b)."""

from __future__ import annotations

from typing import Annotated

import typer

from recare_cli import console
from recare_cli.cli.options import Device, LoraAlpha, LoraRank, Quiet, SafetensorsOutput, Seed
from recare_cli.models.sd import MODEL_ENV
from recare_cli.stages.erase import METHOD_DEFAULTS
from recare_cli.stages.erase import EraseOptions as O

OPTIONS = O
CLI_ONLY = ("quiet",)


def _per_method(key: str) -> str:
    """``recare 2e-05, esd 5e-05, …``: each training method's own default of an option, from the one table (uce
    trains nothing)."""
    return ", ".join(f"{method} {values[key]:g}" if isinstance(values[key], float) else f"{method} {values[key]}"
                     for method, values in METHOD_DEFAULTS.items() if key in values and method != "uce")


HELP = """Erase TARGET from a Stable Diffusion UNet while retaining the CARE-set.

Trains the UNet parameters selected by --train-method against a frozen copy of their original values. --method recare (default) is ReCARE's objective: erase the target and the first --num-adversarial tokens of --adversarial (from recare invert) towards the CARE-set anchors, with a retain loss on CARE-set prompts; --method recare-noretain is that objective without the retain loss. --method stereo is published STEREO's "robustly erase once" (Srivatsan et al.): the same compositional objective, no retain loss, no CARE-set, anchored on STEREO's own prompts for the target (--anchors: the authors' utils/anchor_prompts.json, not shipped with recare; --anchor TEXT adds prompts); its search stage is recare invert (docs/erase.md). --method esd is published ESD (Gandikota et al., esd_sd.py: target eps_from - g(eps_c - eps_empty), Adam, its own defaults; --erase-from maps the target from another concept); --method esd-recare is the weaker ESD step of ReCARE's reference (eps_c - (g - 1)(eps_c - eps_empty), the one recare invert uses). Neither ESD uses the CARE-set. --method uce is UCE's closed-form edit of the cross-attention key/value projections (no training, no CARE-set): the target is mapped to --guide, the --preserve concepts are kept. --method age is AGE (Bui et al., train_age.py): the target is erased towards a concept of the --concepts dictionary that a Gumbel-softmax search picks during training (the concept the erasure disturbs most), which is preserved at the same time; no CARE-set. --method advunlearn is AdvUnlearn (Zhang et al., AdvUnlearn.py): adversarial training of the text encoder, not the UNet (an attack on the prompt's word embeddings, then the ESD-style loss on the adversarial prompt plus a retain loss on --retain-prompts); it writes text-encoder weights. Options left unset take the method's own defaults (docs/erase.md).

Writes safetensors with the trained parameters' new values and metadata (docs/erase.md); apply them with recare sample --weights (UNet and text-encoder weights alike), recare_cli.models.weights.apply_unet_weights / apply_text_encoder_weights, or write a whole diffusers pipeline folder with --save-pipeline. --lora RANK trains LoRA adapters (peft) beside the selected modules instead, against the base model with the adapters switched off (no copy of any weight), and writes a LoRA file that diffusers' pipe.load_lora_weights loads and recare sample --weights applies; --merge writes the merged weights instead. Checkpoints every --checkpoint-every iterations to OUTPUT.ckpt; --resume continues an interrupted run to the same weights.

Examples:

  recare erase --target nudity --care care.json --adversarial adv.safetensors -o erased.safetensors

  recare erase --target nudity --method esd --train-method esd-u -o esd.safetensors --save-pipeline sd-esd/

  recare erase --target nudity --care care.json --adversarial adv.safetensors --lora 8 -o erased-lora.safetensors

  recare erase --target "cowboy hat" --erase-from cowboy --method esd -o hat.safetensors

  recare erase --target nudity --method stereo --adversarial adv.safetensors --anchors anchor_prompts.json -o stereo.safetensors

  recare erase --target "Van Gogh" --method uce --guide art --preserve Monet --preserve Rembrandt -o uce.safetensors

  recare erase --target nudity --method age --concepts english_3000.csv -o age.safetensors

  recare erase --target nudity --method advunlearn --retain-prompts coco_object_retain.csv -o te.safetensors
"""


def erase(
    target: Annotated[str, typer.Option("--target", "-t", help="The concept to erase, e.g. nudity.",
                                        show_default=False)],
    output: SafetensorsOutput,
    care: Annotated[str | None, typer.Option("--care", help="CARE-set JSON from recare refine (either layout); "
                                                           "required for recare and recare-noretain.",
                                             show_default=False)] = O.care,
    adversarial: Annotated[str | None, typer.Option("--adversarial", help="Adversarial token embeddings from "
                                                                          "recare invert (safetensors).",
                                                    show_default=False)] = O.adversarial,
    num_adversarial: Annotated[int, typer.Option("--num-adversarial", min=0,
                                                 help="How many adversarial tokens join the erase set.")] = O.num_adversarial,
    method: Annotated[str, typer.Option("--method", help="recare, esd, esd-recare, stereo, recare-noretain, "
                                                         "uce, age or advunlearn.")] = O.method,
    erase_from: Annotated[str | None, typer.Option(
        "--erase-from", help="esd only: the concept to erase the target from (default: the target itself), e.g. "
                             "--target 'cowboy hat' --erase-from cowboy.", show_default=False)] = O.erase_from,
    anchors: Annotated[str | None, typer.Option(
        "--anchors", help="stereo: anchor prompts per concept, a JSON object of prompt lists keyed by concept "
                          "as the authors' utils/anchor_prompts.json (the target's list is used), or - for stdin.",
        show_default=False)] = O.anchors,
    anchor: Annotated[list[str] | None, typer.Option(
        "--anchor", help="stereo: an anchor prompt (after --anchors' list); repeatable.",
        show_default=False)] = None,
    train_method: Annotated[str | None, typer.Option(
        "--train-method", help="Trained UNet parameters: noxattn, xattn, selfattn, full or xattn-kv (cross-attention "
                               "keys and values), or ESD's names esd-u (= noxattn), esd-x (= xattn), esd-all "
                               f"(= full), esd-x-strict (= xattn-kv). age takes the authors' names and selections: "
                               "noxattn, xattn, selfattn, xattn_matching, full, notime (docs/erase.md); advunlearn: trained text-encoder "
                               "layers, text_encoder_full or the authors' text_encoder_layer… names. Default: the "
                               f"method's ({_per_method('train_method')}).",
        show_default=False)] = O.train_method,
    lora: LoraRank = O.lora,
    lora_alpha: LoraAlpha = O.lora_alpha,
    merge: Annotated[bool, typer.Option("--merge", help="With --lora: write the merged weights of the adapted "
                                                        "modules (as without --lora) instead of the adapters.")] = O.merge,
    iterations: Annotated[int | None, typer.Option(
        "--iterations", min=1, help=f"Training iterations (age: UNet updates). Default: the method's "
                                    f"({_per_method('iterations')}).", show_default=False)] = O.iterations,
    lr: Annotated[float | None, typer.Option(
        "--lr", min=0.0, help=f"Learning rate of AdamW (esd, age: Adam). Default: the method's ({_per_method('lr')}).",
        show_default=False)] = O.lr,
    lr_schedule: Annotated[str, typer.Option("--lr-schedule", help="constant (reference), or linear / cosine "
                                                                   "decay from --lr over the iterations.")] = O.lr_schedule,
    guidance: Annotated[float, typer.Option("--guidance", help="Compositional guidance s (reference convention: "
                                                               "intended scale + 1); for esd and esd-recare the "
                                                               "negative guidance g.")] = O.guidance,
    ddim_steps: Annotated[int, typer.Option("--ddim-steps", min=3, help="Steps of the schedule x_t is drawn from "
                                                                        "(reference: 50); DDIM, or for esd the "
                                                                        "model's own sampler.")] = O.ddim_steps,
    timesteps: Annotated[str, typer.Option("--timesteps", help="How each iteration's x_t depth (DDIM step) is "
                                                               "drawn: uniform (reference: independently) or "
                                                               "stratified (every depth equally often, shuffled: "
                                                               "the same distribution; docs/erase.md).")] = O.timesteps,
    xt_batch: Annotated[int, typer.Option("--xt-batch", min=1, help="x_t samples per iteration (reference: 1): "
                                                                    "independent noises at the iteration's depth, "
                                                                    "losses averaged (docs/erase.md).")] = O.xt_batch,
    retain_weight: Annotated[float, typer.Option("--retain-weight", min=0.0, help="Weight λ of the retain "
                                                                                  "loss.")] = O.retain_weight,
    seed: Seed = O.seed,
    resolution: Annotated[int | None, typer.Option(
        "--resolution", min=8, help="Image size of the sampled x_t, in pixels (default: the model's own, "
                                    "e.g. 512 for SD 1.x).", show_default=False)] = O.resolution,
    model: Annotated[str, typer.Option("--model", envvar=MODEL_ENV, show_envvar=True,
                                       help="Stable Diffusion 1.x, 2.x or SDXL model: a diffusers folder or a hub id.")] = O.model,
    device: Device = O.device,
    precision: Annotated[str, typer.Option("--precision", help="fp32, or bf16/fp16 autocast (GPUs); weights "
                                                               "stay fp32.")] = O.precision,
    gradient_checkpointing: Annotated[bool, typer.Option("--gradient-checkpointing",
                                                         help="Trade compute for activation memory.")] = O.gradient_checkpointing,
    save_dtype: Annotated[str, typer.Option("--save-dtype", help="fp32, fp16 or bf16 for the output "
                                                                 "tensors.")] = O.save_dtype,
    save_pipeline: Annotated[str | None, typer.Option("--save-pipeline", help="Also write a complete diffusers "
                                                                              "pipeline folder with the erased "
                                                                              "UNet.", show_default=False)] = O.save_pipeline,
    guide: Annotated[str, typer.Option("--guide", help="uce: the concept the target is mapped to (the authors' "
                                                       "default: the empty prompt; they use art for styles).")] = O.guide,
    preserve: Annotated[list[str] | None, typer.Option(
        "--preserve", help="uce: a concept whose cross-attention outputs are kept; repeatable (default: none, "
                           "as the authors).", show_default=False)] = None,
    preserve_file: Annotated[str | None, typer.Option(
        "--preserve-file", help="uce: more concepts to preserve, one a line (# comments), or - for stdin.",
        show_default=False)] = O.preserve_file,
    erase_scale: Annotated[float, typer.Option("--erase-scale", min=0.0, help="uce: weight of the "
                                                                              "erased concept.")] = O.erase_scale,
    preserve_scale: Annotated[float, typer.Option("--preserve-scale", min=0.0, help="uce: weight of each "
                                                                                    "preserved concept.")] = O.preserve_scale,
    lamb: Annotated[float, typer.Option("--lamb", help="uce: λ, the pull of every other direction towards "
                                                       "the original weights.")] = O.lamb,
    concepts: Annotated[str | None, typer.Option(
        "--concepts", help="age: the concept dictionary the target concept is searched in: a word list (one a line) "
                           "or the authors' CSV with a word column (their data/english_3000.csv), or - for stdin.",
        show_default=False)] = O.concepts,
    negative_guidance: Annotated[float, typer.Option(
        "--negative-guidance", help="age: g of the erase target x0(eps_0) - g(x0(eps_c) - x0(eps_0)), eps_0 the "
                                    "target concept's; advunlearn: g of the target eps_empty - g(eps_c - "
                                    "eps_empty).")] = O.negative_guidance,
    lamda: Annotated[float, typer.Option("--lamda", min=0.0, help="age: weight of the target concept's "
                                                                   "preservation loss.")] = O.lamda,
    gumbel_lr: Annotated[float, typer.Option("--gumbel-lr", help="age: Adam learning rate of the concept "
                                                                  "weights.")] = O.gumbel_lr,
    gumbel_temp: Annotated[float, typer.Option("--gumbel-temp", help="age: Gumbel-softmax "
                                                                      "temperature.")] = O.gumbel_temp,
    gumbel_hard: Annotated[int, typer.Option("--gumbel-hard", help="age: 1 picks one concept (straight-through), "
                                                                    "0 mixes the --gumbel-topk "
                                                                    "largest.")] = O.gumbel_hard,
    gumbel_topk: Annotated[int, typer.Option("--gumbel-topk", help="age: concepts mixed when --gumbel-hard is "
                                                                    "0.")] = O.gumbel_topk,
    gumbel_num_centers: Annotated[int, typer.Option(
        "--gumbel-num-centers", help="age: when more concepts are nearest, keep one per k-means centre of their "
                                     "similarities (0: keep all).")] = O.gumbel_num_centers,
    gumbel_k_closest: Annotated[int, typer.Option("--gumbel-k-closest", help="age: how many concepts nearest the "
                                                                              "target are searched.")] = O.gumbel_k_closest,
    pgd_num_steps: Annotated[int, typer.Option("--pgd-num-steps", help="age: steps per UNet update; all but one "
                                                                        "move the concept "
                                                                        "weights.")] = O.pgd_num_steps,
    keep_special_tokens: Annotated[bool, typer.Option(
        "--keep-special-tokens", help="age: keep the concepts with characters other than letters (digits, spaces, "
                                      "hyphens), which the authors leave out (their --ignore_special_tokens, "
                                      "default True).")] = O.keep_special_tokens,
    retain_prompts: Annotated[str | None, typer.Option(
        "--retain-prompts", help="advunlearn (required): prompts whose images are kept, a CSV with a prompt column, "
                                 "JSONL or one a line, or - for stdin (the authors': data/prompts/train/*.csv of "
                                 "OPTML-Group/AdvUnlearn).", show_default=False)] = O.retain_prompts,
    retain_batch: Annotated[int, typer.Option("--retain-batch", min=1, help="advunlearn: retain prompts per "
                                                                          "iteration.")] = O.retain_batch,
    retain_loss_w: Annotated[float, typer.Option("--retain-loss-w", min=0.0, help="advunlearn: weight of the "
                                                                                 "retain loss.")] = O.retain_loss_w,
    warmup_iter: Annotated[int, typer.Option("--warmup-iter", min=0, help="advunlearn: first iterations without "
                                                                        "the attack.")] = O.warmup_iter,
    attack_step: Annotated[int, typer.Option("--attack-step", min=1, help="advunlearn: Adam steps of each "
                                                                        "attack.")] = O.attack_step,
    attack_lr: Annotated[float, typer.Option("--attack-lr", min=0.0, help="advunlearn: the attack's learning "
                                                                        "rate.")] = O.attack_lr,
    attack_init: Annotated[str, typer.Option("--attack-init", help="advunlearn: random (words drawn from the "
                                                                   "vocabulary) or latest (the last attack's "
                                                                   "vectors).")] = O.attack_init,
    attack_type: Annotated[str, typer.Option("--attack-type", help="advunlearn: where the adversarial vectors go: "
                                                                   "prefix_k, suffix_k, replace_k or add.")
                           ] = O.attack_type,
    attack_method: Annotated[str, typer.Option("--attack-method", help="advunlearn: pgd (Adam on the gradient) or "
                                                                       "fast_at (Adam on its sign).")] = O.attack_method,
    adv_prompt_num: Annotated[int, typer.Option("--adv-prompt-num", min=1, help="advunlearn: adversarial vectors "
                                                                              "(k).")] = O.adv_prompt_num,
    adv_prompt_update_step: Annotated[int, typer.Option(
        "--adv-prompt-update-step", min=1, help="advunlearn: iterations between attacks.")] = O.adv_prompt_update_step,
    checkpoint: Annotated[str | None, typer.Option("--checkpoint", help="Checkpoint file (default: "
                                                                        "OUTPUT.ckpt).", show_default=False)] = O.checkpoint,
    checkpoint_every: Annotated[int, typer.Option("--checkpoint-every", min=0, help="Iterations between "
                                                                                    "checkpoints (0: none).")] = O.checkpoint_every,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the checkpoint if there is one.")] = O.resume,
    quiet: Quiet = False,
) -> None:
    console.set_quiet(quiet)
    values = {k: v for k, v in locals().items() if k not in CLI_ONLY}
    values["preserve"] = tuple(preserve or ())
    values["anchor"] = tuple(anchor or ())
    from recare_cli.stages.erase import run_erase

    summary = run_erase(O(**values))
    losses = ", ".join(f"{k} {v:.4g}" for k, v in summary["losses"].items() if k != "k")
    console.info(f"erase: wrote {output} ({summary['tensors']} tensors)" + (f"; last step {losses}" if losses else ""))
