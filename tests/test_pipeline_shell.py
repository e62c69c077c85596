"""The CARE-set pipeline as real shell pipelines, in subprocesses: what users type."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from tests.helpers import invoke, shell

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def env(tiny_clip_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return {"RECARE_CLIP": str(tiny_clip_dir), "HF_HUB_OFFLINE": "1",
            "RECARE_CACHE": str(tmp_path_factory.mktemp("cache"))}


def test_pipeline_end_to_end_matches_in_process(target_images: Path, tmp_path: Path,
                                                env: dict[str, str]) -> None:
    cmd = (f"recare mine {target_images} --target circle --top-k 20 --top-n 40 "
           "| recare cluster -n 4 | recare refine --alpha 0.1 > care.json")
    done = shell(cmd, tmp_path, env)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""  # data went to the file
    care = orjson.loads((tmp_path / "care.json").read_bytes())
    assert care["format"] == "recare.careset" and care["words"]
    # Same bytes as the in-process run with the same arguments (no hidden state, no timestamps).
    mined = invoke(["mine", str(target_images), "--target", "circle", "--top-k", "20", "--top-n", "40",
                    "--clip", env["RECARE_CLIP"]])
    clustered = invoke(["cluster", "-n", "4"], stdin=mined.stdout)
    refined = invoke(["refine", "--alpha", "0.1"], stdin=clustered.stdout)
    in_process = orjson.loads(refined.stdout)
    assert in_process["words"] == care["words"]
    assert in_process["removed"] == care["removed"]


def test_pipeline_with_reference_images_matches_in_process(target_images: Path, tmp_path: Path,
                                                           env: dict[str, str]) -> None:
    from recare_cli.models.tiny import draw_images

    draw_images(tmp_path / "ref", 8, seed=5, size=40)
    done = shell(f"ls ref/*.png > ref.txt && recare mine {target_images} -t circle --top-k 20 --top-n 40 "
                 "--reference ref.txt | recare cluster -n 2 | recare refine > care.json", tmp_path, env)
    assert done.returncode == 0, done.stderr
    care = orjson.loads((tmp_path / "care.json").read_bytes())
    mined = invoke(["mine", str(target_images), "-t", "circle", "--top-k", "20", "--top-n", "40",
                    "--clip", env["RECARE_CLIP"], "--reference", str(tmp_path / "ref")])
    refined = invoke(["refine"], stdin=invoke(["cluster", "-n", "2"], stdin=mined.stdout).stdout)
    assert orjson.loads(refined.stdout)["words"] == care["words"]


def test_pipeline_with_a_hand_edit_between_stages(target_images: Path, tmp_path: Path,
                                                  env: dict[str, str]) -> None:
    done = shell(f"recare mine {target_images} -t circle --top-k 20 --top-n 40 > cand.jsonl", tmp_path, env)
    assert done.returncode == 0, done.stderr
    records = [orjson.loads(line) for line in (tmp_path / "cand.jsonl").read_bytes().splitlines()]
    victim = records[1]["word"]
    edited = shell(f"grep -v '\"word\":\"{victim}\"' cand.jsonl | recare cluster -n 4 | tee clustered.jsonl "
                   "| recare refine > care.json", tmp_path, env)
    assert edited.returncode == 0, edited.stderr
    care = orjson.loads((tmp_path / "care.json").read_bytes())
    everything = set(care["words"]) | {r["word"] for r in care["removed"]}
    assert victim not in everything
    assert len(everything) == 39
    # Hand-keep a dropped word: flip its status; refine must honour it.
    lines = (tmp_path / "clustered.jsonl").read_bytes().splitlines()
    out = []
    flipped = None
    for line in lines:
        rec = orjson.loads(line)
        if flipped is None and rec.get("record") == "word" and rec["status"] == "dropped":
            rec["status"], rec["reason"], flipped = "kept", None, rec["word"]
        out.append(orjson.dumps(rec))
    (tmp_path / "hand.jsonl").write_bytes(b"\n".join(out) + b"\n")
    again = shell("recare refine hand.jsonl --alpha 1000 -o care2.json", tmp_path, env)
    assert again.returncode == 0, again.stderr
    assert flipped in orjson.loads((tmp_path / "care2.json").read_bytes())["words"]


def test_closed_pipe_ends_quietly(target_images: Path, tmp_path: Path, env: dict[str, str]) -> None:
    # 600 records of ~600 bytes overflow the 64 KiB pipe buffer: the write must hit the closed pipe.
    command = f"recare mine {target_images} -t circle --top-k 300 --top-n 600 | head -n 2"
    done = shell(command + '; echo "status=${PIPESTATUS[0]}"', tmp_path, env)
    assert done.stdout.count("\n") == 3 and done.stdout.endswith("status=141\n"), done.stdout
    assert "Traceback" not in done.stderr and "Error" not in done.stderr


def test_failed_stage_leaves_existing_output_untouched(tmp_path: Path, env: dict[str, str]) -> None:
    (tmp_path / "care.json").write_text("precious")
    done = shell("printf '{\"record\":\"header\"' | recare refine -o care.json", tmp_path, env)
    assert done.returncode == 3
    assert (tmp_path / "care.json").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["care.json"]
    assert done.stderr.count("\n") == 1 and "<stdin>:1" in done.stderr


def test_module_entry_point_and_fast_help(tmp_path: Path, env: dict[str, str]) -> None:
    done = shell("python -m recare_cli --version && python -c \"import sys, recare_cli.cli.app; "
                 "print('torch' in sys.modules)\"", tmp_path, env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["recare 0.1.0", "False"]  # --help never imports torch


def test_ctrl_c_exits_130_and_leaves_no_file(target_images: Path, tmp_path: Path, env: dict[str, str]) -> None:
    import os
    import signal
    import subprocess

    from tests.helpers import recare_exe

    # One word per forward pass and no cache: the vocabulary embedding runs for seconds.
    proc = subprocess.Popen([recare_exe(), "mine", str(target_images), "-t", "circle", "--no-cache",
                             "--text-batch-size", "1", "-o", "out.jsonl"], cwd=tmp_path,
                            env={**os.environ, **env}, stderr=subprocess.PIPE, text=True,
                            # a shell's background jobs ignore SIGINT; a terminal's Ctrl-C does not
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.stderr is not None
    first = proc.stderr.readline()
    assert "embedding" in first and "vocabulary" in first, first
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, first + err
    assert "interrupted" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", [
    ["erase", "--target", "cat", "--method", "esd", "-o", "-"],
    ["invert", "IMAGES", "--target", "cat", "-o", "-"],
])
def test_binary_to_a_real_terminal_is_refused_before_any_work(command: list[str], tiny_sd_dir: Path,
                                                               target_images: Path, tmp_path: Path) -> None:
    """stdout on a pseudo-terminal: refused at once (exit 5, one line), not after training."""
    import os
    import pty
    import subprocess
    import time

    from tests.helpers import recare_exe

    args = [str(target_images) if a == "IMAGES" else a for a in command]
    controller, terminal = pty.openpty()
    started = time.perf_counter()
    try:
        run = subprocess.run([recare_exe(), *args, "--model", str(tiny_sd_dir)], stdout=terminal,
                             stderr=subprocess.PIPE, text=True, cwd=tmp_path, timeout=300)
    finally:
        os.close(terminal)
        os.close(controller)
    assert run.returncode == 5, run.stderr
    assert "terminal" in run.stderr and len(run.stderr.strip().splitlines()) == 1
    assert time.perf_counter() - started < 60  # no model was loaded, nothing was trained
    assert list(tmp_path.iterdir()) == []


def test_word_embeddings_npy_beside_a_pipeline(target_images: Path, tmp_path: Path, env: dict[str, str]) -> None:
    import numpy as np

    cmd = (f"recare mine {target_images} --target circle --top-k 20 --top-n 40 --embeddings-npy mined.npy "
           "| recare cluster -n 4 --embeddings-npy clustered.npy > clustered.jsonl")
    done = shell(cmd, tmp_path, env)
    assert done.returncode == 0, done.stderr
    words = [orjson.loads(line) for line in (tmp_path / "clustered.jsonl").read_bytes().splitlines()[1:]]
    embeddings = np.float32([w["embedding"] for w in words if "embedding" in w])
    assert embeddings.shape == (40, 32)
    assert np.array_equal(np.load(tmp_path / "clustered.npy"), embeddings)
    assert np.array_equal(np.sort(np.load(tmp_path / "mined.npy"), axis=0), np.sort(embeddings, axis=0))
