"""bench/bench_erase.py: both sides of the erase benchmark compute the same iteration, and the bench refuses to
time them when they do not."""

from __future__ import annotations

import pytest

from bench import bench_erase


def test_reference_and_recare_compute_the_same_first_loss(one_torch_thread: None) -> None:
    """The reference side's DDIM sampler must not clip x0 where recare's engine does not: with SD v1.4's scheduler
    config both draw the same x_t, so the first losses agree to fp32 summation order."""
    from diffusers import DDIMScheduler

    model = bench_erase.build("tiny")
    reference = bench_erase.erase_reference(model, 1).step()  # trains deep copies: the model is left as built
    ours = bench_erase.erase_ours(bench_erase.build("tiny"), 1).step()
    assert ours == pytest.approx(reference, rel=bench_erase.LOSS_RTOL, abs=0)
    assert reference > 0
    assert DDIMScheduler.from_config(model["scheduler"].config).config.clip_sample is False


def test_differing_first_losses_stop_the_bench(capsys: pytest.CaptureFixture[str]) -> None:
    bench_erase.check_same_loss("tiny erase k=1", {"reference": 0.0030, "ours": 0.0030 * (1 + 1e-6)})
    assert "agree" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stopped:
        bench_erase.check_same_loss("tiny erase k=1", {"reference": 0.0069, "ours": 0.0030, "ours-gc": 0.0069})
    message = str(stopped.value.code)
    assert "tiny erase k=1" in message and "0.0069" in message and "ours 0.003" in message
    assert "ours-gc" not in message  # only the sides that differ are named
