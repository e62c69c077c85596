"""Erasure math (method.md §5) against hand-computed values, schedules, parameter selection."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recare_cli.core.guidance import (
    balanced_schedule,
    compositional_target,
    erase_loss,
    esd_recare_target,
    esd_step_choices,
    esd_target,
    lr_factor,
    mse,
    select_parameters,
    stratified_steps,
    training_timestep_index,
)


def test_esd_recare_target_hand_values() -> None:
    c = torch.tensor([[1.0, 2.0, 3.0]])
    u = torch.tensor([[0.5, 0.0, -1.0]])
    # g = 2: ε_c − (ε_c − ε_∅) = ε_∅
    assert torch.equal(esd_recare_target(c, u, 2.0), u)
    # g = 3: ε_c − 2(ε_c − ε_∅) = 2ε_∅ − ε_c = [0, -2, -5]
    assert torch.allclose(esd_recare_target(c, u, 3.0), torch.tensor([[0.0, -2.0, -5.0]]))
    # g = 1: no guidance, the concept itself
    assert torch.equal(esd_recare_target(c, u, 1.0), c)


def test_published_esd_target_hand_values() -> None:
    c = torch.tensor([[1.0, 2.0, 3.0]])
    u = torch.tensor([[0.5, 0.0, -1.0]])
    f = torch.tensor([[2.0, 2.0, 2.0]])
    # from = c, g = 2: ε_c − 2(ε_c − ε_∅) = 2ε_∅ − ε_c = [0, -2, -5] (the paper's η = 1), not ε_∅
    assert torch.allclose(esd_target(c, c, u, 2.0), torch.tensor([[0.0, -2.0, -5.0]]))
    assert not torch.allclose(esd_target(c, c, u, 2.0), u)
    # the ReCARE reference's step at g is the published one at g − 1
    assert torch.allclose(esd_target(c, c, u, 2.0), esd_recare_target(c, u, 3.0))
    # another concept mapped from: ε_from − g(ε_c − ε_∅) = [2, 2, 2] − 2·[0.5, 2, 4] = [1, -2, -6]
    assert torch.allclose(esd_target(f, c, u, 2.0), torch.tensor([[1.0, -2.0, -6.0]]))


def test_published_esd_step_choices_include_both_ends() -> None:
    """esd_sd.py draws random.randint(0, num_inference_steps - 1): 0 and the last step are both possible."""
    assert list(esd_step_choices(5)) == [0, 1, 2, 3, 4]
    steps = stratified_steps(5, 10, np.random.default_rng(0), esd_step_choices(5))
    assert sorted(steps) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]


def test_compositional_target_hand_values() -> None:
    u = torch.tensor([[1.0, 1.0]])
    e = torch.stack([torch.tensor([[3.0, 1.0]]), torch.tensor([[1.0, 5.0]])])  # diffs (2,0) and (0,4): mean (1,2)
    a = torch.tensor([[2.0, 0.0]])  # diff (1,-1)
    # s = 2: u + (s-1)(a-u) - (s+1) mean = (1,1) + (1,-1) - 3·(1,2) = (-1, -6)
    assert torch.allclose(compositional_target(u, e, a, 2.0), torch.tensor([[-1.0, -6.0]]))
    # s = 3: (1,1) + 2·(1,-1) - 4·(1,2) = (-1, -9)
    assert torch.allclose(compositional_target(u, e, a, 3.0), torch.tensor([[-1.0, -9.0]]))
    # no anchor: (1,1) - 3·(1,2) = (-2, -5)
    assert torch.allclose(compositional_target(u, e, None, 2.0), torch.tensor([[-2.0, -5.0]]))


def _reference_compositional(conds: list[torch.Tensor], uncond: torch.Tensor, scales: list[float]) -> torch.Tensor:
    """The reference's normalized_compositional_guidance at eta = 1, written out naively."""
    pos, neg, n_pos, n_neg = torch.zeros_like(uncond), torch.zeros_like(uncond), 0, 0
    for cond, s in zip(conds, scales, strict=True):
        diff = (cond - uncond).double()
        v1 = torch.nn.functional.normalize(cond.double(), dim=[-1, -2, -3])
        par = (diff * v1).sum(dim=[-1, -2, -3], keepdim=True) * v1
        update = ((diff - par) + 1.0 * par).to(uncond.dtype)
        if s > 0:
            pos, n_pos = pos + (s - 1) * update, n_pos + 1
        else:
            neg, n_neg = neg + (s - 1) * update, n_neg + 1
    return uncond + pos / max(n_pos, 1) + neg / max(n_neg, 1)


