"""Sampler choice for a loaded diffusers pipeline: one table of names, one way to swap it."""

from __future__ import annotations

from typing import Any

from recare_cli.errors import check_choice

# Scheduler names accepted by --scheduler; "default" keeps the one the model folder ships.
SCHEDULERS: dict[str, str | None] = {
    "default": None,
    "ddim": "DDIMScheduler",
    "pndm": "PNDMScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler-a": "EulerAncestralDiscreteScheduler",
    "lms": "LMSDiscreteScheduler",
}

def set_scheduler(pipe: Any, name: str) -> None:
    check_choice("--scheduler", name, SCHEDULERS, "scheduler")
    cls_name = SCHEDULERS[name]
    if cls_name is None:
        return
    import diffusers

    # Latents are not bounded to [-1, 1]: DDIM/DDPM clip the predicted x0 there unless the config says
    # otherwise (SD's configs do; a folder whose config is silent would get a broken sampler)
    silent = "clip_sample" not in pipe.scheduler.config
    pipe.scheduler = getattr(diffusers, cls_name).from_config(pipe.scheduler.config,
                                                              **({"clip_sample": False} if silent else {}))
