"""recare sample on the tiny Stable Diffusion model: manifest, determinism across shards, processes and
batch sizes, resume after a crash, weights and embeddings, bad input."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import invoke, shell

PROMPTS = Path(__file__).resolve().parent / "data" / "prompts"
FAST = ["--steps", "2", "--height", "32", "--width", "32", "--device", "cpu", "--seed", "42"]


def _prompt_file(folder: Path, rows: int) -> Path:
    """The first rows of a real prompt file (unnamed index column, case_number, evaluation_seed, class)."""
    lines = (PROMPTS / "small_imagenet_prompts.csv").read_text("utf-8").splitlines(keepends=True)
    path = folder / "prompts.csv"
    path.write_text("".join(lines[: rows + 1]), "utf-8")
    return path


def _args(prompts: Path | str, out: Path, model: Path, *extra: str) -> list[str]:
    return ["sample", str(prompts), "--out", str(out), "--model", str(model), *FAST, *extra]


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.suffix == ".png"}


def _records(stdout: bytes | str) -> list[dict]:
    text = stdout.decode() if isinstance(stdout, bytes) else stdout
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _relocate(manifest: bytes | str, old: Path, new: Path) -> str:
    text = manifest.decode() if isinstance(manifest, bytes) else manifest
    return text.replace(json.dumps(str(old))[1:-1], json.dumps(str(new))[1:-1])


@dataclass
class Reference:
    prompts: Path
    out: Path
    manifest: bytes
    model: Path


@pytest.fixture(scope="module")
def reference(tiny_sd_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Reference]:
    """6 prompts x 2 images = 12 jobs in 3 batches of 4, made once by a single process."""
    folder = tmp_path_factory.mktemp("sample-ref")
    prompts = _prompt_file(folder, 6)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        res = invoke(_args(prompts, folder / "out", tiny_sd_dir, "-n", "2", "--batch-size", "4"))
    assert res.code == 0, res.stderr
    yield Reference(prompts, folder / "out", res.stdout, tiny_sd_dir)


def test_manifest_names_seeds_and_files(reference: Reference) -> None:
    records = _records(reference.manifest)
    assert len(records) == 12
    csv_rows = (PROMPTS / "small_imagenet_prompts.csv").read_text().splitlines()[1:7]
    seeds = [int(r.split(",")[3]) for r in csv_rows]
    for k, rec in enumerate(records):
        p, j = divmod(k, 2)
        assert rec["format"] == "recare.manifest" and rec["version"] == 1
        assert rec["path"] == str(reference.out / f"case-{p}_{j:04d}.png")
        assert (rec["prompt_index"], rec["case_number"], rec["image_index"]) == (p, p, j)
        assert rec["seed"] == seeds[p] + j  # evaluation_seed + image index
        assert rec["extra"] == {"class": "cassette player"}
        assert rec["sampling"] == {"steps": 2, "guidance": 7.5, "height": 32, "width": 32, "scheduler": "default",
                                   "dtype": "fp32", "safety_checker": False}
        assert rec["model"]["unet"].startswith("sha256:") and rec["weights"] == []
        data = Path(rec["path"]).read_bytes()
        assert rec["sha256"] == "sha256:" + hashlib.sha256(data).hexdigest()
        with Image.open(rec["path"]) as im:
            assert im.size == (32, 32) and json.loads(im.info["recare"])["seed"] == rec["seed"]
    assert sorted(_files(reference.out)) == sorted(Path(r["path"]).name for r in records)


def test_rerun_skips_finished_images_and_repeats_the_manifest(reference: Reference) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in reference.out.iterdir()}
    res = invoke(_args(reference.prompts, reference.out, reference.model, "-n", "2", "--batch-size", "4"))
    assert res.code == 0, res.stderr
    assert "12 already done, 0 to make" in res.stderr
    assert "sampling" not in res.stderr  # nothing to make: no progress line
    assert res.stdout == reference.manifest
    assert {p.name: p.stat().st_mtime_ns for p in reference.out.iterdir()} == before


def test_shards_concatenate_to_the_single_process_output(reference: Reference, tmp_path: Path) -> None:
    out = tmp_path / "out"
    parts = []
    for i in range(2):
        res = invoke(_args(reference.prompts, out, reference.model, "-n", "2", "--batch-size", "4",
                           "--shard", f"{i}/2"))
        assert res.code == 0, res.stderr
        parts.append(res.stdout.decode())
    assert len(_records(parts[0])) == 4 and len(_records(parts[1])) == 8  # whole batches: 1 and 2 of 3
    assert "".join(parts) == _relocate(reference.manifest, reference.out, out)
    assert _files(out) == _files(reference.out)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_two_processes_over_gloo_equal_one_process(reference: Reference, tmp_path: Path) -> None:
    import torch

    out = tmp_path / "out"
    args = " ".join(_args(reference.prompts, out, reference.model, "-n", "2", "--batch-size", "4"))
    # On CPU the bytes depend on the intra-op thread count (kernels split sums differently); torchrun would
    # set 1 thread per process, so give each process the thread count the reference ran with.
    threads = str(torch.get_num_threads())
    done = shell(f"{sys.executable} -m torch.distributed.run --nproc_per_node 2 --master_port {_free_port()} "
                 f"-m recare_cli {args} > manifest.jsonl", cwd=tmp_path,
                 env={"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": threads})
    assert done.returncode == 0, done.stderr
    assert "(process 0/2)" in done.stderr and "(process 1/2)" in done.stderr
    assert (tmp_path / "manifest.jsonl").read_text() == _relocate(reference.manifest, reference.out, out)
    assert _files(out) == _files(reference.out)


def test_batch_size_changes_images_only_by_float_rounding(reference: Reference, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = invoke(_args(reference.prompts, out, reference.model, "-n", "2", "--batch-size", "1"))
    assert res.code == 0, res.stderr
    # Same seeds and per-image generators; batched matrix products round differently on CPU, so a pixel
    # may move by one 8-bit step. (Across shards and processes the batches are the same: exact bytes.)
    for name in _files(reference.out):
        a = np.asarray(Image.open(reference.out / name), dtype=np.int16)
        b = np.asarray(Image.open(out / name), dtype=np.int16)
        assert np.abs(a - b).max() <= 1, name
        assert (a == b).mean() > 0.95, name


def test_resume_after_a_simulated_crash(reference: Reference, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    files = _files(reference.out)
    for name, data in files.items():
        (out / name).write_bytes(data)
    (out / "case-1_0001.png").unlink()  # never written
    (out / "case-5_0000.png").unlink()
    truncated = out / "case-3_0000.png"
    truncated.write_bytes(files["case-3_0000.png"][:100])  # cut off (not by us: we write atomically)
    (out / ".case-2_0000.png.x1y2.tmp").write_bytes(b"partial")  # a killed run's temporary file
    res = invoke(_args(reference.prompts, out, reference.model, "-n", "2", "--batch-size", "4"))
    assert res.code == 0, res.stderr
    assert "9 already done, 3 to make" in res.stderr and "unreadable" in res.stderr
    assert _files(out) == files
    records = _records(res.stdout)
    assert len(records) == len({r["path"] for r in records}) == 12
    assert res.stdout.decode() == _relocate(reference.manifest, reference.out, out)


# Runs `recare ARGS` and dies by SIGKILL in the middle of writing image KILL_AFTER + 1: its temporary file
# half written and not renamed, as a kill at that moment leaves it.
_KILLED_RUN = """
import os, signal, sys, tempfile
from pathlib import Path

