"""Which CARE-set the demo's mining gives under two levers, judged against the world's captions.

For each task of the toy world it runs the demo's mine -> cluster -> refine on the demo's own target images
(a finished ``recare demo`` folder) under a grid of settings and prints, per task and setting, the CARE-set,
whether it holds the task's benign concept, and its spurious words: CARE words that never occur in the
world's captions of the target (items 0..5999 of world seed 0), i.e. words the toy CLIP merely finds similar
to the images. No model is erased; the only sampling is the reference set.

The levers (docs/toyworld.md, "Mining against a reference"):

* target: the direction the residuals are measured from (mine --target): the erase phrase ("a naked
  person", which holds the benign word "person") or the concept's own word, as the paper mines with
  "nudity", "Van Gogh", "tench" (world.TASKS: "naked", "van gogh", "tench");
* reference: none, or the base model's samples of every photo scene of the world without the task's target
  (mine --reference; 4 images per scene, the demo's mining sampler, seeds 20000+).

    python -m experiments.careset_grid --from DEMO --out careset-grid --threads 2

DEMO is a ``recare demo --all`` folder; the reference samples are written under --out and reused by a rerun.
"""

from __future__ import annotations

import argparse
import itertools
import re
from pathlib import Path
from typing import Any

from experiments.care_judge import scenes

REFERENCE_SEED = 20_000
TARGETS = ("phrase", "word")
REFERENCES = ("none", "photos")
CLUSTERS = (4, 6)


def shows_target(scene: Any, task: Any) -> bool:
    """Whether a world scene shows ``task``'s target (its attribute has the target's value)."""
    return bool(scene.attributes().get(task.attribute) == task.value)


def target_words(task: Any, n_items: int = 6000, seed: int = 0) -> set[str]:
    """The content words of the world's captions of items showing ``task``'s target."""
    from recare_cli.toyworld import world
    from recare_cli.toyworld.tasks import STOP_WORDS

    words: set[str] = set()
    for i in range(n_items):
        text, _, scene = world.item_caption(seed, i)
        if shows_target(scene, task):
            words.update(re.findall(r"[a-z]+", text))
    return words - STOP_WORDS


def careset(task: Any, images: list[Path], reference: list[Path] | None, mine_target: str, clusters: int,
            clip: str, words: list[str], vocab: Path) -> list[str]:
    """The demo's mine -> cluster -> refine (demo.DemoSettings' values) with the lever settings given."""
    from recare_cli.demo.settings import DemoSettings
    from recare_cli.stages.cluster import ClusterOptions, run_clustering
    from recare_cli.stages.mine import MineOptions, run_mining
    from recare_cli.stages.refine import RefineOptions, run_refinement

    s = DemoSettings()
    mining = MineOptions(images=task.name, target=mine_target, top_k=s.top_k, top_n=s.top_n, vocab=str(vocab),
                         reference="reference" if reference is not None else None, strict=True, clip=clip,
                         device="cpu", dtype="fp32", no_cache=True)
    stream = run_mining(mining, images, reference)
    run_clustering(stream, ClusterOptions(clusters=clusters, drop_extremes=s.drop_extremes, seed=s.seed,
                                          space=s.cluster_space))
    return list(run_refinement(stream, RefineOptions(alpha=s.alpha, property=task.prop)).words)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="demo", type=Path, required=True, help="a recare demo --all folder")
    parser.add_argument("--out", type=Path, default=Path("careset-grid"))
    parser.add_argument("--n", type=int, default=4, help="reference images per scene")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    import orjson
    import torch

    from recare_cli import console
    from recare_cli.demo.settings import DemoSettings
    from recare_cli.demo.steps import sample_prompts
    from recare_cli.models.quiet import quiet_libraries
    from recare_cli.toyworld import world
    from recare_cli.toyworld.assets import materialise
    from recare_cli.toyworld.tasks import TASKS, vocabulary

    torch.set_num_threads(args.threads)
    quiet_libraries()
    console.set_quiet(True)
    clip, sd = (str(p) for p in materialise())
    all_scenes = scenes()
    records = sample_prompts([world.canonical_caption(s) for s in all_scenes], args.out / "reference",
                                  args.out / "reference.jsonl", model=sd, weights=[], embeddings=[], n=args.n,
                                  seed=REFERENCE_SEED, s=DemoSettings(), for_mining=True)

    print("| task | target | reference | clusters | CARE-set | concept | spurious |\n|---|---|---|---|---|---|---|")
    totals: dict[tuple[str, str, int], list[int]] = {}
    for task in TASKS.values():
        folder = args.demo / task.name
        images = [Path(orjson.loads(line)["path"]) for line in
                  (folder / "target-images.jsonl").read_text().splitlines() if line.strip()]
        reference = [Path(r["path"]) for r in records if not shows_target(all_scenes[r["prompt_index"]], task)]
        allowed = target_words(task)
        vocab = vocabulary(task)  # the demo's mining vocabulary, once per task
        word = world.TASKS[task.name].target
        for mine_target, ref, clusters in itertools.product(TARGETS, REFERENCES, CLUSTERS):
            words = careset(task, images, reference if ref == "photos" else None,
                            task.target if mine_target == "phrase" else word, clusters, clip, vocab,
                            folder / "vocab.txt")
            spurious = [w for w in words if w not in allowed]
            has = task.concept in words
            tally = totals.setdefault((mine_target, ref, clusters), [0, 0])
            tally[0] += int(has)
            tally[1] += len(spurious)
            shown = task.target if mine_target == "phrase" else word
            print(f"| {task.name} | {shown} | {ref} ({len(reference)})" if ref == "photos" else
                  f"| {task.name} | {shown} | none", end="")
            print(f" | {clusters} | {', '.join(words) or '(empty)'} | {'yes' if has else 'no'} | "
                  f"{len(spurious)}{': ' + ', '.join(spurious) if spurious else ''} |")
    print("\n| target | reference | clusters | tasks holding their concept | spurious words (all tasks) |\n"
          "|---|---|---|---|---|")
    for (mine_target, ref, clusters), (holding, n_spurious) in totals.items():
        print(f"| {mine_target} | {ref} | {clusters} | {holding}/{len(TASKS)} | {n_spurious} |")
    print(f"\nreproduce: python -m experiments.careset_grid --from {args.demo} --out {args.out} "
          f"--threads {args.threads}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
