"""experiments/equal_erasure.py: each baseline's rate raised up a fixed ladder until it erases as much as ReCARE."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson
import pytest


def _folder(tmp_path: Path, detected: dict[str, float]) -> Path:
    from recare_cli.demo.settings import DemoSettings

    folder = tmp_path / "tench"
    folder.mkdir()
    settings = {k: v for k, v in asdict(DemoSettings()).items() if k not in ("erase_seeds", "extra_methods")}
    (folder / "settings.json").write_bytes(orjson.dumps({"task": "tench", "settings": settings}))
    rows = {m: {"target_detected": v, "care": 0.9, "clip_unrelated": 0.5} for m, v in detected.items()}
    (folder / "results.json").write_bytes(orjson.dumps({"results": rows}))
    return folder


def test_each_baseline_climbs_until_it_erases_as_much_as_recare(monkeypatch: pytest.MonkeyPatch,
                                                                tmp_path: Path) -> None:
    from experiments import equal_erasure as ee
    from recare_cli.demo import judge, steps

    folder = _folder(tmp_path, {"base": 1.0, "esd": 0.9, "stereo": 0.5, "uce": 0.1, "recare": 0.25})
    # the detector's rate of each (method, step): ESD gets there at ×8, STEREO never
    rates = {("esd", 2): 0.8, ("esd", 4): 0.5, ("esd", 8): 0.25, **{("stereo", b): 0.3 for b in (2, 4, 8, 16)}}

    def rate_of(tag: str) -> float:
        method, boost = tag.split("-x")
        return rates[(method, int(boost))]
    erased: list[tuple[str, float]] = []

    def erase(folder: Path, task: Any, method: str, *args: Any, out: Path, boost: float) -> Path:
        erased.append((method, boost))
        return out

    def sample(prompts: list[str], out: Path, manifest: Path, **kw: Any) -> list[dict[str, Any]]:
        return [{"tag": out.parent.name}]

    def measured(task: Any, folder: Path, **kw: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        return {"target_detected": rate_of(folder.name), "care": 0.5, "clip_unrelated": 0.4}, {}

    monkeypatch.setattr(steps, "erase", erase)
    monkeypatch.setattr(steps, "sample_prompts", sample)
    monkeypatch.setattr(ee, "detected", lambda records, *a: rate_of(records[0]["tag"]))
    monkeypatch.setattr(judge, "measure_model", measured)
    out = ee.run_folder(folder, (2, 4, 8, 16), clip="c", sd="s", judge=None, detector=None)
    assert erased == [("esd", 2), ("esd", 4), ("esd", 8), *(("stereo", b) for b in (2, 4, 8, 16))]
    rows = out["rows"]
    assert rows["esd"]["step"] == 8 and rows["esd"]["reached"] and rows["esd"]["target_detected"] == 0.25
    assert rows["esd"]["knob"] == "lr 0.001"  # ESD's scaled 1.25e-4 for tench, × 8
    assert rows["stereo"]["step"] == 16 and not rows["stereo"]["reached"]  # the ladder's last step
    assert rows["uce"] == {"step": 1, "reached": True, "knob": "erase scale 1", "target_detected": 0.1, "care": 0.9,
                           "clip_unrelated": 0.5}  # the demo's own row already erases as much
    assert orjson.loads((folder / "equal-erasure.json").read_bytes())["rows"] == rows
    table = ee.table([out])
    assert "| tench | ESD | ×8 | lr 0.001 | 25.0% | 0.500 | 0.400 |" in table
    assert "| tench | STEREO | ×16 (not reached) |" in table and "| tench | ReCARE (the bar) | | | 25.0% |" in table
