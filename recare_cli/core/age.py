"""AGE, Adaptive Guided Erasure (Bui et al., ICLR 2025): the math of its target search and losses.

AGE maps the erased concept not to a fixed target ("") but to a concept of a dictionary, chosen during
training: a Gumbel-softmax over learned weights ``π`` mixes the text states of the dictionary's concepts
nearest the target, the UNet is trained ESD-style towards that mixture while preserving it, and ``π`` is
moved to the concept the current UNet disturbs most (a min-max game). Written from the authors' code,
``train_age.py`` and ``gen_embedding_matrix.py`` of tuananhbui89/Adaptive-Guided-Erasure (docs/erase.md,
"AGE"). Pure functions on tensors and modules: no paths, no printing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from recare_cli.core.guidance import esd_target, mse

if TYPE_CHECKING:
    import torch

# The authors' --train_method names that select by parameter name (train_age.py); their xlayer and selflayer
# name ldm block indices and are left out.
AGE_TRAIN_METHODS = ("noxattn", "xattn", "selfattn", "xattn_matching", "full", "notime")
_SPECIAL_FREE = set("abcdefghijklmnopqrstuvwxyz</>")
_OUTPUT_LAYERS = ("conv_norm_out.", "conv_out.")  # ldm's ``out.0`` and ``out.2``


def is_special(word: str) -> bool:
    """The authors' ``detect_special_tokens``: a character outside a–z and ``<``, ``/``, ``>`` (after
    lower-casing): digits, spaces, hyphens, apostrophes."""
    return any(ch not in _SPECIAL_FREE for ch in word.lower())


def _age_selected(name: str, train_method: str) -> bool:
    """The authors' filters (over every parameter of the ldm UNet, norms and biases included), on diffusers'
    names: ldm's ``out.`` is ``conv_norm_out``/``conv_out``, its ``time_embed`` is ``time_embedding``."""
    output = name.startswith(_OUTPUT_LAYERS)
    time = "time_embedding" in name
    if train_method == "noxattn":
        return not (output or "attn2" in name or time)
    if train_method == "selfattn":
        return "attn1" in name
    if train_method == "xattn":
        return "attn2" in name
    if train_method == "xattn_matching":
        return "attn2" in name and ("to_q" in name or "to_k" in name or "to_v" in name)
    if train_method == "full":
        return True
    if train_method == "notime":
        return not (output or time)
    raise ValueError(f"unknown AGE train method '{train_method}' (choose {', '.join(AGE_TRAIN_METHODS)})")


def age_parameters(unet: torch.nn.Module, train_method: str) -> list[str]:
    """Names of the UNet parameters AGE's ``train_method`` trains, in ``named_parameters`` order.

    Unlike recare's own selection (Linear and Conv2d modules only), the authors filter every parameter by
    name: ``noxattn`` trains norm layers and biases too, and leaves out the time embedding and the output
    layers; ``full`` is every parameter; ``notime`` all but the time embedding and the output layers."""
    return [name for name, _ in unet.named_parameters() if _age_selected(name, train_method)]


def nearest(similarities: torch.Tensor, k: int) -> list[int]:
    """Indices of the ``k`` largest similarities, largest first; ties in input order (the authors sort with
    ``torch.sort(descending=True)``, whose order among ties is unspecified)."""
    import torch

    order = torch.sort(similarities, descending=True, stable=True).indices
    return [int(i) for i in order[:k]]


def kmeans_representatives(similarities: Sequence[float], num_centers: int, seed: int = 0) -> list[int]:
    """The authors' ``learn_k_means_from_input_embedding``: all indices when ``num_centers ≤ 0`` or there are
    no more similarities than centres; else k-means (scikit-learn, ``random_state`` 0) on the similarity
    values themselves (one dimension) and, per centre in the order k-means returns them, the first index
    whose similarity is nearest the centre, each index once."""
    n = len(similarities)
    if num_centers <= 0 or n <= num_centers:
        return list(range(n))
    from sklearn.cluster import KMeans

    values = np.asarray(similarities, dtype=np.float64)
    centers = KMeans(n_clusters=num_centers, random_state=seed, n_init="auto").fit(values.reshape(-1, 1))
    chosen: dict[int, None] = {}
    for center in centers.cluster_centers_[:, 0]:
        chosen.setdefault(int(np.argmin(np.abs(values - center))), None)  # argmin: the first of equals
    return list(chosen)


def gumbel_softmax(logits: torch.Tensor, uniform: torch.Tensor, temperature: float, hard: int, topk: int,
                   eps: float = 1e-10) -> torch.Tensor:
    """The authors' Gumbel-softmax, with the uniform draw ``uniform`` (their ``torch.rand_like(logits)``) given.

    ``hard = 1``: straight-through one-hot at the arg-max (forward one-hot, gradient of the soft sample);
    ``hard = 0``: the soft sample kept on its ``topk`` largest entries and renormalised."""
    import torch

    gumbel = -torch.log(-torch.log(uniform + eps) + eps)
    y = torch.softmax((logits + gumbel) / temperature, dim=-1)
    if hard == 1:
        y_hard = torch.zeros_like(logits).scatter_(-1, torch.argmax(y, dim=-1, keepdim=True), 1.0)
        return (y_hard - y).detach() + y
    top = torch.topk(y, min(topk, y.shape[-1]), dim=-1).values
    y = y * (y >= top[..., -1:]).float()
    return y / y.sum(dim=-1, keepdim=True)


