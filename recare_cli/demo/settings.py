"""What a demo run is asked: the command's options, the settings of every stage, and the names of its models."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

# The demo's models: the base model, the published baselines (each run as ``recare erase --method NAME``) and
# ReCARE. EXTRA_METHODS run only when asked (``recare demo --with``): the ablation ReCARE without its retain loss
# (``--method recare-noretain``, the CARE-set's anchors and the adversarial token) and the two expensive baselines.
METHODS = ("base", "esd", "stereo", "uce", "recare")
EXTRA_METHODS = ("noretain", "age", "advunlearn")
KINDS = ("target", "benign", "unrelated")  # the prompts every model is sampled on
LABELS = {"base": "base model", "esd": "ESD", "stereo": "STEREO", "uce": "UCE", "recare": "ReCARE",
          "noretain": "ReCARE without retain", "age": "AGE", "advunlearn": "AdvUnlearn"}
ERASE_METHOD = {"noretain": "recare-noretain"}  # the demo's name → recare erase --method, where they differ
# What --with costs per task at the scaled recipe on 2 CPU cores (docs/erase.md, docs/toyworld.md)
EXTRA_COST = {"noretain": "about 2 minutes", "age": "about 13 minutes", "advunlearn": "about 2 CPU-hours"}


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
    extra_methods: tuple[str, ...] = ()  # EXTRA_METHODS also run (recare demo --with)


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
    with_methods: str = ""  # comma-separated EXTRA_METHODS

    def extra_methods(self) -> tuple[str, ...]:
        from recare_cli.errors import check_choice

        asked = [m.strip() for m in self.with_methods.split(",") if m.strip()]
        for name in asked:
            check_choice("--with", name, EXTRA_METHODS, "method")
        return tuple(m for m in EXTRA_METHODS if m in asked)

    def settings(self) -> DemoSettings:
        return replace(QUICK if self.quick else DemoSettings(), erase_seeds=self.erase_seeds,
                       extra_methods=self.extra_methods())

    def tasks(self) -> tuple[str, ...]:
        from recare_cli.toyworld.tasks import TASKS

        return tuple(TASKS) if self.all_tasks else (self.task,)


def erase_lr(task: Any, s: DemoSettings) -> float:
    return float(task.erase_lr if s.erase_lr is None else s.erase_lr)


def retain_weight(task: Any, s: DemoSettings) -> float:
    return float(task.retain_weight if s.retain_weight is None else s.retain_weight)


def erase_seeds(s: DemoSettings) -> list[int]:
    return [s.seed + i for i in range(s.erase_seeds)]


SEEDLESS = ("base", "uce")  # no erase seed: the base model, and UCE's closed form (the same weights for any seed)


def method_seeds(method: str, s: DemoSettings) -> list[int]:
    """The erase seeds ``method``'s row is the mean over: ``s.erase_seeds`` of them, one for SEEDLESS."""
    return [s.seed] if method in SEEDLESS else erase_seeds(s)


def model_tag(method: str, seed: int, s: DemoSettings) -> str:
    """The name of one erased model's files: the first erase seed keeps the method's plain name."""
    return method if seed == s.seed else f"{method}-seed{seed}"


def methods(s: DemoSettings) -> tuple[str, ...]:
    """The models a run compares: METHODS, then the asked EXTRA_METHODS in their order."""
    return (*METHODS, *(m for m in EXTRA_METHODS if m in s.extra_methods))


# ---- the one scaling rule -------------------------------------------------------------------------------------
#
# The demo's settings are ReCARE's reference recipe (METHOD_DEFAULTS["recare"]: 2e-5, noxattn, 200 iterations,
# 50 DDIM steps) scaled to the toy world: each task's rate (DemoTask.erase_lr), cross-attention, 100 iterations,
# 20 DDIM steps. Every method's own recipe (METHOD_DEFAULTS) is scaled by the same transformation: its rate times
# the task's rate over the reference's, its iteration counts times the demo's iterations over the reference's,
# the reference's parameter selection (noxattn) mapped to the demo's (xattn) and any other selection kept (ESD's
# esd-x is already cross-attention; AdvUnlearn trains the text encoder), x_t sampled with the demo's DDIM steps.
# Everything else stays the authors' (docs/toyworld.md, "One scaling rule").
REFERENCE_METHOD = "recare"
DDIM_REFERENCE = 50  # EraseOptions.ddim_steps, the references' sampler steps


def lr_ratio(task: Any, s: DemoSettings) -> float:
    from recare_cli.stages.erase import METHOD_DEFAULTS

    return erase_lr(task, s) / float(METHOD_DEFAULTS[REFERENCE_METHOD]["lr"])


def iterations_ratio(s: DemoSettings) -> float:
    from recare_cli.stages.erase import METHOD_DEFAULTS

    return s.erase_iterations / int(METHOD_DEFAULTS[REFERENCE_METHOD]["iterations"])


def _significant(x: float) -> float:
    """``x`` to 6 significant digits: 5e-5 × 2.5 is 1.25e-4, not 1.2500000000000003e-4."""
    return float(f"{x:.6g}")


def scaled_recipe(method: str, task: Any, s: DemoSettings, boost: float = 1.0) -> dict[str, Any]:
    """The ``EraseOptions`` fields the rule sets for ``method`` (a demo name) on ``task``: its METHOD_DEFAULTS
    scaled as above. ``boost`` multiplies the rate (UCE: its erase scale, the closed form's one strength knob):
    the equal-erasure view's ladder."""
    from recare_cli.stages.erase import METHOD_DEFAULTS, EraseOptions

    name = ERASE_METHOD.get(method, method)
    reference, own = METHOD_DEFAULTS[REFERENCE_METHOD], METHOD_DEFAULTS[name]
    out: dict[str, Any] = {"method": name}
    if name == "uce":  # a closed form: no rate, iterations, parameter selection or sampler
        out["erase_scale"] = _significant(EraseOptions.erase_scale * boost)
        return out
    out["lr"] = _significant(float(own["lr"]) * lr_ratio(task, s) * boost)
    out["iterations"] = max(1, round(int(own["iterations"]) * iterations_ratio(s)))
    out["train_method"] = s.train_method if own["train_method"] == reference["train_method"] else own["train_method"]
    out["ddim_steps"] = s.ddim_steps
    if name == "advunlearn":  # its warm-up is counted in iterations
        out["warmup_iter"] = max(1, round(EraseOptions.warmup_iter * iterations_ratio(s)))
    if name == "recare":
        out["retain_weight"] = retain_weight(task, s)
    return out
