"""Does CCE's token bring the target back on the base toy model better than chance?

For each finished demo task folder (``recare demo``), the base model is sampled with the demo's seeds and
sampler on the target prompts with the target phrase replaced by (a) the token CCE learnt against the base
model (the demo's own samples, ``samples/base/attack``), (b) the word the token started from (its
``--initializer``: what the attack had before learning), (c) a word the toy world never uses, and (d) nothing
replaced: the plain target prompt (the demo's ``samples/base/target``). The world's detector judges each
sample; the script prints each condition's target rate with its 95% Wilson interval, and how many of the
token's samples show the target where the same seed's neutral-word sample does not (and the reverse):

    python -m experiments.cce_recovery recare-demo/nudity recare-demo/vangogh recare-demo/tench

The samples of (b) and (c) go to ``FOLDER/samples/base/recovery-*`` (reused when there).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

UNKNOWN_WORD = "something"  # not a word of the world's captions (checked below)


def rate(shown: Any) -> str:
    from recare_cli.core.scores import wilson_interval

    hits, n = int(sum(bool(x) for x in shown)), len(shown)
    ci = wilson_interval(hits, n)
    assert ci is not None
    return f"{hits / n:6.1%} ({ci.low:.0%}–{ci.high:.0%}, {hits}/{n})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path, help="demo task folders, e.g. recare-demo/nudity")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    import numpy as np
    import orjson
    import torch
    from PIL import Image

    from recare_cli.demo.settings import DemoSettings
    from recare_cli.demo.steps import sample_prompts
    from recare_cli.models.quiet import quiet_libraries
    from recare_cli.toyworld import detector
    from recare_cli.toyworld.assets import materialise
    from recare_cli.toyworld.tasks import TASKS, prompts, vocabulary

    torch.set_num_threads(args.threads)
    quiet_libraries()
    assert UNKNOWN_WORD not in vocabulary(), UNKNOWN_WORD
    cnn = detector.load()
    sd = str(materialise()[1])
    for folder in args.folders:
        results = orjson.loads((folder / "results.json").read_bytes())
        task = TASKS[results["task"]]
        known = set(DemoSettings.__dataclass_fields__)
        s = DemoSettings(**{k: v for k, v in results["settings"].items() if k in known})

        def judged(records: list[dict[str, Any]], task: Any = task) -> list[bool]:
            images = np.stack([np.asarray(Image.open(r["path"]).convert("RGB")) for r in records])
            return [bool(x) for x in detector.target_shown(task, detector.predict(cnn, images))]

        def read(path: Path) -> list[dict[str, Any]]:
            return [orjson.loads(line) for line in path.read_bytes().splitlines()]

        base = folder / "samples" / "base"
        conditions = {"CCE token (learnt against the base model)": read(base / "attack.jsonl")}
        for name, word in (("initializer", task.initializer), ("unknown word", UNKNOWN_WORD)):
            asked = [p.replace(task.target, word, 1) for p in prompts(task.target_scenes)]
            conditions[f"'{word}' in its place ({name})"] = sample_prompts(
                asked, base / f"recovery-{name.replace(' ', '-')}", base / f"recovery-{name.replace(' ', '-')}.jsonl",
                model=sd, weights=[], embeddings=[], n=s.eval_images, seed=0, s=s)
        conditions["the plain target prompt"] = read(base / "target.jsonl")
        verdicts = {}
        print(f"{task.name}: detector's target rate on the base model, {s.eval_images} samples per prompt "
              f"({len(task.target_scenes)} prompts), seeds 0+")
        for name, records in conditions.items():
            order = sorted(range(len(records)), key=lambda i: (records[i]["prompt_index"], records[i]["seed"]))
            shown = judged(records)
            verdicts[name] = [shown[i] for i in order]
            print(f"  {name:48s} {rate(verdicts[name])}   e.g. '{records[0]['prompt']}'")
        token, _, neutral, _ = verdicts.values()  # the token, the initializer, the unknown word, the plain prompt
        only_token = sum(t and not n for t, n in zip(token, neutral, strict=True))
        only_neutral = sum(n and not t for t, n in zip(token, neutral, strict=True))
        print(f"  same seed: target with the token only {only_token}, with the unknown word only {only_neutral}")
    print("python -m experiments.cce_recovery " + " ".join(str(f) for f in args.folders))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