def mixture(weights: torch.Tensor, matrix: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """The adaptive target's text states: ``weights`` (1, n) times the flattened concept states ``matrix``
    (n, L·D), as (1, L, D)."""
    return (weights @ matrix).reshape(1, *shape)


def timestep_bounds(t_enc: int, ddim_steps: int, train_steps: int = 1000) -> tuple[int, int]:
    """The half-open range the training timestep is drawn from for DDIM index ``t_enc`` (the authors':
    ``round(t_enc / ddim_steps · 1000)`` to ``round((t_enc + 1) / ddim_steps · 1000)``)."""
    return round(t_enc / ddim_steps * train_steps), round((t_enc + 1) / ddim_steps * train_steps)


def sampler_steps(t_enc: int, ddim_steps: int) -> int:
    """How many DDIM steps the authors' sampler runs for ``till_T = t_enc``: it leaves out the schedule's
    noisiest step (``timesteps[:t_start]`` with ``t_start = -1``) and stops after the step of index
    ``t_enc − 1``, so ``ddim_steps − t_enc`` steps, ``ddim_steps − 1`` for ``t_enc`` 0 and 1."""
    return ddim_steps - max(t_enc, 1)


def predicted_x0(x_t: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """``(x_t − √(1 − ᾱ)·ε) / √ᾱ``: the authors compare predictions in x0 space (their "DDIM inversion")."""
    import torch

    return (x_t - torch.sqrt(1 - alpha_bar) * eps) / torch.sqrt(alpha_bar)


def unet_loss(x_e: torch.Tensor, eps_e: torch.Tensor, eps_e_orig: torch.Tensor, eps_0_orig: torch.Tensor,
              x_c: torch.Tensor, eps_c: torch.Tensor, eps_c_orig: torch.Tensor, alpha_bar: torch.Tensor,
              negative_guidance: float, lamda: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The UNet step's loss; returns (total, erase, preserve).

    ``x_e`` is sampled with the erased concept, ``x_c`` with the adaptive target concept; ``eps_e`` and
    ``eps_c`` are the trained UNet's predictions for them (concept, target), ``eps_*_orig`` the frozen UNet's
    (``eps_0_orig``: the target concept's on ``x_e``). In x0 space: erase
    ``MSE(x0(ε_e), x0(ε*_0) − g·(x0(ε*_e) − x0(ε*_0)))`` (ESD's target with the adaptive concept in the
    place of ∅), preserve ``MSE(x0(ε_c), x0(ε*_c))``, total ``erase + λ·preserve``. Each equals its ε-space
    MSE times ``(1 − ᾱ)/ᾱ``."""
    x0_0 = predicted_x0(x_e, eps_0_orig, alpha_bar)
    target = esd_target(x0_0, predicted_x0(x_e, eps_e_orig, alpha_bar), x0_0, negative_guidance)
    erase = mse(predicted_x0(x_e, eps_e, alpha_bar), target.detach())
    preserve = mse(predicted_x0(x_c, eps_c, alpha_bar), predicted_x0(x_c, eps_c_orig, alpha_bar).detach())
    return erase + lamda * preserve, erase, preserve


def search_loss(x_c: torch.Tensor, eps_c: torch.Tensor, eps_c_orig: torch.Tensor, alpha_bar: torch.Tensor,
                lamda: float) -> torch.Tensor:
    """The part of the weights' step loss that depends on ``π``: ``−λ·MSE(x0(ε_c), x0(ε*_c))`` (minimised, so
    the target concept moves to the one the trained UNet preserves worst). The authors' loss also subtracts
    ``MSE(x0(ε_e), x0(ε*_0))``, which has no gradient with respect to ``π`` (ε*_0 is computed without one)."""
    return -lamda * mse(predicted_x0(x_c, eps_c, alpha_bar), predicted_x0(x_c, eps_c_orig, alpha_bar).detach())


def concept_similarities(tokenizer: Any, text_encoder: Any, target: torch.Tensor, words: Sequence[str], *,
                         device: torch.device, batch_size: int = 64) -> torch.Tensor:
    """``−‖states(word) − states(target)‖₂`` for every word (the authors' ``sim='l2'``): the distance between the
    whole (77, D) last hidden states, flattened, of the word and of the target (``target``, (1, 77, D))."""
    import torch
    import torch.nn.functional as F

    from recare_cli.core.diffusion import encode_prompts

    out = []
    flat = target.reshape(1, -1)
    with torch.no_grad():
        for start in range(0, len(words), batch_size):
            states = encode_prompts(tokenizer, text_encoder, list(words[start:start + batch_size]), device=device)
            out.append(-F.pairwise_distance(flat, states.reshape(states.shape[0], -1), p=2))
    return torch.cat(out).cpu()
