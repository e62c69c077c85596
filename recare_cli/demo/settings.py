"""What a demo run is asked: the command's options, the settings of every stage, and the names of its models."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

METHODS = ("base", "esd", "stereo", "recare")
KINDS = ("target", "benign", "unrelated")  # the prompts every model is sampled on
LABELS = {"base": "base model", "esd": "ESD", "stereo": "STEREO-style", "recare": "ReCARE"}


@dataclass(frozen=True)
class DemoSettings:
    mine_images: int = 16  # per target prompt, for mining and inversion
    eval_images: int = 16  # per prompt and model
    # The target images are made as a user makes them (the model's own sampler: PNDM, 50 steps, as SD v1.4
    # ships it). The evaluation samples use DPM-Solver++ at 20 steps: 97.7% of 128 held-out toy samples show
    # every prompted attribute against 96.1% for PNDM-50, in a third of the time (recare toyworld evaluate
    # --no-clip --scheduler dpm++ --steps 20 --n-sd 128; docs/toyworld.md). PNDM at 25 steps gives noise.
    mine_scheduler: str = "default"
    mine_steps: int = 50
    scheduler: str = "dpm++"
    steps: int = 20
    guidance: float = 7.5
    top_k: int = 6
    top_n: int = 40
    clusters: int = 4
    cluster_space: str = "embedding"  # recare cluster --space (see steps.careset)
    drop_extremes: int = 1
    alpha: float = 0.1
    invert_rounds: int = 1
    invert_erase_iterations: int = 40
    invert_erase_lr: float = 5e-4  # the erase half of invert: its own knob, as in the reference
    invert_steps: int = 150
    invert_lr: float = 5e-3
    # CCE (recare attack) against every model, on invert's images (the mining images) with seed ``seed``: the
    # authors' recipe (4 × 4 images a step, AdamW at 5e-3 × 16, flips) with its 5,000 steps scaled by the one
    # rule the demo applies to textual inversion, invert's 150 of the reference's 3,000 steps: 1/20 → 250
    # (docs/toyworld.md, "The paper's columns")
    attack_steps: int = 250
    attack_batch_size: int = 4
    attack_accumulation: int = 4
    attack_lr: float = 5e-3
    # The utility distance's reference: rendered ground-truth scenes of the unrelated prompts (the part COCO's
    # images play for SD), this many per prompt
    reference_images: int = 64
    # Cross-attention only, for all three methods: training every non-cross-attention weight (noxattn) of
    # the toy UNet at a rate that erased also wrecked unrelated prompts (docs/toyworld.md).
    erase_iterations: int = 100
    erase_lr: float | None = None  # None: each task's own rate (DemoTask.erase_lr)
    retain_weight: float | None = None  # None: each task's own ReCARE λ (DemoTask.retain_weight)
    ddim_steps: int = 20
    train_method: str = "xattn"
    seed: int = 42
    # Erasures per method, with seeds seed, seed + 1, …; the erasers' figures are their mean. One erase
    # seed moves a figure by up to 40 points (docs/toyworld.md), so one run is one draw.
    erase_seeds: int = 1


# A smoke test: every stage runs end to end, each on about the least that still exercises it (two sampling steps,
# one x_t step per erase iteration (ddim_steps 3), two iterations, two samples per prompt so that figures are means over
# images, two attack steps of one image, two reference images per prompt so that a covariance exists); its figures
# mean nothing.
QUICK = DemoSettings(mine_images=4, eval_images=2, mine_steps=2, steps=2, top_k=4, top_n=20, clusters=3,
                     invert_erase_iterations=1, invert_steps=2, erase_iterations=2, ddim_steps=3, attack_steps=2,
                     attack_batch_size=1, attack_accumulation=1, reference_images=2)


@dataclass(frozen=True)
class DemoOptions:
    """The options of ``recare demo``: where to write, which tasks, which settings."""

    out: Path = Path("recare-demo")
    task: str = "nudity"
    all_tasks: bool = False  # every task of the toy world, in its order
    quick: bool = False  # QUICK instead of the full settings
    erase_seeds: int = DemoSettings.erase_seeds

    def settings(self) -> DemoSettings:
        return replace(QUICK if self.quick else DemoSettings(), erase_seeds=self.erase_seeds)

    def tasks(self) -> tuple[str, ...]:
        from recare_cli.toyworld.tasks import TASKS

        return tuple(TASKS) if self.all_tasks else (self.task,)


def erase_lr(task: Any, s: DemoSettings) -> float:
    return float(task.erase_lr if s.erase_lr is None else s.erase_lr)


def retain_weight(task: Any, s: DemoSettings) -> float:
    return float(task.retain_weight if s.retain_weight is None else s.retain_weight)


def erase_seeds(s: DemoSettings) -> list[int]:
    return [s.seed + i for i in range(s.erase_seeds)]


def model_tag(method: str, seed: int, s: DemoSettings) -> str:
    """The name of one erased model's files: the first erase seed keeps the method's plain name."""
    return method if seed == s.seed else f"{method}-seed{seed}"
