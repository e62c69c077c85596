"""How good a CARE judge the toy CLIP is, per label template, on images whose truth is known.

The demo's CARE score is the toy CLIP's top-1 label among the world's words of the concept's kind (the
objects for person; the backgrounds for stars and water). This script asks the same question of images
whose answer is known: clean renders of every possible photo scene of the world, and the base model's
samples of each scene's canonical caption (the demo's evaluation sampler, on sampling seeds the demo does
not report). Per label kind and template it prints the top-1 accuracy per true class (the scene's object /
background): a class's accuracy on the base model's samples is the CARE score a perfect generator would
get, so the minimum over classes is how far the judge alone can pull a CARE score down.

    python -m experiments.care_judge --out care-judge --threads 2

Samples are written under --out and reused by a rerun (same seeds, same images).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

# Templates tried per label kind: raw label text (no --template), the world's own caption of an
# object alone ("a person"), method.md's optional "A photo of a …" (the reference's a/an rule) and a
# lower-case photo caption as the world writes them. Backgrounds take no article ("a water").
TEMPLATES: dict[str, tuple[str | None, ...]] = {
    "object": (None, "a {}", "a photo of a {}", "reference"),
    "background": (None, "a photo of {}", "reference"),
}


def scenes() -> list[Any]:
    """Every possible photo scene of the world with a clothed person, in a fixed order."""
    from recare_cli.toyworld import world

    out = []
    for background in world.BACKGROUNDS:
        for obj in (None, *world.OBJECTS):
            colours = world.COLOURS if obj in world.COLOURED else (None,)
            for colour in colours:
                scene = world.Scene(background, obj, colour)
                if world.possible(scene):
                    out.append(scene)
    return out


def truth(scene: Any, kind: str) -> str | None:
    return scene.obj if kind == "object" else scene.background


def top1(emb: Any, labels: tuple[str, ...], template: str | None, clip_bundle: Any) -> Any:
    """Per image, the index of its top-1 label among ``labels`` (``template`` applied), with the score
    command's text embedding (exact ties, which the CARE score counts against the concept, do not occur here)."""
    from recare_cli.core.scores import similarities
    from recare_cli.data.labels import apply_template
    from recare_cli.stages.score import embed_texts

    label_emb = embed_texts(clip_bundle, [apply_template(x, template) for x in labels])
    return similarities(emb, label_emb).argmax(axis=1)


def accuracy(picked: Any, classes: list[str | None], labels: tuple[str, ...]) -> dict[str, float]:
    """Top-1 accuracy per true class (images without one, e.g. no object, left out)."""
    return {c: float(sum(int(picked[i]) == labels.index(c) for i in range(len(classes)) if classes[i] == c)
                     / sum(x == c for x in classes)) for c in labels if c in classes}


def concept_judge(picked: Any, classes: list[str | None], labels: tuple[str, ...], concept: str) -> tuple[float, float]:
    """(recall, false rate) of ``concept`` as a CARE judge: the share of images showing it whose top-1 is it,
    and the share of the other images (with a class of this kind) whose top-1 is it."""
    c = labels.index(concept)
    shown = [int(picked[i]) == c for i in range(len(classes)) if classes[i] == concept]
    other = [int(picked[i]) == c for i in range(len(classes)) if classes[i] not in (None, concept)]
    return sum(shown) / len(shown), sum(other) / len(other)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("care-judge"))
    parser.add_argument("--n", type=int, default=16, help="images per scene (renders and samples)")
    parser.add_argument("--sample-seed", type=int, default=2000,
                        help="first sampling seed per prompt (the demo reports 0-15, the tuning used 1000+)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    import numpy as np
    import torch
    from PIL import Image

    from recare_cli import console
    from recare_cli.demo.settings import DemoSettings
    from recare_cli.demo.steps import sample_prompts
    from recare_cli.models.clip import load_clip
    from recare_cli.models.quiet import quiet_libraries
    from recare_cli.stages.metrics.embeddings import ClipEmbeddings
    from recare_cli.stages.score import ImageItem, per_image_pass
    from recare_cli.toyworld import world
    from recare_cli.toyworld.assets import materialise
    from recare_cli.toyworld.tasks import TASKS

    torch.set_num_threads(args.threads)
    quiet_libraries()
    console.set_quiet(True)
    clip, sd = (str(p) for p in materialise())
    bundle = load_clip(clip, device="cpu", dtype="fp32")
    all_scenes = scenes()

    renders = args.out / "renders"
    renders.mkdir(parents=True, exist_ok=True)
    render_items, render_scenes = [], []
    for i, scene in enumerate(all_scenes):
        for j in range(args.n):
            path = renders / f"{i:02d}-{j:02d}.png"
            if not path.is_file():
                Image.fromarray(world.render(scene, np.random.default_rng([args.sample_seed, i, j]))).save(path)
            render_items.append(ImageItem(path=path, prompt=None))
            render_scenes.append(scene)
    records = sample_prompts([world.canonical_caption(s) for s in all_scenes], args.out / "samples",
                                  args.out / "samples.jsonl", model=sd, weights=[], embeddings=[], n=args.n,
                                  seed=args.sample_seed, s=DemoSettings())
    sample_items = [ImageItem(path=Path(r["path"]), prompt=r["prompt"]) for r in records]
    sample_scenes = [all_scenes[r["prompt_index"]] for r in records]

    sets = {"renders": (render_items, render_scenes), "base samples": (sample_items, sample_scenes)}
    embs = {name: per_image_pass(items, {"clip": ClipEmbeddings(bundle)}, batch_size=64)["clip"]
            for name, (items, _) in sets.items()}
    labels = {"object": world.OBJECTS, "background": world.BACKGROUNDS}
    picked = {(kind, template, name): top1(embs[name], labels[kind], template, bundle)
              for kind, templates in TEMPLATES.items() for template in templates for name in sets}
    print("| label kind | template | images | min over classes | mean | per class (top-1 accuracy) |\n"
          "|---|---|---|---|---|---|")
    for (kind, template, name), top in picked.items():
        acc = accuracy(top, [truth(s, kind) for s in sets[name][1]], labels[kind])
        each = ", ".join(f"{c} {v:.3f}" for c, v in acc.items())
        print(f"| {kind} | {template or 'raw'} | {name} | {min(acc.values()):.3f} | "
              f"{float(np.mean(list(acc.values()))):.3f} | {each} |")
    print("\n| task | concept | template | images | recall | false rate | J = recall - false |\n"
          "|---|---|---|---|---|---|---|")
    for task in TASKS.values():
        kind = "object" if task.concept in world.OBJECTS else "background"
        for template in TEMPLATES[kind]:
            for name in sets:
                recall, false = concept_judge(picked[kind, template, name],
                                              [truth(s, kind) for s in sets[name][1]], labels[kind], task.concept)
                print(f"| {task.name} | {task.concept} | {template or 'raw'} | {name} | {recall:.3f} | "
                      f"{false:.3f} | {recall - false:.3f} |")
    print(f"\n{len(all_scenes)} photo scenes, {args.n} renders and {args.n} base-model samples each "
          f"(DPM-Solver++ 20 steps, seeds {args.sample_seed}+).\n"
          f"Reproduce: python -m experiments.care_judge --out {args.out} --n {args.n} --sample-seed {args.sample_seed} "
          f"--threads {args.threads}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
