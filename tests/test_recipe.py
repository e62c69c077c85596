"""recipes/paper-table.sh, the paper's table end to end, run on the toy world with tiny settings."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from tests.helpers import shell

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def test_the_recipe_makes_every_column_and_a_rerun_redoes_nothing(tmp_path: Path) -> None:
    """Every column of the table for the base model and ReCARE, the report's JSON and the radar chart; run
    again, every step finds its file and the table is the same bytes."""
    env = {"METHODS": "recare", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    first = shell(f"{ROOT / 'recipes' / 'paper-table-toy.sh'} out", tmp_path, env, timeout=1200)
    assert first.returncode == 0, first.stderr[-3000:]
    out = tmp_path / "out"
    report = orjson.loads((out / "report.json").read_bytes())
    rows = {row["model"]: row for row in report["models"]}
    assert list(rows) == ["base", "recare"]
    for row in rows.values():
        assert set(row["scores"]) == {"asr", "clip", "fid", "care"}, row
        assert all(isinstance(cell["value"], float) for cell in row["scores"].values()), row
        assert 0.0 <= row["ratio"] <= 1.0
    assert (out / "radar.svg").read_text().lstrip().startswith("<svg")
    table = (out / "table.md").read_text()
    assert table.splitlines()[0] == "| model | ASR ↓ | CLIP ↑ | FID ↓ | CARE ↑ | RATIO ↑ |"
    assert first.stdout == table
    second = shell(f"{ROOT / 'recipes' / 'paper-table-toy.sh'} out", tmp_path, env, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "making" not in second.stderr and "have recare.safetensors" in second.stderr
    assert second.stdout == table


def test_the_gpu_recipe_names_what_it_needs_before_any_work(tmp_path: Path) -> None:
    done = shell(f"{ROOT / 'recipes' / 'paper-table.sh'}", tmp_path, {"OUT": "o"})
    assert done.returncode != 0
    assert "COCO: a COCO-style prompt CSV" in done.stderr
    assert not (tmp_path / "o").exists()
