"""The offline demo: the CARE-set pipeline on tiny models built here and images drawn here.

Until a trained toy world ships, the models are randomly initialised: the demo proves the
pipeline runs end to end offline, not that its words mean anything.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from recare_cli import console
from recare_cli.io.atomic import atomic_write_bytes
from recare_cli.io.jsonl import dumps_json

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 210, 40)}


def draw_images(folder: Path, n: int, *, seed: int, size: int = 64) -> list[Path]:
    """Deterministic procedural images: a coloured shape on a noisy background."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        shape = SHAPES[i % len(SHAPES)]
        colour = list(COLOURS.values())[(i // len(SHAPES)) % len(COLOURS)]
        background = rng.integers(0, 80, size=(size, size, 3), dtype=np.uint8)
        image = Image.fromarray(background, "RGB")
        draw = ImageDraw.Draw(image)
        lo, hi = int(size * 0.2), int(size * 0.8)
        box = (lo, lo, hi, hi)
        if shape == "circle":
            draw.ellipse(box, fill=colour)
        elif shape == "square":
            draw.rectangle(box, fill=colour)
        else:
            draw.polygon([(size // 2, lo), (hi, hi), (lo, hi)], fill=colour)
        path = folder / f"img_{i:04d}.png"
        image.save(path)
        paths.append(path)
    return paths


def run_demo(out: Path, *, target: str, n_images: int, seed: int) -> dict[str, Path]:
    from recare_cli.io.careset import CareSet
    from recare_cli.models.quiet import quiet_libraries
    from recare_cli.models.tiny import build_tiny_clip
    from recare_cli.stages.cluster import run_clustering
    from recare_cli.stages.mine import run_mining
    from recare_cli.stages.refine import run_refinement

    quiet_libraries()
    console.warn("the demo uses tiny UNTRAINED models built on the spot: the pipeline is real, "
                 "the words it finds are noise")
    out.mkdir(parents=True, exist_ok=True)
    clip_dir = out / "models" / "tiny-clip"
    if not (clip_dir / "config.json").is_file():
        console.info(f"building a tiny CLIP with the real 49,408-entry vocabulary in {clip_dir}")
        build_tiny_clip(clip_dir, seed=seed)
    paths = draw_images(out / "images", n_images, seed=seed)
    stream = run_mining(paths=paths, target=target, top_k=50, top_n=100, words=None,
                        vocab_source="clip-whole-words", strict=False, clip=str(clip_dir),
                        device="cpu", dtype="fp32", batch_size=64, text_batch_size=1024,
                        cache_dir=out / "cache", use_cache=True,
                        params={"images": str(out / "images"), "target": target, "demo": True})
    files = {"candidates": out / "candidates.jsonl", "clustered": out / "clustered.jsonl",
             "care": out / "care.json"}
    _write_stream(stream, files["candidates"])
    run_clustering(stream, n_clusters=6, drop_extremes=1, seed=seed, perplexity=None,
                   params={"clusters": 6, "drop_extremes": 1, "seed": seed, "demo": True})
    _write_stream(stream, files["clustered"])
    careset: CareSet = run_refinement(stream, alpha=0.01, min_cluster_size=2, prop="object",
                                      params={"alpha": 0.01, "min_cluster_size": 2, "demo": True})
    atomic_write_bytes(files["care"], dumps_json(careset.to_recare()))
    console.info(f"CARE-set ({len(careset.words)} words, UNTRAINED models): "
                 + ", ".join(careset.words[:20]) + (" …" if len(careset.words) > 20 else ""))
    return files


def _write_stream(stream: object, path: Path) -> None:
    import io

    buf = io.BytesIO()
    stream.write(buf)  # type: ignore[attr-defined]
    atomic_write_bytes(path, buf.getvalue())