def test_compositional_target_matches_reference_pattern() -> None:
    g = torch.Generator().manual_seed(0)
    u = torch.randn(1, 4, 8, 8, generator=g)
    erase = [torch.randn(1, 4, 8, 8, generator=g) for _ in range(3)]
    anchor = torch.randn(1, 4, 8, 8, generator=g)
    ref = _reference_compositional([*erase, anchor], u, [-2.0, -2.0, -2.0, 2.0])
    ours = compositional_target(u, torch.stack(erase), anchor, 2.0)
    assert torch.allclose(ours, ref, atol=1e-5)


def test_losses_hand_values() -> None:
    pred = torch.tensor([[1.0, 2.0]])
    target = torch.tensor([[0.0, 0.0]])
    assert mse(pred, target).item() == pytest.approx(2.5)
    total, erase, retain = erase_loss(pred, target, torch.tensor([[1.0, 1.0]]), torch.tensor([[0.0, 1.0]]), 2.0)
    assert erase.item() == pytest.approx(2.5)
    assert retain is not None and retain.item() == pytest.approx(0.5)
    assert total.item() == pytest.approx(3.5)
    total, _, retain = erase_loss(pred, target)
    assert retain is None and total.item() == pytest.approx(2.5)


def test_loss_gradients_do_not_reach_targets() -> None:
    pred = torch.ones(1, 2, requires_grad=True)
    target = torch.zeros(1, 2, requires_grad=True)
    erase_loss(pred, target)[0].backward()
    assert target.grad is None and pred.grad is not None


@pytest.mark.parametrize(("n_items", "length"), [(3, 200), (7, 200), (5, 3), (1, 4)])
def test_balanced_schedule(n_items: int, length: int) -> None:
    items = [f"w{i}" for i in range(n_items)]
    sched = balanced_schedule(items, length, np.random.default_rng(42))
    assert len(sched) == length
    counts = [sched.count(w) for w in items]
    assert max(counts) - min(counts) <= 1  # balanced
    assert sched == balanced_schedule(items, length, np.random.default_rng(42))  # seeded


@pytest.mark.parametrize(("sample_steps", "length"), [(20, 100), (20, 18), (50, 200), (8, 5)])
def test_stratified_steps_cover_every_depth_equally(sample_steps: int, length: int) -> None:
    steps = stratified_steps(sample_steps, length, np.random.default_rng(7))
    choices = list(range(1, sample_steps - 1))
    assert len(steps) == length and set(steps) <= set(choices)
    counts = [steps.count(k) for k in choices]
    base = length // len(choices)
    # each depth base times, the remainder on distinct depths
    assert all(c in (base, base + 1) for c in counts) and counts.count(base + 1) == length % len(choices)
    assert steps == stratified_steps(sample_steps, length, np.random.default_rng(7))  # seeded
    assert steps != sorted(steps) or length < 3  # shuffled, not in depth order


def test_lr_factor_hand_values() -> None:
    assert [lr_factor("constant", i, 4) for i in range(4)] == [1.0, 1.0, 1.0, 1.0]
    assert [lr_factor("linear", i, 4) for i in range(4)] == [1.0, 0.75, 0.5, 0.25]
    # cos(0) = 1, cos(pi/2) = 0: half a cosine from 1 through 0.5 at the middle
    assert [round(lr_factor("cosine", i, 4), 12) for i in (0, 2)] == [1.0, 0.5]
    assert lr_factor("cosine", 1, 4) == pytest.approx((1 + 2 ** -0.5) / 2)
    with pytest.raises(ValueError, match="unknown lr schedule"):
        lr_factor("step", 0, 4)


def test_training_timestep_index_keeps_the_references_float_truncation() -> None:
    """The reference computes int(k / ddim_steps · 1000) in floats: where the quotient lands just below an
    integer it truncates one lower than exact integer arithmetic would. The engine keeps that quirk, so its
    timesteps are the reference's for every k."""
    assert training_timestep_index(29, 100, 100) == 28  # 29 / 100 * 100 = 28.999999999999996
    assert 29 * 100 // 100 == 29  # what an integer formula would give instead
    assert [training_timestep_index(k) for k in (1, 7, 48)] == [20, 140, 960]


def test_select_parameters_per_method(tiny_sd_dir) -> None:  # type: ignore[no-untyped-def]
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tiny_sd_dir / "unet")
    names = {m: set(select_parameters(unet, m)) for m in ("noxattn", "xattn", "selfattn", "full")}
    assert names["xattn"] and all("attn2" in n for n in names["xattn"])
    assert names["selfattn"] and all("attn1" in n for n in names["selfattn"])
    assert not any("attn2" in n for n in names["noxattn"])
    assert names["noxattn"] | names["xattn"] == names["full"]
    assert not names["noxattn"] & names["xattn"]
    # only Linear / Conv2d: norms and their scales stay frozen
    assert not any("norm" in n.split(".")[-2] for n in names["full"])
    assert "conv_in.weight" in names["noxattn"] and "time_embedding.linear_1.bias" in names["noxattn"]
    with pytest.raises(ValueError, match="unknown train method"):
        select_parameters(unet, "attn")
