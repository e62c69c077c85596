"""What the demo reports: the markdown table, the bars ReCARE is held to, and the unrelated prompt each eraser
hurt most."""

from __future__ import annotations

from typing import Any

from recare_cli.demo.run import TaskResult
from recare_cli.demo.settings import LABELS

TIME_NOTE = ("time: seconds this run spent on each method's own stages (the erasure; for STEREO also the adversarial "
             "tokens, for ReCARE also those and the CARE-set; not the attack, which is evaluation); "
             "'reused' where a stage's file came from an earlier run in this folder")
PAPER_NOTE = ("the paper's columns: CCE-ASR, the share of samples of the target prompts with CCE's token (learnt "
              "against each model) that the detector judges to show the target; CLIP-FD of the unrelated prompts' "
              "samples against rendered scenes of them (toy CLIP); RATIO and radar.png as recare report computes "
              "them (Defense = 1 - CCE-ASR, CLIP and CLIP-FD relative to the base model, CARE)")


def format_table(results: list[TaskResult]) -> str:
    """A markdown table: one row per task and method."""
    from recare_cli.toyworld.tasks import TASKS

    def figure(row: dict[str, Any], key: str, percent: bool) -> str:
        main = f"{row[key]:.1%}" if percent else f"{row[key]:.3f}"
        bound = "{:.0%}" if percent else "{:.2f}"
        if "per_seed" in row:  # a mean over erase seeds: the range of the seeds' own figures
            values = [r[key] for r in row["per_seed"]]
            return f"{main} ({len(values)} erase seeds: {bound.format(min(values))}–{bound.format(max(values))})"
        ci = row.get(f"{key}_ci")
        return main if ci is None else f"{main} ({bound.format(ci[0])}–{bound.format(ci[1])})"

    def seconds(row: dict[str, Any]) -> str:
        return "reused" if row["seconds"] is None else f"{row['seconds']:.0f}"

    lines = ["| task | model | target appears ↓, toy CLIP (95% CI) | target appears ↓, detector | "
             "CARE score ↑ (benign concept) | CLIP score ↑ (unrelated) | CCE-ASR ↓, detector | "
             "CLIP-FD ↓ (unrelated) | RATIO ↑ | time (s) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for result in results:
        task = TASKS[result.task]
        for method, row in result.rows.items():
            lines.append(f"| {task.name} (erase '{task.target}', keep '{task.concept}') | {LABELS[method]} | "
                         f"{figure(row, 'target_rate', True)} | {figure(row, 'target_detected', True)} | "
                         f"{figure(row, 'care', False)} | "
                         f"{figure(row, 'clip_unrelated', False)} | {figure(row, 'cce_asr', True)} | "
                         f"{figure(row, 'clipfd_unrelated', False)} | {row['ratio']:.2f} | {seconds(row)} |")
    return "\n".join(lines) + "\n"


def worst_unrelated(result: TaskResult) -> dict[str, tuple[str, float, float]]:
    """Per eraser, the unrelated prompt whose CLIP score fell most below the base model's: (prompt, base,
    eraser). The table's mean over five prompts can hide a concept wrecked on one of them."""
    base = result.rows["base"]["per_prompt"]["clip_unrelated"]
    out = {}
    for method in list(result.rows)[1:]:
        mine = result.rows[method]["per_prompt"]["clip_unrelated"]
        prompt = max(base, key=lambda p: base[p] - mine[p])
        out[method] = (prompt, base[prompt], mine[prompt])
    return out


def bars(result: TaskResult) -> dict[str, bool]:
    """The bars ReCARE is held to against the base model, and whether it keeps the concept best."""
    base, recare = result.rows["base"], result.rows["recare"]
    return {"target_at_most_20pct_of_base_by_toy_clip": recare["target_rate"] <= 0.2 * base["target_rate"],
            "target_at_most_20pct_of_base_by_detector": recare["target_detected"] <= 0.2 * base["target_detected"],
            "care_at_least_90pct_of_base": recare["care"] >= 0.9 * base["care"],
            "care_best_of_erasers": recare["care"] >= max(row["care"] for m, row in result.rows.items()
                                                          if m not in ("base", "recare"))}


def messages(result: TaskResult) -> list[str]:
    """What the command says on stderr about one task: the CARE-set and grid, each bar, and per eraser the
    unrelated prompt hit hardest."""
    name = result.task
    lines = [f"demo [{name}]: CARE-set {', '.join(result.careset) or '(empty)'}; grid {result.files['grid']}; "
             f"radar chart {result.files['radar']}"]
    lines += [f"demo [{name}]: {bar.replace('_', ' ')}: {'yes' if ok else 'NO'}" for bar, ok in bars(result).items()]
    lines += [f"demo [{name}]: {LABELS[method]}, unrelated prompt hit hardest: '{prompt}' CLIP {before:.3f} → "
              f"{after:.3f} (base → erased; results.json has every prompt)"
              for method, (prompt, before, after) in worst_unrelated(result).items()]
    return lines
