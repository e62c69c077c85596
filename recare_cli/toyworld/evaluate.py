"""Measuring the toy world's models on held-out scenes.

* ``clip_accuracy``: zero-shot accuracy of the toy CLIP per attribute. For each held-out image and
  each attribute it has, the candidates are the canonical captions of the same scene with only
  that attribute changed ("a red car on grass" vs "a red car on sand", …; for style "a photo of
  …" vs "a van gogh painting of …" vs "a watercolor painting of …"); the prediction is the most
  similar caption. "No object" is not judged: no caption in the world states an absence. Images
  go through the CLIP folder's own image processor.
* ``sd_accuracy``: Stable Diffusion samples for the canonical captions of held-out scenes,
  each judged by the toy CLIP the same way: a sample shows an attribute when the CLIP picks the
  prompted value among the alternatives. ``all`` is the share of samples with every prompted
  attribute right.

Run ``recare toyworld evaluate --clip DIR --sd DIR``: JSON on stdout.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from recare_cli.toyworld import world
from recare_cli.toyworld.options import EvaluateOptions

HELD_OUT_SEED = 10_000  # held-out scenes: a seed no training run uses (training uses seed, seed + 1)


class Judge:
    """The toy CLIP as a classifier over canonical captions (text embeddings cached)."""

    def __init__(self, bundle: Any) -> None:
        self.bundle = bundle
        self._text: dict[str, np.ndarray] = {}

    def texts(self, texts: list[str]) -> np.ndarray:
        import torch

        missing = [t for t in dict.fromkeys(texts) if t not in self._text]
        if missing:
            b = self.bundle
            ids = b.tokenizer(missing, padding=True, return_tensors="pt")
            with torch.no_grad():
                out = b.model.get_text_features(input_ids=ids.input_ids.to(b.device),
                                                attention_mask=ids.attention_mask.to(b.device))
            feats = getattr(out, "pooler_output", out)  # transformers 5 returns an output object
            feats = torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy()
            self._text.update(zip(missing, feats, strict=True))
        return np.stack([self._text[t] for t in texts])

    def images(self, images: list[Any]) -> np.ndarray:
        import torch

        b = self.bundle
        out = []
        for i in range(0, len(images), 256):
            pixels = b.processor(images=images[i : i + 256], return_tensors="pt").pixel_values
            with torch.no_grad():
                feats = b.model.get_image_features(pixel_values=pixels.to(b.device, b.dtype))
            feats = getattr(feats, "pooler_output", feats)
            out.append(torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy())
        return np.concatenate(out)

    def pick(self, feature: np.ndarray, scene: world.Scene, attribute: str) -> str | None:
        """The value of ``attribute`` the CLIP picks for the image, among the captions of ``scene`` with
        only that attribute changed; None when there is nothing to tell apart."""
        options = world.alternatives(scene, attribute)
        if len(options) < 2:
            return None
        sims = self.texts([world.stated_caption(s, attribute) for _, s in options]) @ feature
        return options[int(np.argmax(sims))][0]

    def judge(self, image_features: np.ndarray, scenes: list[world.Scene]) -> dict[str, list[bool]]:
        """Per attribute: for each image, whether the CLIP picks the scene's value."""
        results: dict[str, list[bool]] = {}
        for feature, scene in zip(image_features, scenes, strict=True):
            for attribute, value in scene.attributes().items():
                if value == "none":
                    continue  # absence is never stated in a caption: nothing to judge
                picked = self.pick(feature, scene, attribute)
                if picked is not None:
                    results.setdefault(attribute, []).append(picked == value)
        return results


def _summary(results: dict[str, list[bool]]) -> dict[str, Any]:
    return {a: {"accuracy": round(float(np.mean(r)), 4), "n": len(r)} for a, r in sorted(results.items())}


def clip_accuracy(clip: str | Path, *, n: int, seed: int = HELD_OUT_SEED) -> dict[str, Any]:
    from PIL import Image

    from recare_cli.models.clip import load_clip

    judge = Judge(load_clip(str(clip), device="cpu", dtype="fp32"))
    data = world.make_dataset(n, seed)
    features = judge.images([Image.fromarray(im) for im in data.images])
    return {"held_out_seed": seed, "images": n, "attributes": _summary(judge.judge(features, data.scenes)),
            "bare_words": _summary(bare_words(judge, features, data.scenes))}


