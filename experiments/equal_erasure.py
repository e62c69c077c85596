"""The demo's baselines at equal erasure: each one's rate raised until it erases as much as ReCARE.

For each finished task folder of ``recare demo`` and each baseline row in it (ESD, STEREO, UCE, and the --with
rows), the baseline is erased again at its scaled rate times each step of a fixed ladder (×2, ×4, ×8, ×16; UCE:
its erase scale, the closed form's one strength knob), first erase seed only, until the detector's target rate on
the target prompts (the demo's samples and seeds) is at or below ReCARE's in that folder. The step reached (×1: the
demo's own row already erases as much), and the CARE score and unrelated CLIP score of the model there, are
printed as a markdown table and written to ``FOLDER/equal-erasure.json``. A baseline that never gets there is
reported at the ladder's last step, marked "not reached". The demo's files are reused; new ones go to
``FOLDER/equal-erasure/`` (a rerun reuses them).

    python -m experiments.equal_erasure recare-demo/nudity recare-demo/vangogh recare-demo/tench
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

LADDER = (2, 4, 8, 16)
BASELINES = ("esd", "stereo", "uce", "noretain", "age", "advunlearn")


def demo_settings(folder: Path) -> tuple[Any, dict[str, Any]]:
    """The DemoSettings a finished folder was run with (settings.json), and the record itself."""
    import orjson

    from recare_cli.demo.settings import DemoSettings

    record = orjson.loads((folder / "settings.json").read_bytes())
    return DemoSettings(**record["settings"]), record


def knob(method: str, task: Any, s: Any, boost: float) -> str:
    """The raised setting as the table shows it: the rate, or UCE's erase scale."""
    from recare_cli.demo.settings import scaled_recipe

    recipe = scaled_recipe(method, task, s, boost)
    return f"erase scale {recipe['erase_scale']:g}" if "erase_scale" in recipe else f"lr {recipe['lr']:.3g}"


def detected(records: list[dict[str, Any]], task: Any, judge: Any, detector: Any) -> float:
    from recare_cli.demo.judge import image_share, target_verdicts

    asked = [task.target_scenes[r["prompt_index"]] for r in records]
    _, by_detector = target_verdicts(records, task, asked, judge=judge, detector=detector)
    return image_share(by_detector, [r["prompt"] for r in records])[0]


def climb(folder: Path, task: Any, method: str, s: Any, bar: float, *, sd: str, clip: str, judge: Any,
          detector: Any, ladder: tuple[int, ...]) -> dict[str, Any]:
    """One baseline up the ladder: the step reached and the figures there (``measure_model``'s)."""
    from recare_cli.demo import steps
    from recare_cli.demo.judge import measure_model
    from recare_cli.demo.settings import KINDS
    from recare_cli.toyworld.tasks import prompts

    work = folder / "equal-erasure"
    work.mkdir(exist_ok=True)
    figures: dict[str, Any] = {}
    for boost in ladder:
        tag = f"{method}-x{boost}"
        weights = steps.erase(folder, task, method, steps.careset_path(folder), steps.invert_path(folder), sd, s,
                              s.seed, out=work / f"{tag}.safetensors", boost=boost)
        samples = work / "samples" / tag
        made = steps.sample_prompts(prompts(task.target_scenes), samples / "target", samples / "target.jsonl",
                                    model=sd, weights=[weights], embeddings=[], n=s.eval_images, seed=0, s=s)
        rate = detected(made, task, judge, detector)
        reached = rate <= bar
        if reached or boost == ladder[-1]:  # the other prompts only where the table needs them
            figures, _ = measure_model(task, samples, sd=sd, weights=[weights], clip=clip, judge=judge,
                                       detector=detector, images=dict.fromkeys(KINDS, s.eval_images), seed=0, s=s)
            assert figures["target_detected"] == rate
            return {"step": boost, "reached": reached, "knob": knob(method, task, s, boost), **figures}
    raise AssertionError("unreachable")


def run_folder(folder: Path, ladder: tuple[int, ...], *, clip: str, sd: str, judge: Any, detector: Any) -> dict:
    import orjson

    from recare_cli.demo.steps import write_json
    from recare_cli.toyworld.tasks import TASKS

    s, record = demo_settings(folder)
    task = TASKS[record["task"]]
    results = orjson.loads((folder / "results.json").read_bytes())["results"]
    first = {m: row["per_seed"][0] if "per_seed" in row else row for m, row in results.items()}
    bar = first["recare"]["target_detected"]
    out: dict[str, Any] = {"task": task.name, "bar": bar, "ladder": list(ladder), "rows": {}}
    for method in (m for m in BASELINES if m in first):
        if first[method]["target_detected"] <= bar:
            row = {"step": 1, "reached": True, "knob": knob(method, task, s, 1), **first[method]}
        else:
            row = climb(folder, task, method, s, bar, sd=sd, clip=clip, judge=judge, detector=detector,
                        ladder=ladder)
        out["rows"][method] = {k: row[k] for k in ("step", "reached", "knob", "target_detected", "care",
                                                   "clip_unrelated")}
    out["recare"] = {k: first["recare"][k] for k in ("target_detected", "care", "clip_unrelated")}
    write_json(folder / "equal-erasure.json", out)
    return out


def table(done: list[dict[str, Any]]) -> str:
    from recare_cli.demo.settings import LABELS

    lines = ["| task | model | rate step reached | setting there | target appears ↓, detector | CARE score ↑ | "
             "CLIP score ↑ (unrelated) |", "|---|---|---|---|---|---|---|"]
    for result in done:
        for method, row in result["rows"].items():
            step = f"×{row['step']}" + ("" if row["reached"] else " (not reached)")
            lines.append(f"| {result['task']} | {LABELS[method]} | {step} | {row['knob']} | "
                         f"{row['target_detected']:.1%} | {row['care']:.3f} | {row['clip_unrelated']:.3f} |")
        r = result["recare"]
        lines.append(f"| {result['task']} | ReCARE (the bar) | | | {r['target_detected']:.1%} | {r['care']:.3f} | "
                     f"{r['clip_unrelated']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="finished task folders of recare demo (OUT/TASK)")
    parser.add_argument("--ladder", default=",".join(map(str, LADDER)), help="rate multiples, in order")
    args = parser.parse_args(argv)
    from recare_cli.models.clip import load_clip
    from recare_cli.models.quiet import quiet_libraries
    from recare_cli.toyworld.assets import materialise
    from recare_cli.toyworld.detector import load as load_detector
    from recare_cli.toyworld.evaluate import Judge

    quiet_libraries()
    clip_dir, sd_dir = materialise()
    judge, detector = Judge(load_clip(str(clip_dir), device="cpu", dtype="fp32")), load_detector()
    ladder = tuple(int(x) for x in args.ladder.split(","))
    done = [run_folder(f, ladder, clip=str(clip_dir), sd=str(sd_dir), judge=judge, detector=detector)
            for f in args.folders]
    sys.stdout.write(table(done))


if __name__ == "__main__":
    main()
