"""Stage: ``recare erase --method uce``, the closed-form UCE edit (``core/uce.py``; docs/erase.md, "UCE").

No training loop: encode the target, its guide and the preserved concepts once, edit every
cross-attention key/value projection, write the edited tensors as ``recare.unet-weights``.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from recare_cli import console
from recare_cli.errors import BadInputError, UsageError

if TYPE_CHECKING:
    import torch

    from recare_cli.stages.erase import EraseOptions


def _same_concept(a: str, b: str) -> bool:
    """Equal as CLIP's tokenizer reads them (lower case, runs of white space as one)."""
    return " ".join(a.lower().split()) == " ".join(b.lower().split())


def _check_preserve(target: str, words: list[tuple[str, str]]) -> None:
    """``words``: (where it came from, word). Refuse empty words and the target itself."""
    for where, word in words:
        if not word:
            raise UsageError(f"{where}: an empty concept")
        if _same_concept(word, target):
            raise UsageError(f"{where}: '{word}' is the target; UCE cannot erase and preserve the same concept")


def validate_uce(opts: EraseOptions) -> None:
    """What can be checked before anything is read or loaded."""
    if not opts.lamb > 0:
        raise UsageError(f"--lamb: must be above 0 (got {opts.lamb})")
    if not opts.erase_scale > 0:
        raise UsageError(f"--erase-scale: must be above 0 (got {opts.erase_scale})")
    if not opts.preserve_scale >= 0:
        raise UsageError(f"--preserve-scale: must be 0 or more (got {opts.preserve_scale})")
    _check_preserve(opts.target.strip(), [("--preserve", w.strip()) for w in opts.preserve])


def preserve_concepts(opts: EraseOptions) -> list[str]:
    """``--preserve`` words, then ``--preserve-file``'s lines, in order (repeats count again, as the authors'
    loop counts them)."""
    from recare_cli.io.streams import display_name
    from recare_cli.io.wordlist import read_word_list

    words = [w.strip() for w in opts.preserve]
    if opts.preserve_file is not None:
        name = display_name(opts.preserve_file)
        listed = read_word_list(opts.preserve_file)
        _check_preserve(opts.target.strip(), [(f"--preserve-file {name}:{n}", w) for n, w in listed])
        words += [w for _, w in listed]
    return words


def concept_states(pipe: Any, concepts: list[str], device: Any) -> dict[str, torch.Tensor]:
    """Each distinct concept's text state (D,) at the authors' token (``core.uce.last_token_states``)."""
    from recare_cli.core.diffusion import encode_prompts
    from recare_cli.core.uce import last_token_states

    distinct = list(dict.fromkeys(concepts))
    hidden = encode_prompts(pipe.tokenizer, pipe.text_encoder, distinct, device=device)
    mask = pipe.tokenizer(distinct, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                          truncation=True, return_tensors="pt").attention_mask
    states = last_token_states(hidden, mask).detach().cpu()
    return dict(zip(distinct, states, strict=True))


def edited_weights(unet: Any, edit: Any) -> dict[str, torch.Tensor]:
    """``{parameter name: edited weight}`` for every projection UCE edits, in the UNet's order."""
    import torch

    from recare_cli.core.uce import edited_modules

    modules = dict(unet.named_modules())
    names = edited_modules(modules)
    if not names:
        raise BadInputError("the UNet has no cross-attention key/value projections (attn2.to_k, attn2.to_v) "
                            "for UCE to edit")
    out: dict[str, torch.Tensor] = {}
    for name in names:
        module = modules[name]
        if not isinstance(module, torch.nn.Linear) or module.bias is not None:
            raise BadInputError(f"'{name}' is not a bias-free linear projection; UCE's closed form needs one")
        out[f"{name}.weight"] = edit.apply(module.weight)
    return out


def fit_report(unet: Any, new: dict[str, torch.Tensor], target: torch.Tensor, guide: torch.Tensor,
               preserve: torch.Tensor) -> dict[str, float]:
    """The worst layer's gap between the target's new output and the guide's (1 = unmoved), and the worst
    relative move of a preserved concept's output."""
    from recare_cli.core.uce import relative_change, relative_gap

    state = unet.state_dict()
    gaps, moves = [], []
    for name, value in new.items():
        old = state[name].detach().cpu()
        value = value.detach().cpu()
        gaps.append(float(relative_gap(value, old, target[None], guide[None].double() @ old.double().T).max()))
        if preserve.shape[0]:
            moves.append(float(relative_change(value, old, preserve).max()))
    return {"target_gap": max(gaps), "preserve_moved": max(moves) if moves else 0.0}


def run_uce(opts: EraseOptions) -> dict[str, Any]:
    """Edit and write the output (``opts`` validated); returns a summary."""
    import torch

    from recare_cli.core.uce import uce_edit
    from recare_cli.dtypes import torch_dtype
    from recare_cli.io.provenance import provenance
    from recare_cli.models.sd import load_sd
    from recare_cli.models.weights import save_pipeline, save_unet_weights
    from recare_cli.stages.options import recorded

    start = time.perf_counter()
    preserve = preserve_concepts(opts)
    for given, name in ((opts.care, "--care"), (opts.adversarial, "--adversarial")):
        if given is not None:
            console.warn(f"--method uce does not use {name}; ignoring it")
    bundle = load_sd(opts.model, device=opts.device, dtype="fp32")
    identity = bundle.identity()
    pipe = bundle.pipe
    loaded = time.perf_counter()
    target, guide = opts.target.strip(), opts.guide.strip()
    states = concept_states(pipe, [target, guide, *preserve], bundle.device)
    dim = states[target].shape[0]
    kept = torch.stack([states[p] for p in preserve]) if preserve else torch.zeros(0, dim)
    edit = uce_edit(states[target][None], states[guide][None], kept, lamb=opts.lamb, erase_scale=opts.erase_scale,
                    preserve_scale=opts.preserve_scale)
    new = edited_weights(pipe.unet, edit)
    edited = time.perf_counter()
    fit = fit_report(pipe.unet, new, states[target], states[guide], kept)
    hyper = {"method": "uce", "guide": guide, "preserve": preserve, "erase_scale": opts.erase_scale,
             "preserve_scale": opts.preserve_scale, "lamb": opts.lamb}
    record = provenance("erase", recorded(opts), model=identity)
    save_unet_weights(opts.output, new, base_unet=identity["unet"], dtype=torch_dtype(opts.save_dtype),
                      base_model=identity["name"], base_text_encoder=identity["text_encoder"], method="uce",
                      target=target, hyperparameters=hyper, erase_set=json.dumps([target]), provenance=record)
    if opts.save_pipeline is not None:
        pipe.unet.load_state_dict(new, strict=False)
        save_pipeline(pipe, opts.save_pipeline)
    seconds = {"load": loaded - start, "edit": edited - loaded, "total": time.perf_counter() - start}
    n_params = sum(v.numel() for v in new.values())
    console.info(f"erase: uce edited {len(new)} cross-attention projections ({n_params:,} parameters) in "
                 f"{seconds['edit']:.2f} s (model loaded in {seconds['load']:.1f} s): '{target}' → "
                 f"{repr(guide) if guide else 'the empty prompt'} gap {fit['target_gap']:.3g} (1 = unmoved), "
                 + (f"{len(preserve)} preserved concept(s) moved ≤ {fit['preserve_moved']:.3g}" if preserve
                    else "no preserved concepts"))
    return {"losses": {}, "tensors": len(new), "parameters": n_params, "erase_set": [target], "fit": fit,
            "seconds": seconds}