import recare_cli.stages.sample as stage
from recare_cli.cli.app import run

written = []
write = stage.atomic_write_bytes


def write_or_die(path, data):
    if len(written) == int(os.environ["KILL_AFTER"]):
        fd, _ = tempfile.mkstemp(prefix=f".{Path(path).name}.", suffix=".tmp", dir=Path(path).parent)
        os.write(fd, data[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
    write(path, data)
    written.append(path)


stage.atomic_write_bytes = write_or_die
sys.exit(run(sys.argv[1:]))
"""


@pytest.mark.slow
def test_resume_after_a_killed_process(tiny_sd_dir: Path, tmp_path: Path) -> None:
    prompts = _prompt_file(tmp_path, 6)
    args = _args(prompts, tmp_path / "out", tiny_sd_dir, "-n", "2", "--batch-size", "2")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "KILL_AFTER": "5"}  # killed inside the third batch
    killed = subprocess.run([sys.executable, "-c", _KILLED_RUN, *args], capture_output=True, env=env, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()
    assert len(list((tmp_path / "out").glob("*.png"))) == 5
    assert len(list((tmp_path / "out").glob(".*.tmp"))) == 1
    res = invoke(args)
    assert res.code == 0, res.stderr
    assert "12 images, 5 already done, 7 to make" in res.stderr
    whole = invoke(_args(prompts, tmp_path / "whole", tiny_sd_dir, "-n", "2", "--batch-size", "2"))
    assert whole.code == 0, whole.stderr
    assert _files(tmp_path / "out") == _files(tmp_path / "whole")
    assert len(_records(res.stdout)) == 12
    assert res.stdout.decode() == _relocate(whole.stdout, tmp_path / "whole", tmp_path / "out")


def _error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def test_bad_input(tiny_sd_dir: Path, tmp_path: Path, reference: Reference) -> None:
    out = tmp_path / "out"
    no_prompt = tmp_path / "noprompt.csv"
    no_prompt.write_text(",case_number,text\n0,0,a cat\n")
    res = invoke(_args(no_prompt, out, tiny_sd_dir))
    assert res.code == 3 and "noprompt.csv:1: no 'prompt' column" in _error_line(res.stderr)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    res = invoke(_args(empty, out, tiny_sd_dir))
    assert res.code == 3 and "no prompts found" in _error_line(res.stderr)
    assert not out.exists()  # nothing created for a failed start
    res = invoke(_args(reference.prompts, out, tiny_sd_dir, "--scheduler", "heun"))
    assert res.code == 2 and "unknown scheduler 'heun'" in _error_line(res.stderr)
    res = invoke(_args(reference.prompts, out, tiny_sd_dir, "--shard", "2/2"))
    assert res.code == 2 and "--shard" in _error_line(res.stderr)
    res = invoke(_args(reference.prompts, out, tiny_sd_dir, "--height", "36"))
    assert res.code == 2 and "multiples of 8" in _error_line(res.stderr)

    # An image made with other settings is never overwritten.
    out.mkdir()
    theirs = out / "case-0_0000.png"
    theirs.write_bytes((reference.out / "case-0_0000.png").read_bytes())
    res = invoke(_args(reference.prompts, out, tiny_sd_dir, "--guidance", "3"))
    assert res.code == 3 and "made with other settings" in _error_line(res.stderr)
    assert theirs.read_bytes() == (reference.out / "case-0_0000.png").read_bytes()


def _weights(path: Path, base: str, tensors: dict) -> Path:
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata={"format": "recare.weights", "base_unet": base})
    return path


def test_weights_and_embeddings(reference: Reference, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    base = _records(reference.manifest)[0]["model"]["unet"]
    bias = torch.full((4,), 0.5)
    good = _weights(tmp_path / "erased.safetensors", base, {"conv_out.bias": bias})
    other = _weights(tmp_path / "other.safetensors", "sha256:0123456789abcdef", {"conv_out.bias": bias})
    res = invoke(_args(reference.prompts, tmp_path / "o1", reference.model, "--weights", str(other)))
    assert res.code == 3
    assert "other.safetensors field 'base_unet': made for base UNet sha256:0123456789abcdef" in _error_line(res.stderr)
    assert not (tmp_path / "o1").exists()  # no empty --out folder left behind

    unknown = _weights(tmp_path / "unknown.safetensors", base, {"no.such.param": bias})
    res = invoke(_args(reference.prompts, tmp_path / "o1", reference.model, "--weights", str(unknown)))
    assert res.code == 3 and "not in the model's UNet" in _error_line(res.stderr)

    emb = tmp_path / "adv.safetensors"
    torch.manual_seed(0)
    save_file({"<adv>": torch.randn(1, 32)}, str(emb))
    prompts = tmp_path / "p.txt"
    prompts.write_text("Image of cassette player\na <adv> photo\n")
    res = invoke(_args(prompts, tmp_path / "o2", reference.model, "--weights", str(good), "--embeddings", str(emb)))
    assert res.code == 0, res.stderr
    recs = _records(res.stdout)
    assert recs[0]["weights"][0]["base_unet"] == base and recs[0]["weights"][0]["fingerprint"].startswith("sha256:")
    assert recs[0]["embeddings"][0]["tokens"] == ["<adv>"]
    assert recs[0]["path"].endswith("prompt-000000_0000.png")  # text prompts: no case numbers
    assert recs[0]["seed"] == 42
    erased = np.asarray(Image.open(tmp_path / "o2" / "prompt-000000_0000.png"), dtype=np.int16)
    again = invoke(_args(prompts, tmp_path / "o4", reference.model))
    assert again.code == 0
    base_img = np.asarray(Image.open(tmp_path / "o4" / "prompt-000000_0000.png"), dtype=np.int16)
    assert np.abs(erased - base_img).max() > 0  # the weights changed the model


@pytest.mark.slow
def test_sample_into_score_as_a_shell_pipeline(tiny_sd_dir: Path, tiny_clip_dir: Path, tmp_path: Path) -> None:
    args = " ".join(FAST)
    done = shell(f"printf 'a cat\\na person on a bench\\n' | recare sample - --out imgs --model {tiny_sd_dir} {args} "
                 f"-n 2 | recare score - -m clip -m care --concept person --clip {tiny_clip_dir} > scores.json",
                 cwd=tmp_path, env={"HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "scores.json").read_text())
    assert summary["images"] == 4 and [r["metric"] for r in summary["results"]] == ["clip", "care"]


@pytest.mark.parametrize("config_says", [None, True])
def test_ddim_from_a_silent_config_does_not_clip(tiny_sd_dir: Path, config_says: bool | None) -> None:
    """--scheduler ddim: a model config without clip_sample gets a DDIM that does not clip the latent x0
    (diffusers' default would); a config that states it keeps its value."""
    from recare_cli.models.scheduler import set_scheduler
    from recare_cli.models.sd import load_sd

    pipe = load_sd(str(tiny_sd_dir), device="cpu", dtype="fp32").pipe
    assert "clip_sample" not in pipe.scheduler.config
    if config_says is not None:
        pipe.scheduler.register_to_config(clip_sample=config_says)
    set_scheduler(pipe, "ddim")
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    assert pipe.scheduler.config.clip_sample is (False if config_says is None else config_says)


def test_default_size_is_the_models_own(tiny_sd_dir: Path, tmp_path: Path) -> None:
    """Without --height/--width, images are as large as the model was trained (the tiny model: 32 px,
    its UNet's 16 latent pixels times the VAE's factor 2), and the manifest records that size."""
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\n")
    res = invoke(["sample", str(prompts), "--out", str(tmp_path / "out"), "--model", str(tiny_sd_dir),
                  "--steps", "1", "--device", "cpu"])
    assert res.code == 0, res.stderr
    (record,) = _records(res.stdout)
    assert (record["sampling"]["height"], record["sampling"]["width"]) == (32, 32)
    with Image.open(record["path"]) as im:
        assert im.size == (32, 32)
    assert "sample: 1 image, 0 already done, 1 to make" in res.stderr
    assert "sample: 1 image made, 0 already present" in res.stderr
    assert "model's own" in invoke(["sample", "--help"]).text

    from recare_cli.models.sd import load_sd, native_resolution

    assert native_resolution(load_sd(str(tiny_sd_dir), device="cpu", dtype="fp32").pipe) == (32, 32)


def test_a_file_for_another_option_is_named_and_redirected(reference: Reference, tmp_path: Path) -> None:
    """Each recare safetensors format is known by its metadata: given to the wrong option, one line says
    what the file is and which option takes it, before any model is loaded and without creating --out."""
    import torch

    from recare_cli.models.weights import CHECKPOINT_FORMAT, save_embeddings, save_unet_weights, write_safetensors

    base = _records(reference.manifest)[0]["model"]
    adv = tmp_path / "adv.safetensors"
    save_embeddings(adv, {"<adv>": torch.zeros(1, 32)}, base_text_encoder=base["text_encoder"])
    erased = tmp_path / "erased.safetensors"
    save_unet_weights(erased, {"conv_out.bias": torch.zeros(4)}, base_unet=base["unet"])
    ckpt = tmp_path / "erased.safetensors.ckpt"
    write_safetensors(ckpt, {"x": torch.zeros(1)}, {"format": CHECKPOINT_FORMAT, "version": "1"})
    out = tmp_path / "out"
    cases = [("--weights", adv, "adv.safetensors is a recare.embeddings file (textual-inversion tokens from "
                                "recare invert): pass it with --embeddings"),
             ("--embeddings", erased, "erased.safetensors is a recare.unet-weights file (trained UNet parameters "
                                      "from recare erase): pass it with --weights"),
             ("--weights", ckpt, "is a recare.erase-checkpoint file (the state of an unfinished recare erase "
                                 "run): pass it with recare erase --resume")]
    for option, path, message in cases:
        res = invoke(_args(reference.prompts, out, reference.model, option, str(path)))
        assert res.code == 3, res.stderr
        assert message in _error_line(res.stderr)
        assert not out.exists()


def test_long_prompts_are_reported_once(tiny_sd_dir: Path, tmp_path: Path) -> None:
    """Prompts over CLIP's 77 tokens are truncated by the text encoder: one warning per run counts them
    and gives the longest, in tokens as the tokenizer counts them (BOS and EOS included)."""
    from transformers import CLIPTokenizer

    long_ones = ["a cat " * 40, "a red car in the rain " * 16]
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(["a short prompt", *long_ones]) + "\n")
    tokenizer = CLIPTokenizer.from_pretrained(tiny_sd_dir / "tokenizer")
    longest = max(len(tokenizer(p.strip())["input_ids"]) for p in long_ones)
    assert longest == 2 + 16 * 6
    res = invoke(_args(prompts, tmp_path / "out", tiny_sd_dir, "--steps", "1"))
    assert res.code == 0, res.stderr
    warnings = [line for line in res.stderr.splitlines() if "tokens" in line]
    assert warnings == [f"warning: 2 prompts are longer than CLIP's 77 tokens (longest {longest}) and are "
                        "truncated"], res.stderr



def test_plan_batches_against_a_naive_grouping() -> None:
    """Batches never mix settings, hold at most --batch-size jobs of one setting in job order, come in the
    order of their first job, and cover every job once; with one setting they are the consecutive cut
    that shards and processes always used."""
    import random

    from recare_cli.parallel import Shard, my_batches
    from recare_cli.stages.sample import pick_batches, plan_batches

    rng = random.Random(0)
    for trial in range(50):
        n, size = rng.randrange(1, 60), rng.randrange(1, 7)
        keys = [rng.choice("aab" if trial % 2 else "abcde") for _ in range(n)]
        batches = plan_batches(keys, size)
        naive = []
        for key in dict.fromkeys(keys):
            members = [i for i in range(n) if keys[i] == key]
            naive += [members[s:s + size] for s in range(0, len(members), size)]
        assert batches == sorted(naive)  # first jobs differ, so this sorts by first job
        assert sorted(i for b in batches for i in b) == list(range(n))
        same = plan_batches(["k"] * n, size)
        assert same == [list(r) for r in my_batches(n, size, Shard(0, 1), 0, 1)]
        for count in (1, 3, 7):
            parts = [pick_batches(batches, Shard(i, count), 0, 1) for i in range(count)]
            assert [b for p in parts for b in p] == batches
            assert pick_batches(same, Shard(1 % count, count), 0, 1) == [
                list(r) for r in my_batches(n, size, Shard(1 % count, count), 0, 1)]


def test_row_settings_use_each_rows_guidance_and_size(tiny_sd_dir: Path, tmp_path: Path) -> None:
    """--row-settings: a row's guidance and size are the ones its image is made with (the same bytes as a run
    that gives them as options), rows of other settings never share a batch, the manifest records each
    image's settings in batch order, and shards still concatenate to the whole run."""
    rows = tmp_path / "rows.csv"
    rows.write_text("case_number,prompt,evaluation_seed,evaluation_guidance,sd_image_height,sd_image_width\n"
                    "0,a red car,1,3.0,,\n1,a blue boat,2,9,40,40\n2,a green tree,3,3,,\n3,a cat,4,,,\n", "utf-8")
    base = ["--out", str(tmp_path / "out"), "--model", str(tiny_sd_dir), "--steps", "1", "--device", "cpu",
            "--batch-size", "4"]
    res = invoke(["sample", str(rows), "--row-settings", *base])
    assert res.code == 0, res.stderr
    assert "--row-settings: 3 settings of guidance and size, 3 batches" in res.stderr
    whole = res.stdout
    records = _records(whole)
    assert [r["case_number"] for r in records] == [0, 2, 1, 3]  # batches [0, 2], [1], [3]
    assert [(r["sampling"]["guidance"], r["sampling"]["height"], r["sampling"]["width"]) for r in records] == [
        (3.0, 32, 32), (3.0, 32, 32), (9.0, 40, 40), (7.5, 32, 32)]
    assert records[0]["extra"] == {} and len({r["config"] for r in records}) == 3
    with Image.open(tmp_path / "out" / "case-1_0000.png") as im:
        assert im.size == (40, 40)

    # The same images from plain runs with those settings as options (same batches: same bytes).
    (tmp_path / "b.csv").write_text("case_number,prompt,evaluation_seed\n1,a blue boat,2\n", "utf-8")
    (tmp_path / "ac.csv").write_text("case_number,prompt,evaluation_seed\n0,a red car,1\n2,a green tree,3\n", "utf-8")
    for name, options in (("b.csv", ["--guidance", "9", "--height", "40", "--width", "40"]),
                          ("ac.csv", ["--guidance", "3"])):
        plain_out = tmp_path / f"plain-{name}"
        done = invoke(["sample", str(tmp_path / name), *base[2:], "--out", str(plain_out), *options])
        assert done.code == 0, done.stderr
        for png in _files(plain_out):
            assert (plain_out / png).read_bytes() == (tmp_path / "out" / png).read_bytes(), png

    # Without --row-settings the columns are extra and every image takes the options.
    res = invoke(["sample", str(rows), *base[2:], "--out", str(tmp_path / "flat")])
    assert res.code == 0, res.stderr
    assert "are not used" in res.stderr
    flat = _records(res.stdout)
    assert [r["case_number"] for r in flat] == [0, 1, 2, 3]
    assert {r["sampling"]["guidance"] for r in flat} == {7.5}
    assert flat[1]["extra"] == {"evaluation_guidance": "9", "sd_image_height": "40", "sd_image_width": "40"}

    # Shards split the batch list; their manifests concatenate to the whole run's.
    parts = []
    for i in range(2):
        part = invoke(["sample", str(rows), "--row-settings", *base[2:], "--out", str(tmp_path / "sharded"),
                       "--shard", f"{i}/2"])
        assert part.code == 0, part.stderr
        parts.append(part.stdout.decode())
    assert "".join(parts) == _relocate(whole, tmp_path / "out", tmp_path / "sharded")
    assert _files(tmp_path / "sharded") == _files(tmp_path / "out")


def test_an_i2p_format_file_of_thousands_of_rows_samples_end_to_end(tiny_sd_dir: Path, tmp_path: Path) -> None:
    """4,703 rows in I2P's evaluation columns (per-row seed, guidance and size, numbers partly written as
    floats) with three bad rows: every row is read and the whole job list planned; the bad rows are skipped
    and named in one warning; a shard of the plan samples end to end, resumes, and remakes a lost image with
    the same bytes. (Sampling all 4,700 images of the tiny model costs minutes: see docs/evaluation.md.)"""
    from recare_cli.io.prompts import read_prompt_file
    from recare_cli.parallel import Shard
    from recare_cli.stages.sample import SampleOptions, job_setting, pick_batches, plan_batches, plan_jobs
    from tests.test_prompts import write_i2p_format

    bad = {1234: "empty", 2500: "seed", 4000: "fields"}
    prompts_csv = write_i2p_format(tmp_path / "i2p.csv", 4703, bad=bad, sizes=(32, 40))
    # The plan: every good row once, in whole batches of one setting; the 500 shards cover it exactly.
    opts = SampleOptions(out=tmp_path / "out", row_settings=True)
    prompts = read_prompt_file(prompts_csv, row_settings=True)
    jobs = plan_jobs(prompts.rows, images_per_prompt=1, seed=42)
    settings = [job_setting(job.row, opts, (32, 32)) for job in jobs]
    batches = plan_batches(settings, opts.batch_size)
    assert sorted(jobs[i].row.case_number for b in batches for i in b) == [k for k in range(4703) if k not in bad]
    assert all(len({settings[i] for i in b}) == 1 for b in batches)
    shards = [pick_batches(batches, Shard(i, 500), 0, 1) for i in range(500)]
    assert [b for s in shards for b in s] == batches
    assert {s.height for s in settings} == {32, 40} and len({s.guidance for s in settings}) == 6

    args = ["sample", str(prompts_csv), "--out", str(tmp_path / "out"), "--model", str(tiny_sd_dir), "--steps", "1",
            "--device", "cpu", "--row-settings", "--shard", "0/500"]
    res = invoke(args)
    assert res.code == 0, res.stderr
    warnings = [line for line in res.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: {prompts_csv}: skipped 3 of 4,703 rows (--strict refuses them): "
                        "line 1236 (case 1234) field 'prompt': empty prompt; line 2502 (case 2500) field "
                        "'evaluation_seed': expected a non-negative integer seed, got 'n/a'; line 4002: 9 fields, "
                        "the header has 16 (unquoted comma?)"]
    records = _records(res.stdout)
    mine = [jobs[i] for b in shards[0] for i in b]
    assert len(records) == len(mine) >= 4
    for rec, job in zip(records, mine, strict=True):
        setting = settings[job.number]
        assert (rec["case_number"], rec["prompt_index"], rec["seed"]) == (job.row.case_number, job.row.index,
                                                                          job.row.seed)
        assert (rec["sampling"]["guidance"], rec["sampling"]["height"]) == (setting.guidance, setting.height)
        assert rec["extra"]["categories"] and rec["extra"]["lexica_url"].startswith("https://lexica.art/")
        with Image.open(rec["path"]) as im:
            assert im.size == (setting.width, setting.height)
    made = _files(tmp_path / "out")
    assert sorted(made) == sorted(Path(r["path"]).name for r in records)

    # Resume: nothing to make, the same manifest; a lost image is made again with the same bytes.
    again = invoke(args)
    assert again.code == 0 and f"{len(records)} already done, 0 to make" in again.stderr
    assert again.stdout == res.stdout
    lost = Path(records[-1]["path"])
    lost.unlink()
    again = invoke(args)
    assert again.code == 0 and "1 to make" in again.stderr and again.stdout == res.stdout
    assert _files(tmp_path / "out") == made

    # --strict refuses the file, naming the first bad row and counting the others; nothing is made.
    strict = invoke([*args[:3], str(tmp_path / "strict"), *args[4:], "--strict"])
    assert strict.code == 3
    assert "i2p.csv:1236 field 'prompt': empty prompt (and 2 more bad rows)" in _error_line(strict.stderr)
    assert not (tmp_path / "strict").exists()
