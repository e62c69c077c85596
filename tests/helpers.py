"""Test helpers: run the CLI in-process with separate stdout/stderr, or as a real subprocess."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Result:
    code: int
    stdout: bytes
    stderr: str

    @property
    def text(self) -> str:
        return self.stdout.decode("utf-8")


class _Stream(io.TextIOWrapper):
    def isatty(self) -> bool:  # CLI tests run as if piped
        return False


def invoke(args: list[str], stdin: bytes = b"") -> Result:
    """Run ``recare ARGS`` in this process through the real entry point (exit-code mapping included)."""
    from recare_cli.cli.app import run

    out_buf, err_buf = io.BytesIO(), io.BytesIO()
    saved = sys.stdin, sys.stdout, sys.stderr
    streams = (_Stream(io.BytesIO(stdin), encoding="utf-8"),
               _Stream(out_buf, encoding="utf-8", write_through=True),
               _Stream(err_buf, encoding="utf-8", write_through=True))
    sys.stdin, sys.stdout, sys.stderr = streams
    try:
        code = run(args)
    finally:
        sys.stdin, sys.stdout, sys.stderr = saved
        for stream in streams:
            stream.flush()
            stream.detach()  # keep the buffers open after the wrappers are collected
    return Result(code, out_buf.getvalue(), err_buf.getvalue().decode("utf-8"))


def recare_exe() -> str:
    exe = Path(sys.executable).with_name("recare")
    return str(exe) if exe.exists() else "recare"


def shell(command: str, cwd: Path, env: dict[str, str] | None = None,
          timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run a real bash pipeline with this venv's ``recare`` first on PATH."""
    full_env = dict(os.environ)
    full_env["PATH"] = f"{Path(recare_exe()).parent}{os.pathsep}{full_env.get('PATH', '')}"
    full_env.update(env or {})
    return subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def sample_with_and_without(weights: Path, model: Path, folder: Path, prompt: str) -> tuple[dict, Path, Path]:
    """Sample ``prompt`` once with ``weights`` applied to ``model`` and once without (2 steps, 32 px); return the
    erased run's first manifest record and the two image files, after checking both runs succeeded."""
    import json

    prompts = folder / "p.txt"
    prompts.write_text(f"{prompt}\n")
    fast = ["--model", str(model), "--steps", "2", "--height", "32", "--width", "32", "--device", "cpu"]
    erased = invoke(["sample", str(prompts), "--out", str(folder / "erased"), *fast, "--weights", str(weights)])
    base = invoke(["sample", str(prompts), "--out", str(folder / "base"), *fast])
    assert erased.code == 0 and base.code == 0, erased.stderr + base.stderr
    record = json.loads(erased.stdout.decode().splitlines()[0])
    image = Path(record["path"]).name
    return record, folder / "erased" / image, folder / "base" / image


def check_resume_gives_same_bytes(opts: Callable[[bool], Any], stop_at: int,
                                  between: Callable[[Path], None] | None = None) -> None:
    """Run ``run_erase(opts(False))`` straight through; run it again interrupted after step ``stop_at`` (the
    checkpoint is kept, no output is written; ``between(checkpoint)`` then runs), resume with ``opts(True)`` and
    check the output has the straight run's bytes and the checkpoint is gone."""
    import pytest

    from recare_cli.errors import InterruptedRunError
    from recare_cli.stages.erase import run_erase

    out = Path(opts(False).output)
    run_erase(opts(False))
    straight = out.read_bytes()
    out.unlink()

    def interrupt(i: int, _: dict[str, float]) -> None:
        if i == stop_at:
            raise KeyboardInterrupt

    with pytest.raises(InterruptedRunError):
        run_erase(opts(False), on_step=interrupt)
    ckpt = Path(f"{out}.ckpt")
    assert ckpt.exists() and not out.exists()
    if between is not None:
        between(ckpt)
    run_erase(opts(True))
    assert out.read_bytes() == straight
    assert not ckpt.exists()


def provenance_model(path: Path) -> dict[str, Any]:
    """The ``model`` entry of a recare safetensors file's provenance (fingerprints, architecture)."""
    from recare_cli.models.weights import decode_metadata, read_metadata

    return dict(decode_metadata(read_metadata(str(path)))["provenance"]["models"]["model"])


def every_module_lora_tensors(unet: Any, seed: int = 4) -> dict[str, Any]:
    """LoRA tensors (peft names, rank 2, 0.1·N(0, 1), B not zero) for every Linear and Conv2d module of ``unet``."""
    import torch

    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, module in unet.named_modules():
        if isinstance(module, torch.nn.Linear):
            a_shape, b_shape = (2, module.in_features), (module.out_features, 2)
        elif isinstance(module, torch.nn.Conv2d):
            a_shape, b_shape = (2, module.in_channels, *module.kernel_size), (module.out_channels, 2, 1, 1)
        else:
            continue
        tensors[f"{name}.lora_A.weight"] = 0.1 * torch.randn(a_shape, generator=g)
        tensors[f"{name}.lora_B.weight"] = 0.1 * torch.randn(b_shape, generator=g)
    return tensors


def spy_on_learn(trainer: Any, monkeypatch: Any) -> dict[str, Any]:
    """Record what ``trainer.step`` hands its ``_learn`` (k, x_t, t, the target, the retain target) into the returned
    dict, and let the step go on unchanged."""
    seen: dict[str, Any] = {}
    learn = trainer._learn

    def spy(i: int, k: int, x_t: Any, t: Any, emb: Any, target: Any, retain_target: Any = None) -> dict[str, float]:
        seen.update(k=k, x_t=x_t, t=t, target=target, retain=retain_target)
        return dict(learn(i, k, x_t, t, emb, target, retain_target))

    monkeypatch.setattr(trainer, "_learn", spy)
    return seen
