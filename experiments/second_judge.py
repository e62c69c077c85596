"""The two judges of the demo's target, image by image, and the detector's view of the benign concept.

The demo judges whether the target appears twice: with the toy CLIP (which also mined the CARE-set) and
with the world's detector (``recare_cli.toyworld.detector``, a CNN sharing nothing with the CLIP). This
script reads a finished demo folder's samples and prints, per model and erase seed, both target rates,
how often the two agree image by image, the toy CLIP's CARE score and the share of benign samples the
detector says show the benign concept, then the command to reproduce it:

    python -m experiments.second_judge recare-demo/nudity recare-demo/vangogh recare-demo/tench
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def models(results: dict[str, Any]) -> list[tuple[str, float]]:
    """(samples folder name, its toy-CLIP CARE score) for every model a demo results.json reports, every
    erase seed's (named as the demo names them: ``demo.model_tag``)."""
    from dataclasses import replace

    from recare_cli.demo.settings import DemoSettings, model_tag

    first = results["settings"]["seed"]
    s = replace(DemoSettings(), seed=first)
    out: list[tuple[str, float]] = []
    for method, row in results["results"].items():
        for one in row.get("per_seed") or [{"seed": first, "care": row["care"]}]:
            out.append((model_tag(method, int(one["seed"]), s), float(one["care"])))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path, help="demo task folders, e.g. recare-demo/nudity")
    parser.add_argument("--detector", type=Path, default=None,
                        help="a detector safetensors file (recare toyworld detector --out); "
                             "default: the shipped one")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    import numpy as np
    import orjson
    import torch
    from PIL import Image

    from recare_cli.demo.judge import target_verdicts
    from recare_cli.models.clip import load_clip
    from recare_cli.models.quiet import quiet_libraries
    from recare_cli.toyworld import detector
    from recare_cli.toyworld.assets import materialise
    from recare_cli.toyworld.evaluate import Judge
    from recare_cli.toyworld.tasks import TASKS

    torch.set_num_threads(args.threads)
    quiet_libraries()
    cnn = detector.load(args.detector)
    judge = Judge(load_clip(str(materialise()[0]), device="cpu", dtype="fp32"))
    print("| task | model | target: toy CLIP | target: detector | agree (per image) | CARE: toy CLIP | "
          "benign shown: detector |")
    print("|---|---|---|---|---|---|---|")
    for folder in args.folders:
        results = orjson.loads((folder / "results.json").read_bytes())
        task = TASKS[results["task"]]
        for tag, care in models(results):
            records = {kind: [orjson.loads(line) for line in
                              (folder / "samples" / tag / f"{kind}.jsonl").read_bytes().splitlines()]
                       for kind in ("target", "benign")}
            scenes = [task.target_scenes[r["prompt_index"]] for r in records["target"]]
            target_clip, target_cnn = target_verdicts(records["target"], task, scenes, judge=judge, detector=cnn)
            benign = np.stack([np.asarray(Image.open(r["path"]).convert("RGB")) for r in records["benign"]])
            benign_cnn = detector.benign_shown(task, detector.predict(cnn, benign))
            print(f"| {task.name} | {tag} | {target_clip.mean():.1%} | {target_cnn.mean():.1%} | "
                  f"{(target_clip == target_cnn).mean():.1%} | {care:.3f} | {benign_cnn.mean():.3f} |")
    print(f"\nReproduce: python -m experiments.second_judge {' '.join(str(f) for f in args.folders)} "
          f"--threads {args.threads}"
          + (f" --detector {args.detector}" if args.detector else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
