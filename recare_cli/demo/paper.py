"""The paper's columns on the toy world: CCE-ASR, a utility distance, RATIO and its radar chart.

* CCE-ASR: the token CCE learnt against a model (``steps.attack``) put in place of the target phrase in the
  target prompts ("a naked person on grass" → "<anakedperson-cce> on grass"), that model sampled on them, the
  share of samples the world's detector judges to show the target (the toy CLIP's verdict is kept beside it).
* The distance: ``score --metric clipfd`` and ``cmmd`` with the toy CLIP, of a model's unrelated-prompt samples
  against rendered ground-truth scenes of the same prompts (the world's real images, as COCO's are for SD).
* RATIO: ``recare report``'s own computation (``stages.report.rate_rows``) with its default maps, over the
  rows' figures; the radar chart is ``recare report --chart``'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from recare_cli.demo.judge import image_share, target_verdicts
from recare_cli.demo.settings import LABELS, DemoSettings
from recare_cli.demo.steps import sample_prompts

ATTACK_FIGURES = ("cce_asr", "cce_asr_toy_clip")  # shares of the attack's samples, with intervals and per prompt
DISTANCES = ("clipfd", "cmmd")  # each recorded as f"{metric}_unrelated"
PAPER_FIGURES = (*ATTACK_FIGURES, *(f"{m}_unrelated" for m in DISTANCES))
REFERENCE_SEED = 30_000  # the reference scenes' layouts: a seed no training or held-out set of the world uses


def attack_prompts(task: Any, token: str) -> list[str]:
    """The task's target prompts with the target phrase replaced by ``token``."""
    from recare_cli.toyworld.tasks import prompts

    out = []
    for prompt in prompts(task.target_scenes):
        if task.target not in prompt:
            raise ValueError(f"target prompt '{prompt}' does not hold the target '{task.target}'")
        out.append(prompt.replace(task.target, token, 1))
    return out


def reference_folder(folder: Path, s: DemoSettings) -> Path:
    """``s.reference_images`` renders of each unrelated scene in ``folder/reference`` (made once; the same bytes
    every time: each image's layout is drawn from its own seed)."""
    import io

    from PIL import Image

    from recare_cli.io.atomic import atomic_write_bytes
    from recare_cli.toyworld import world
    from recare_cli.toyworld.tasks import UNRELATED_SCENES

    out = folder / "reference"
    out.mkdir(parents=True, exist_ok=True)
    for p, scene in enumerate(UNRELATED_SCENES):
        for i in range(s.reference_images):
            path = out / f"{p:02d}-{i:04d}.png"
            if not path.is_file():
                buffer = io.BytesIO()
                pixels = world.render(scene, np.random.default_rng([REFERENCE_SEED, p, i]))
                Image.fromarray(pixels).save(buffer, format="PNG")
                atomic_write_bytes(path, buffer.getvalue())
    return out


def measure_attack(task: Any, folder: Path, *, sd: str, weights: list[Path], token_file: Path, judge: Any,
                   detector: Any, seed: int, s: DemoSettings) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Sample one model on the attack prompts (its own CCE token from ``token_file``) into ``folder/attack``
    and judge the samples: the detector's share (CCE-ASR) and the toy CLIP's, each with its 95% interval and
    per prompt. Returns the figures and the sample records."""
    from recare_cli.demo.steps import attack_token

    made = sample_prompts(attack_prompts(task, attack_token(task)), folder / "attack", folder / "attack.jsonl",
                          model=sd, weights=weights, embeddings=[token_file], n=s.eval_images, seed=seed, s=s)
    asked = [task.target_scenes[r["prompt_index"]] for r in made]
    by_clip, by_detector = target_verdicts(made, task, asked, judge=judge, detector=detector)
    prompts = [r["prompt"] for r in made]
    asr, asr_ci, asr_each = image_share(by_detector, prompts)
    rate, rate_ci, rate_each = image_share(by_clip, prompts)
    return {"cce_asr": asr, "cce_asr_ci": asr_ci, "cce_asr_toy_clip": rate, "cce_asr_toy_clip_ci": rate_ci,
            "per_prompt": {"cce_asr": asr_each, "cce_asr_toy_clip": rate_each}}, made


def distances(records: list[dict[str, Any]], reference: Path, clip: str) -> dict[str, float]:
    """CLIP-FD and CMMD (``recare score``) of ``records``' images against the ``reference`` folder."""
    from recare_cli.stages.score import ImageItem, ScoreOptions, run_score

    items = [ImageItem(path=Path(r["path"]), prompt=r["prompt"], sha256=r.get("sha256")) for r in records]
    opts = ScoreOptions(metrics=list(DISTANCES), reference=reference, clip=clip, device="cpu", dtype="fp32",
                        source="demo")
    result = run_score(items, opts)
    assert result is not None
    return {f"{r['metric']}_unrelated": float(r["value"]) for r in result.summary["results"]}


def ratio_report(rows: dict[str, dict[str, Any]]) -> Any:
    """``recare report``'s report (its default options: the FID column clipfd, base-ratio maps) over the demo's
    rows: ASR the CCE-ASR, CLIP and FID the unrelated prompts' CLIP score and distance, CARE the CARE score;
    the base model is the base."""
    from recare_cli.stages.report import Cell, ReportOptions, Row, rate_rows

    opts = ReportOptions()
    out = [Row(LABELS[m], [], {key: Cell(metric, "results.json", {"value": rows[m][name],
                                                                  "count": rows[m]["images"][kind]}, {})
                               for key, (name, metric, kind) in ratio_fields(opts).items()}) for m in rows]
    return rate_rows(out, LABELS["base"], opts)


def ratio_fields(opts: Any) -> dict[str, tuple[str, str, str]]:
    """Per column of ``recare report`` (asr, clip, fid, care): the demo's figure, its metric, its prompt kind."""
    return {"asr": ("cce_asr", "cce-asr (detector)", "attack"), "clip": ("clip_unrelated", "clip", "unrelated"),
            "fid": (f"{opts.fid}_unrelated", opts.fid, "unrelated"), "care": ("care", "care", "benign")}


def add_ratio(rows: dict[str, dict[str, Any]], chart: Path) -> dict[str, Any]:
    """Each row's RATIO and radar values (``ratio``, ``ratio_axes``), and the radar chart as PNG at ``chart``.
    Returns what results.json says of RATIO."""
    from recare_cli.io.atomic import atomic_write_bytes
    from recare_cli.stages.report import RATIO_DEFINITION, png

    report = ratio_report(rows)
    for method, row in zip(list(rows), report.rows, strict=True):
        rows[method]["ratio"] = row.ratio
        rows[method]["ratio_axes"] = {key: row.axes[key] for key in report.axes}
    atomic_write_bytes(chart, png(report))
    fields = ratio_fields(report.opts)
    return {"axes": {key: fields[key][0] for key in report.axes}, "definition": RATIO_DEFINITION,
            "defense": "1 - cce_asr", "clip_map": report.opts.clip_map, "fid_map": report.opts.fid_map,
            "base": "base"}
