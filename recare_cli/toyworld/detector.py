"""The toy world's target detector: a small CNN that plays the part of the paper's detectors.

The paper judges whether the target survives with models that share nothing with the CLIP used to
mine (NudeNet for nudity, an ImageNet classifier for objects, a style classifier for styles). The demo
mines and scores the CARE-set with the toy CLIP, so it needs its own independent detector: this CNN,
trained from scratch on the world's renders (seed 7, not the CLIP's), half of them passed through the
shipped VAE (encode, decode) so that it has seen the blur every generated sample carries. Five heads
read a 32 px image: background, object, colour, style, clothing.

Its weights ship beside the world's (``detector.safetensors``, fp16, in the manifest with its
held-out accuracy). Retrain and ship with ``recare toyworld detector --ship``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from recare_cli.toyworld import world
from recare_cli.toyworld.assets import DETECTOR_FILE as FILE
from recare_cli.toyworld.options import DetectorOptions

HEADS: dict[str, tuple[str, ...]] = {
    "background": world.BACKGROUNDS,
    "object": ("none", *world.OBJECTS),
    "colour": ("none", *world.COLOURS),
    "style": world.STYLES,
    "clothing": ("none", *world.CLOTHING),
}


def labels_of(scene: world.Scene) -> list[int]:
    """The head indices of a scene's attributes ("none" where the scene has no such attribute)."""
    attrs = scene.attributes()
    return [values.index(attrs.get(head, "none")) for head, values in HEADS.items()]