def bare_words(judge: Judge, features: np.ndarray, scenes: list[world.Scene]) -> dict[str, list[bool]]:
    """Zero-shot with single words as labels ("person" vs "tench" vs "boat" …; "water" vs "sand"
    …), as the CARE score asks a CLIP; every object and background is a candidate."""
    results: dict[str, list[bool]] = {}
    for attribute, values in (("object", world.OBJECTS), ("background", world.BACKGROUNDS)):
        sims = features @ judge.texts(list(values)).T
        for row, scene in zip(sims, scenes, strict=True):
            truth = scene.attributes()[attribute]
            if truth != "none":
                results.setdefault(attribute, []).append(values[int(np.argmax(row))] == truth)
    return results


def sd_accuracy(sd: str | Path, clip: str | Path, *, n: int, steps: int, guidance: float, scheduler: str,
                seed: int = HELD_OUT_SEED, batch: int = 32, grid: Path | None = None) -> dict[str, Any]:
    """Sample one image per held-out scene's canonical caption (seed ``seed + i``) and judge it;
    ``scheduler`` is a ``recare sample --scheduler`` name."""
    import torch

    from recare_cli.models.clip import load_clip
    from recare_cli.models.scheduler import set_scheduler
    from recare_cli.models.sd import load_sd

    pipe = load_sd(str(sd), device="cpu", dtype="fp32").pipe
    set_scheduler(pipe, scheduler)
    judge = Judge(load_clip(str(clip), device="cpu", dtype="fp32"))
    scenes = [world.item_caption(seed, i)[2] for i in range(n)]
    prompts = [world.canonical_caption(s) for s in scenes]
    started = time.perf_counter()
    images: list[Any] = []
    for i in range(0, n, batch):
        generators = [torch.Generator().manual_seed(seed + j) for j in range(i, min(n, i + batch))]
        images += pipe(prompts[i : i + batch], num_inference_steps=steps, guidance_scale=guidance,
                       generator=generators).images
    seconds = time.perf_counter() - started
    results: dict[str, list[bool]] = {}
    per_image = []
    for feature, scene in zip(judge.images(images), scenes, strict=True):
        verdicts = judge.judge(feature[None], [scene])
        per_image.append(all(ok for oks in verdicts.values() for ok in oks))
        for attribute, oks in verdicts.items():
            results.setdefault(attribute, []).extend(oks)
    if grid is not None:
        save_grid(images, grid)
    return {"held_out_seed": seed, "samples": n, "scheduler": type(pipe.scheduler).__name__, "steps": steps,
            "guidance": guidance, "seconds": round(seconds, 1), "attributes": _summary(results),
            "all_attributes": round(float(np.mean(per_image)), 4)}


def save_grid(images: list[Any], path: Path, columns: int = 8, scale: int = 3) -> None:
    from PIL import Image

    size = images[0].size[0]
    rows = (len(images) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * size, rows * size))
    for i, image in enumerate(images):
        sheet.paste(image, ((i % columns) * size, (i // columns) * size))
    sheet.resize((columns * size * scale, rows * size * scale), Image.Resampling.NEAREST).save(path)


def report(opts: EvaluateOptions) -> dict[str, Any]:
    """What ``recare toyworld evaluate`` prints: the CLIP's accuracy (unless ``no_clip``) and, with ``sd``, the
    samples' (judged by the CLIP: ``opts.clip``, or the shipped world's)."""
    if opts.threads:
        import torch

        torch.set_num_threads(opts.threads)
    from recare_cli.models.quiet import quiet_libraries

    quiet_libraries()
    clip = opts.clip
    if clip is None:
        from recare_cli.toyworld.assets import materialise

        clip, _ = materialise()
    out: dict[str, Any] = {} if opts.no_clip else {"clip": clip_accuracy(clip, n=opts.n_clip)}
    if opts.sd is not None:
        out["sd"] = sd_accuracy(opts.sd, clip, n=opts.n_sd, steps=opts.steps, guidance=opts.guidance,
                                grid=opts.grid, scheduler=opts.scheduler)
    return out
