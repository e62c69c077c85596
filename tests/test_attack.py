"""recare attack (CCE): the first optimizer step against a naive re-implementation of the authors' textual
inversion, the command end to end (its token replayed by sample), resume, and bad input."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open

from recare_cli.errors import EXIT_BAD_INPUT, InterruptedRunError
from tests.helpers import invoke


def _bundle(tiny_sd_dir: Path) -> Any:
    from recare_cli.models.sd import load_sd

    return load_sd(str(tiny_sd_dir), device="cpu", dtype="fp32")


def test_first_step_equals_the_references_accumulated_textual_inversion(tiny_sd_dir: Path,
                                                                        target_images: Path) -> None:
    """One optimizer step of batch 2 × 2 accumulated micro-batches: the learnt vector equals what the
    reference's loop computes from the same draws, written the reference's way: the text encoder's embedding
    table resized with the token's row set to the initializer, each micro-batch's ε-MSE divided by the
    accumulation and back-propagated, one AdamW step (lr, weight decay 0.01) over the whole table, every
    other row restored afterwards."""
    from recare_cli.core.diffusion import (
        InversionSettings,
        InversionTrainer,
        extend_tokenizer,
        latent_distributions,
        tokenize,
    )
    from recare_cli.stages.invert import OBJECT_TEMPLATES, initializer_vector, load_pixels

    bundle = _bundle(tiny_sd_dir)
    pipe = bundle.pipe
    pixels, _ = load_pixels(sorted(target_images.iterdir())[:3], strict=True, resolution=32, source="imgs")
    latents = latent_distributions(pipe.vae, pixels)
    tokenizer, first_id = extend_tokenizer(pipe.tokenizer, ["<x-cce>"])
    ids = tokenize(tokenizer, [t.format("<x-cce>") for t in OBJECT_TEMPLATES])
    init = initializer_vector(pipe, "person")
    lr, batch, accumulation = 0.05, 2, 2
    trainer = InversionTrainer(pipe.unet, pipe.text_encoder, first_id, init[:0], init, latents, ids,
                               pipe.scheduler.config,
                               InversionSettings(steps=1, lr=lr, precision="fp32", batch_size=batch,
                                                 accumulation=accumulation),
                               torch.Generator().manual_seed(7), flip_p=0.5)
    trainer.step()
    ours = trainer.vector()

    # the reference's way, replaying the same draws
    g = torch.Generator().manual_seed(7)
    text_encoder = copy.deepcopy(pipe.text_encoder)
    text_encoder.resize_token_embeddings(len(tokenizer))
    table = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        table[first_id] = init[0]
    original = table.detach().clone()
    text_encoder.requires_grad_(False)
    table.requires_grad_(True)
    optimizer = torch.optim.AdamW([table], lr=lr, weight_decay=1e-2)
    scheduler = trainer.noise_scheduler
    for _ in range(accumulation):
        picks = [(int(torch.randint(0, latents.shape[0], (1,), generator=g).item()),
                  int(torch.rand((1,), generator=g).item() < 0.5),
                  int(torch.randint(0, ids.shape[0], (1,), generator=g).item())) for _ in range(batch)]
        samples = []
        for index, flip, _ in picks:
            mean, std = latents[index, flip]
            samples.append(mean + std * torch.randn(mean.shape, generator=g))
        x0 = torch.stack(samples)
        noise = torch.stack([torch.randn(x0.shape[1:], generator=g) for _ in range(batch)])
        t = torch.randint(0, 1000, (batch,), generator=g)
        noisy = scheduler.add_noise(x0, noise, t)
        hidden = text_encoder(ids[[p[2] for p in picks]])[0]
        pred = pipe.unet(noisy, t, encoder_hidden_states=hidden).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise.float(), reduction="mean")
        (loss / accumulation).backward()
    optimizer.step()
    with torch.no_grad():
        keep = torch.ones(len(tokenizer), dtype=torch.bool)
        keep[first_id] = False
        table[keep] = original[keep]
    assert torch.allclose(ours[0], table[first_id].detach(), atol=1e-6, rtol=1e-5)
    assert not torch.allclose(ours[0], init[0])  # the step moved the token


@pytest.fixture(scope="module")
def erased(tiny_sd_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("attack") / "esd.safetensors"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        res = invoke(["erase", "--target", "nudity", "--method", "esd", "--model", str(tiny_sd_dir), "--device",
                      "cpu", "--iterations", "1", "--ddim-steps", "4", "--train-method", "xattn", "-o", str(out)])
    assert res.code == 0, res.stderr
    return out


def _args(images: Path, model: Path, out: Path, *extra: str) -> list[str]:
    return ["attack", str(images), "--target", "nudity", "--model", str(model), "--device", "cpu", "--steps", "2",
            "--batch-size", "1", "--accumulation", "2", "--num-images", "4", "-o", str(out), *extra]


def test_attack_writes_a_token_that_sample_replays(tiny_sd_dir: Path, target_images: Path, erased: Path,
                                                   tmp_path: Path) -> None:
    out, prompts = tmp_path / "cce.safetensors", tmp_path / "cce.csv"
    res = invoke(_args(target_images, tiny_sd_dir, out, "--weights", str(erased), "--prompts", str(prompts)))
    assert res.code == 0, res.stderr
    with safe_open(str(out), framework="pt") as fh:
        meta = dict(fh.metadata())
        assert list(fh.keys()) == ["<nudity-cce>"]
    assert meta["format"] == "recare.embeddings" and meta["attack"] == "cce"
    attacked = json.loads(meta["attacked_weights"])
    assert [w["path"] for w in attacked] == [str(erased)]
    hyper = json.loads(meta["hyperparameters"])
    assert (hyper["batch_size"], hyper["accumulation"], hyper["effective_lr"]) == (1, 2, pytest.approx(0.01))
    assert json.loads(meta["provenance"])["command"] == "attack"
    rows = list(csv.DictReader(prompts.open()))
    assert rows and all("<nudity-cce>" in r["prompt"] for r in rows)
    assert [int(r["evaluation_seed"]) for r in rows] == list(range(len(rows)))
    replay = invoke(["sample", str(prompts), "--out", str(tmp_path / "imgs"), "--model", str(tiny_sd_dir),
                     "--weights", str(erased), "--embeddings", str(out), "--steps", "1", "--device", "cpu"])
    assert replay.code == 0, replay.stderr
    records = [json.loads(line) for line in replay.stdout.splitlines()]
    assert len(records) == len(rows) and all("<nudity-cce>" in r["prompt"] for r in records)


def test_resume_gives_the_same_file(tiny_sd_dir: Path, target_images: Path, tmp_path: Path) -> None:
    from recare_cli.stages.attack import AttackOptions, run_attack

    out = tmp_path / "cce.safetensors"
    paths = sorted(target_images.iterdir())

    def opts(resume: bool) -> AttackOptions:
        return AttackOptions(images="imgs", target="nudity", output=str(out), steps=4, batch_size=1, accumulation=1,
                             num_images=3, model=str(tiny_sd_dir), device="cpu", checkpoint_every=1, resume=resume)

    run_attack(opts(False), paths)
    straight = out.read_bytes()
    out.unlink()

    def stop(i: int, _: float) -> None:
        if i == 2:
            raise KeyboardInterrupt

    with pytest.raises(InterruptedRunError, match="--resume"):
        run_attack(opts(False), paths, on_step=stop)
    assert Path(f"{out}.ckpt").exists() and not out.exists()
    run_attack(opts(True), paths)
    assert out.read_bytes() == straight and not Path(f"{out}.ckpt").exists()


def _one_line(res: Any, code: int, *needles: str) -> None:
    assert res.code == code, res.stderr
    lines = res.stderr.strip().splitlines()
    assert "error:" in lines[-1] and "Traceback" not in res.stderr
    for needle in needles:
        assert needle in lines[-1], lines[-1]


def test_bad_input(tiny_sd_dir: Path, target_images: Path, erased: Path, tmp_path: Path) -> None:
    from recare_cli.models.tiny import build_tiny_sd

    out = tmp_path / "cce.safetensors"
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line(invoke(_args(empty, tiny_sd_dir, out)), EXIT_BAD_INPUT, "no image files")
    # weights made for another base model
    other = build_tiny_sd(tmp_path / "other-sd", seed=1)
    _one_line(invoke(_args(target_images, other, out, "--weights", str(erased))), EXIT_BAD_INPUT, "base UNet")
    # an embeddings file where weights belong
    tokens = tmp_path / "adv.safetensors"
    ok = invoke(_args(target_images, tiny_sd_dir, tokens))
    assert ok.code == 0, ok.stderr
    _one_line(invoke(_args(target_images, tiny_sd_dir, out, "--weights", str(tokens))), EXIT_BAD_INPUT,
              "recare.embeddings", "recare sample --embeddings")
    assert not out.exists()