def build(seed: int) -> Any:
    import torch
    from torch import nn

    torch.manual_seed(seed)

    def block(c_in: int, c_out: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(),
                             nn.Conv2d(c_out, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(),
                             nn.MaxPool2d(2))

    body = nn.Sequential(block(3, 32), block(32, 64), block(64, 96), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return nn.ModuleDict({"body": body, "head": nn.Linear(96, sum(len(v) for v in HEADS.values()))})


def logits(model: Any, x: Any) -> list[Any]:
    out = model["head"](model["body"](x))
    return list(out.split([len(v) for v in HEADS.values()], dim=1))


def through_vae(vae: Any, x: Any, batch: int = 256) -> Any:
    """Images in [-1, 1] encoded and decoded by ``vae`` (the latent mean), as a generated sample is blurred."""
    import torch

    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            out.append(vae.decode(vae.encode(x[i:i + batch]).latent_dist.mean).sample.clamp(-1, 1))
    return torch.cat(out)


def predict(model: Any, images: Any) -> np.ndarray:
    """Head indices (n, 5) for uint8 images (n, 32, 32, 3) or a float tensor (n, 3, 32, 32) in [-1, 1]."""
    import torch

    from recare_cli.toyworld.train import pixels_for_vae

    x = pixels_for_vae(images) if isinstance(images, np.ndarray) else images
    with torch.no_grad():
        outs = [torch.cat([o.argmax(1, keepdim=True) for o in logits(model, x[i:i + 512])], 1)
                for i in range(0, len(x), 512)]
    return np.asarray(torch.cat(outs).numpy())


def judged(predicted: np.ndarray, head: str, value: str) -> np.ndarray:
    return np.asarray(predicted[:, list(HEADS).index(head)] == HEADS[head].index(value))


def target_shown(task: Any, predicted: np.ndarray) -> np.ndarray:
    """Per image, the task's target attribute judged to have its value (``DemoTask.attribute``/``value``);
    clothing is an attribute of a person only, so a naked judgement also needs the person."""
    shown = judged(predicted, task.attribute, task.value)
    return shown & judged(predicted, "object", "person") if task.attribute == "clothing" else shown


def benign_shown(task: Any, predicted: np.ndarray) -> np.ndarray:
    """Per image, the benign concept (``DemoTask.concept``) judged present, on the head whose values hold it."""
    head = next(h for h, values in HEADS.items() if task.concept in values)
    return judged(predicted, head, task.concept)


def accuracy(model: Any, vae: Any, n: int = 2000, seed: int = 10_007) -> dict[str, dict[str, float]]:
    """Per head, the share of ``n`` held-out scenes judged right, clean and through ``vae``."""
    from recare_cli.toyworld.train import pixels_for_vae

    test = world.make_dataset(n, seed=seed)
    truth = np.array([labels_of(s) for s in test.scenes])
    clean = pixels_for_vae(test.images)
    out = {}
    for name, x in (("clean", clean), ("vae", through_vae(vae, clean))):
        predicted = predict(model, x)
        out[name] = {head: round(float((predicted[:, h] == truth[:, h]).mean()), 4) for h, head in enumerate(HEADS)}
    return out


def train(vae: Any, *, n: int = DetectorOptions.train, epochs: int = DetectorOptions.epochs,
          seed: int = DetectorOptions.seed) -> tuple[Any, dict[str, Any]]:
    """Train the detector on ``n`` world scenes (seed 7), half of them through ``vae``; deterministic for a
    thread count. Returns the model (eval mode) and a report: settings, seconds, held-out accuracy."""
    import torch
    import torch.nn.functional as F

    from recare_cli.toyworld.train import pixels_for_vae

    started = time.perf_counter()
    data = world.make_dataset(n, seed=7)
    x = pixels_for_vae(data.images)
    half = len(x) // 2
    x = torch.cat([x[:half], through_vae(vae, x[half:])])
    y = torch.tensor([labels_of(s) for s in data.scenes])
    model = build(seed)
    batch = min(128, len(x))
    steps = epochs * (len(x) // batch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for i in range(0, len(x) - batch + 1, batch):
            rows = order[i:i + batch]
            flip = torch.rand(len(rows), generator=generator) < 0.5
            xb = torch.where(flip.view(-1, 1, 1, 1), x[rows].flip(-1), x[rows])
            loss = sum(F.cross_entropy(out, y[rows, h]) for h, out in enumerate(logits(model, xb)))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[union-attr]
            optimizer.step()
            schedule.step()
    model.eval()
    report = {"settings": {"train": n, "epochs": epochs, "seed": seed}, "threads": torch.get_num_threads(),
              "seconds": round(time.perf_counter() - started, 1)}
    return model, report


def save(model: Any, path: Path, report: dict[str, Any]) -> None:
    """fp16 weights with the report in the safetensors metadata, written atomically."""
    from safetensors.torch import save

    from recare_cli.io.atomic import atomic_write_bytes
    from recare_cli.toyworld.assets import fp16_state

    atomic_write_bytes(path, save(fp16_state(model), metadata={"report": json.dumps(report, sort_keys=True)}))


def as_shipped(model: Any) -> Any:
    """A copy of ``model`` with its weights rounded to fp16 as ``save`` stores them (fp32, eval mode)."""
    from recare_cli.toyworld.assets import fp16_state, fp32_state

    copy = build(0)
    copy.load_state_dict(fp32_state(fp16_state(model)))
    return copy.eval()


def load(path: Path | None = None) -> Any:
    """The detector (fp32, eval mode) from ``path``, default the shipped one (checked against the manifest)."""
    from recare_cli.toyworld.assets import data_dir, load_fp32, read_manifest, verify_file

    if path is None:
        path = data_dir() / FILE
        expected = read_manifest().get("files", {}).get(FILE)
        if expected is None or not path.is_file():
            from recare_cli.errors import ModelUnavailableError

            raise ModelUnavailableError(f"no shipped toy-world detector ({path}); train one with: "
                                        "recare toyworld detector --ship")
        verify_file(path.parent, FILE, expected)
    model = build(0)
    model.load_state_dict(load_fp32(path))
    return model.eval()


def ship(model: Any, report: dict[str, Any], dest: Path | None = None) -> Path:
    """Write the detector into the package data (or ``dest``) and record its digest and report in the manifest."""
    from recare_cli.io.digest import sha256_file
    from recare_cli.toyworld.assets import data_dir, read_manifest, write_manifest

    folder = dest or data_dir()
    manifest = read_manifest(folder)
    save(model, folder / FILE, report)
    manifest["files"][FILE] = sha256_file(folder / FILE)
    manifest.setdefault("metrics", {})["detector"] = report
    write_manifest(folder, manifest)
    return folder / FILE


def train_and_save(opts: DetectorOptions) -> tuple[Path, dict[str, Any]]:
    """Train the detector on the shipped world's VAE, measure it on 2,000 held-out scenes, and ship it into the
    package data (``opts.ship``) or write it to ``opts.out``. Returns where it went and its report."""
    import torch
    from diffusers import AutoencoderKL

    from recare_cli.models.quiet import quiet_libraries
    from recare_cli.toyworld.assets import materialise

    torch.set_num_threads(opts.threads)
    quiet_libraries()
    vae = AutoencoderKL.from_pretrained(materialise()[1] / "vae").eval()
    model, report = train(vae, n=opts.train, epochs=opts.epochs, seed=opts.seed)
    # the held-out accuracy of the weights as shipped (fp16, read back as fp32)
    report["held_out"] = {"seed": 10_007, "scenes": 2000, **accuracy(as_shipped(model), vae)}
    if opts.ship:
        return ship(model, report), report
    assert opts.out is not None
    save(model, opts.out, report)
    return opts.out, report
