"""bench/demo_sweep.py: what each configuration string asks of ``erase``."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from recare_cli.stages.erase import EraseOptions

_spec = importlib.util.spec_from_file_location("demo_sweep", Path(__file__).parents[1] / "bench" / "demo_sweep.py")
assert _spec is not None and _spec.loader is not None
sweep = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sweep)


def _options(config: str) -> EraseOptions:
    opts: EraseOptions = sweep.erase_options(config, 43, target="a tench", source=Path("demo/tench"), sd="sd",
                                             ddim_steps=20, output=Path("w.safetensors"))
    opts.validate()
    return opts


def test_every_field_reaches_erase() -> None:
    opts = _options("recare:xattn:5e-5:100:3:stratified:linear:2:0:1.5")
    assert (opts.method, opts.train_method, opts.lr, opts.iterations) == ("recare", "xattn", 5e-5, 100)
    assert (opts.retain_weight, opts.timesteps, opts.lr_schedule, opts.xt_batch) == (3.0, "stratified", "linear", 2)
    assert (opts.num_adversarial, opts.guidance, opts.seed) == (0, 1.5, 43)
    assert opts.care == str(Path("demo/tench/care.json"))
    assert opts.adversarial == str(Path("demo/tench/adv.safetensors"))


def test_fields_left_out_take_erases_defaults_and_esd_takes_no_careset() -> None:
    opts = _options("esd:xattn:2e-4:100")
    defaults = EraseOptions(target="x")
    assert opts.care is None and opts.adversarial is None and opts.retain_weight == 1.0
    assert (opts.timesteps, opts.lr_schedule, opts.xt_batch) == (defaults.timesteps, defaults.lr_schedule,
                                                                 defaults.xt_batch)
    assert (opts.num_adversarial, opts.guidance) == (defaults.num_adversarial, defaults.guidance) == (2, 2.0)
