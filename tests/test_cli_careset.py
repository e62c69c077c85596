"""mine / cluster / refine through the real entry point, in-process: stdout is data, stderr is talk."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import orjson
import pytest
from PIL import Image

from recare_cli.errors import EXIT_BAD_INPUT, EXIT_MODEL_UNAVAILABLE, EXIT_USAGE
from tests.helpers import Result, invoke


def _lines(result: Result) -> list[dict]:
    return [orjson.loads(line) for line in result.stdout.splitlines()]


def _one_line_error(result: Result, code: int, *needles: str) -> None:
    assert result.code == code, result.stderr
    assert result.stdout == b""
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1 and errors[0] == lines[-1], result.stderr  # progress lines may precede it
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]


@pytest.fixture(scope="module")
def mined(tiny_clip_dir: Path, target_images: Path) -> Result:
    result = invoke(["mine", str(target_images), "--target", "circle", "--clip", str(tiny_clip_dir),
                     "--top-k", "20", "--top-n", "40"])
    assert result.code == 0, result.stderr
    return result


def test_mine_stream(mined: Result, tiny_clip_dir: Path) -> None:
    records = _lines(mined)
    header, words = records[0], records[1:]
    assert header["format"] == "recare.candidates" and header["version"] == 1
    assert header["target"] == "circle" and header["embedding_dim"] == 32
    assert header["clip"]["name"] == str(tiny_clip_dir) and header["clip"]["fingerprint"].startswith("sha256:")
    assert header["mining"]["images"] == 12 and header["mining"]["top_k"] == 20
    assert header["provenance"][0]["command"] == "mine"
    # without --reference nothing of it is written: the stream is what it was before the option existed
    assert "reference" not in header["provenance"][0]["params"] and "ranking" not in header["mining"]
    assert not any("lift" in w for w in words)
    assert len(words) == 40
    counts = [w["count"] for w in words]
    assert counts == sorted(counts, reverse=True)
    assert sum(counts) <= 12 * 20
    assert all(len(w["embedding"]) == 32 and w["word"].isalpha() for w in words)
    assert "mined 40 candidate words" in mined.stderr


def test_mine_is_deterministic_and_cache_is_exact(mined: Result, tiny_clip_dir: Path, target_images: Path,
                                                  tmp_path: Path) -> None:
    args = ["mine", str(target_images), "--target", "circle", "--clip", str(tiny_clip_dir), "--top-k", "20",
            "--top-n", "40", "--cache-dir", str(tmp_path)]
    cold = invoke(args)
    warm = invoke(args)
    uncached = invoke([*args, "--no-cache"])
    assert "from cache" not in cold.stderr and "from cache" in warm.stderr
    assert cold.stdout == warm.stdout == uncached.stdout
    # Provenance differs only by the cache dir parameter? No: the cache dir is not recorded.
    assert cold.stdout == mined.stdout


def test_mine_with_word_list(tiny_clip_dir: Path, target_images: Path, tmp_path: Path) -> None:
    vocab = tmp_path / "words.txt"
    vocab.write_text("person\nsky\n# comment\n\nstarry sky\nperson\nwater\n")
    result = invoke(["mine", str(target_images), "-t", "circle", "--clip", str(tiny_clip_dir), "--vocab",
                     str(vocab), "--top-k", "2"])
    assert result.code == 0, result.stderr
    words = {r["word"] for r in _lines(result)[1:]}
    assert words <= {"person", "sky", "starry sky", "water"} and words


def test_mine_reads_a_path_list_on_stdin(tiny_clip_dir: Path, target_images: Path) -> None:
    paths = sorted(target_images.glob("*.png"))[:3]
    result = invoke(["mine", "-", "-t", "circle", "--clip", str(tiny_clip_dir), "-q"],
                    stdin="\n".join(map(str, paths)).encode())
    assert result.code == 0, result.stderr
    assert result.stderr == ""
    assert _lines(result)[0]["mining"]["images"] == 3


def test_mine_skips_unreadable_images_with_warnings(tiny_clip_dir: Path, target_images: Path,
                                                    tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    shutil.copytree(target_images, folder)
    (folder / "notes.png").write_text("this is text")
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buf, "JPEG")
    (folder / "cut.jpg").write_bytes(buf.getvalue()[:200])
    result = invoke(["mine", str(folder), "-t", "circle", "--clip", str(tiny_clip_dir)])
    assert result.code == 0, result.stderr
    assert "notes.png" in result.stderr and "cut.jpg" in result.stderr
    assert "skipped 2 of 14 images" in result.stderr
    assert _lines(result)[0]["mining"]["skipped"] == 2
    strict = invoke(["mine", str(folder), "-t", "circle", "--clip", str(tiny_clip_dir), "--strict"])
    _one_line_error(strict, EXIT_BAD_INPUT, "unreadable image", "cut.jpg")


def test_mine_with_a_reference_ranks_by_lift(mined: Result, tiny_clip_dir: Path, target_images: Path,
                                             tmp_path: Path) -> None:
    from recare_cli.models.tiny import draw_images

    reference = tmp_path / "reference"
    reference.mkdir()
    draw_images(reference, 10, seed=7, size=40)
    args = ["mine", str(target_images), "-t", "circle", "--clip", str(tiny_clip_dir), "--top-k", "20",
            "--top-n", "40"]
    result = invoke([*args, "--reference", str(reference)])
    assert result.code == 0, result.stderr
    header, words = _lines(result)[0], _lines(result)[1:]
    assert header["mining"]["reference_images"] == 10 and header["mining"]["ranking"] == "lift"
    assert header["provenance"][0]["params"]["reference"] == str(reference)
    assert words and all(w["lift"] > 0 for w in words)
    for w in words:  # each figure is what its counts say
        assert w["frequency"] == round(w["count"] / 12, 6)
        assert w["reference_frequency"] == round(w["reference_count"] / 10, 6)
        assert abs(w["lift"] - (w["count"] / 12 - w["reference_count"] / 10)) < 1e-6
    lifts = [w["lift"] for w in words]
    assert lifts == sorted(lifts, reverse=True)
    assert "ranked by lift against 10 reference images" in result.stderr
    # the same counts as plain mining: a word's target count does not depend on the reference
    plain = {w["word"]: w["count"] for w in _lines(mined)[1:]}
    assert all(plain.get(w["word"], w["count"]) == w["count"] for w in words)
    # a list file of the same images gives the same stream
    listed = tmp_path / "reference.txt"
    listed.write_text("\n".join(str(p) for p in sorted(reference.glob("*.png"))) + "\n")
    again = invoke([*args, "--reference", str(listed)])
    assert again.code == 0, again.stderr
    assert _lines(again)[1:] == words
    # and the stream goes on through cluster
    clustered = invoke(["cluster", "-n", "2"], stdin=result.stdout)
    assert clustered.code == 0, clustered.stderr


def test_mine_reference_bad_inputs(tiny_clip_dir: Path, target_images: Path, tmp_path: Path) -> None:
    args = ["mine", str(target_images), "-t", "circle", "--clip", str(tiny_clip_dir)]
    _one_line_error(invoke([*args, "--reference", str(tmp_path / "nope")]), EXIT_BAD_INPUT, "no such folder")
    _one_line_error(invoke([*args, "--reference", str(tmp_path)]), EXIT_BAD_INPUT, "no image files")
    (tmp_path / "bad.png").write_text("not an image")
    _one_line_error(invoke([*args, "--reference", str(tmp_path)]), EXIT_BAD_INPUT,
                    "none of the 1 reference images", str(tmp_path))
    _one_line_error(invoke([*args, "--reference", "-"]), EXIT_USAGE, "--reference")


def test_mine_bad_inputs(tiny_clip_dir: Path, tmp_path: Path) -> None:
    clip = ["--clip", str(tiny_clip_dir)]
    _one_line_error(invoke(["mine", str(tmp_path / "nope"), "-t", "x", *clip]), EXIT_BAD_INPUT, "no such folder")
    _one_line_error(invoke(["mine", str(tmp_path), "-t", "x", *clip]), EXIT_BAD_INPUT, "no image files")
    (tmp_path / "only.png").write_text("not an image")
    _one_line_error(invoke(["mine", str(tmp_path), "-t", "x", *clip]), EXIT_BAD_INPUT, "none of the 1 images")
    _one_line_error(invoke(["mine", str(tmp_path), "-t", "x", "--bogus"]), EXIT_USAGE, "--bogus",
                    "recare mine --help")
    _one_line_error(invoke(["mine", str(tmp_path), "-t", "x", "--top-k", "0"]), EXIT_USAGE, "--top-k")
    _one_line_error(invoke(["mine", str(tmp_path), "-t", "x", "--clip", str(tmp_path / "no-model")]),
                    EXIT_MODEL_UNAVAILABLE, "does not exist")
    offline = invoke(["mine", str(tmp_path), "-t", "x", "--clip", "openai/clip-vit-base-patch32"])
    _one_line_error(offline, EXIT_MODEL_UNAVAILABLE, "openai/clip-vit-base-patch32", "--clip")
    _one_line_error(invoke(["mine", str(tmp_path), "-t", "x", "--device", "tpu9"]), EXIT_USAGE, "--device")


def test_cluster_and_refine(mined: Result, tmp_path: Path) -> None:
    clustered = invoke(["cluster", "-n", "4"], stdin=mined.stdout)
    assert clustered.code == 0, clustered.stderr
    records = _lines(clustered)
    clusters = [r for r in records if r["record"] == "cluster"]
    words = [r for r in records if r["record"] == "word"]
    assert len(clusters) == 4 and len(words) == 40
    assert sum(c["status"] == "dropped" for c in clusters) == 2
    assert all(w["status"] in ("kept", "dropped") and len(w["point"]) == 2 for w in words)
    assert all((w["reason"] is None) == (w["status"] == "kept") for w in words)
    assert "mean residual" in clustered.stderr  # the summary table
    assert [p["command"] for p in records[0]["provenance"]] == ["mine", "cluster"]

    out = tmp_path / "care.json"
    refined = invoke(["refine", "-", "--alpha", "0.1", "-o", str(out)], stdin=clustered.stdout)
    assert refined.code == 0, refined.stderr
    assert refined.stdout == b""
    care = orjson.loads(out.read_bytes())
    assert care["format"] == "recare.careset" and care["target"] == "circle"
    kept = {w["word"] for w in words if w["status"] == "kept"}
    assert set(care["words"]) <= kept
    assert {r["word"] for r in care["removed"]} | set(care["words"]) == {w["word"] for w in words}
    # the prompts are derived from the words, through the templates the file records
    assert care["templates"] == {"anchor": "A {}", "retain": "A photo of {}"}
    assert "anchor_prompts" not in care and "retain_prompts" not in care
    assert [p["command"] for p in care["provenance"]] == ["mine", "cluster", "refine"]

    # --space embedding: k-means on the unit embeddings; recorded in the header
    by_embedding = invoke(["cluster", "-n", "4", "--space", "embedding"], stdin=mined.stdout)
    assert by_embedding.code == 0, by_embedding.stderr
    header = _lines(by_embedding)[0]
    assert header["clustering"]["space"] == "embedding" and records[0]["clustering"]["space"] == "tsne"
    assert header["provenance"][-1]["params"]["space"] == "embedding"
    _one_line_error(invoke(["cluster", "--space", "umap"], stdin=mined.stdout), EXIT_USAGE, "--space")

    ref = invoke(["refine", str(out), "--format", "reference"])
    assert orjson.loads(ref.stdout) == {"circle_care_word": [f"A {w}" for w in care["words"]],
                                        "circle_care_word_photo": [f"A photo of {w}" for w in care["words"]]}
    back = invoke(["refine", "-"], stdin=ref.stdout)
    assert orjson.loads(back.stdout)["words"] == care["words"]


def test_cluster_bad_inputs(mined: Result) -> None:
    lines = mined.stdout.splitlines(keepends=True)
    few = b"".join(lines[:4])
    _one_line_error(invoke(["cluster", "-n", "6"], stdin=few), EXIT_BAD_INPUT, "only 3 candidate words",
                    "6 clusters")
    cut = b"".join(lines[:5]) + lines[5][: len(lines[5]) // 2]
    _one_line_error(invoke(["cluster"], stdin=cut), EXIT_BAD_INPUT, "<stdin>:6", "not valid JSON")
    other = orjson.loads(lines[3])
    other["word"] = "zzz"
    other["embedding"] = np.zeros(512).tolist()
    mixed = b"".join(lines[:10]) + orjson.dumps(other) + b"\n"
    _one_line_error(invoke(["cluster", "-n", "2"], stdin=mixed), EXIT_BAD_INPUT, "<stdin>:11",
                    "field 'embedding'", "different CLIP")
    _one_line_error(invoke(["cluster"], stdin=b""), EXIT_BAD_INPUT, "empty input")
    _one_line_error(invoke(["refine"], stdin=mined.stdout), EXIT_BAD_INPUT, "run `recare cluster`")
    _one_line_error(invoke(["cluster", "-n", "1"], stdin=mined.stdout), EXIT_USAGE, "--clusters")


def test_help_and_version() -> None:
    result = invoke(["--version"])
    assert result.code == 0 and result.text.startswith("recare ")
    for command in ("mine", "cluster", "refine", "demo"):
        result = invoke([command, "--help"])
        assert result.code == 0 and "Example" in result.text


def _careset(words: list[str], **extra: object) -> dict[str, object]:
    return {"format": "recare.careset", "version": 1, "target": "nudity", "property": "object", "words": words,
            **extra}


def test_a_hand_edited_word_list_is_what_erase_and_the_reference_layout_use(tmp_path: Path) -> None:
    """Deleting or replacing a word in care.json's words is the whole edit: the prompts follow."""
    from recare_cli.stages.erase import read_care

    made = invoke(["refine", "-"], stdin=orjson.dumps(_careset(["person", "beach", "sand"])))
    assert made.code == 0, made.stderr
    care = orjson.loads(made.stdout)
    care["words"] = ["person", "dog"]  # beach deleted, sand replaced
    path = tmp_path / "care.json"
    path.write_bytes(orjson.dumps(care))
    parsed, _ = read_care(str(path), "nudity")
    assert parsed.anchor_prompts == ["A person", "A dog"]
    assert parsed.retain_prompts == ["A photo of person", "A photo of dog"]
    ref = invoke(["refine", str(path), "--format", "reference"])
    assert orjson.loads(ref.stdout) == {"nudity_care_word": ["A person", "A dog"],
                                        "nudity_care_word_photo": ["A photo of person", "A photo of dog"]}


def test_prompt_lists_that_disagree_with_the_words_are_refused(tmp_path: Path) -> None:
    """A file that still spells out prompts for a word no longer in its words (a care.json of the first format
    edited by hand, or a reference file with one list edited) is refused, naming the word."""
    stale = _careset(["person"], anchor_prompts=["A person", "A beach"],
                     retain_prompts=["A photo of person", "A photo of beach"])
    _one_line_error(invoke(["refine", "-"], stdin=orjson.dumps(stale)), EXIT_BAD_INPUT, "field 'anchor_prompts'",
                    "'A beach'")
    replaced = _careset(["person", "dog"], anchor_prompts=["A person", "A beach"])
    _one_line_error(invoke(["refine", "-"], stdin=orjson.dumps(replaced)), EXIT_BAD_INPUT, "CARE word 'dog'")
    reference = {"nudity_care_word": ["A person"], "nudity_care_word_photo": ["A photo of person", "A photo of man"]}
    _one_line_error(invoke(["refine", "-"], stdin=orjson.dumps(reference)), EXIT_BAD_INPUT,
                    "field 'nudity_care_word_photo'", "'A photo of man'")
    # prompts spelled out by hand that follow the words are honoured as written
    own = _careset(["person"], anchor_prompts=["A smiling person"])
    done = invoke(["refine", "-"], stdin=orjson.dumps(own))
    assert done.code == 0, done.stderr
    assert orjson.loads(done.stdout)["anchor_prompts"] == ["A smiling person"]


def test_a_clip_folder_with_its_own_word_list_is_mined_over_it(tiny_clip_dir: Path, target_images: Path,
                                                               tmp_path: Path) -> None:
    """A model folder that ships recare-vocabulary.txt (the toy world's CLIP knows only its world's words) is
    mined over that list by default; --vocab still wins."""
    from recare_cli.io.wordlist import VOCABULARY_FILE

    clip = tmp_path / "clip"
    shutil.copytree(tiny_clip_dir, clip)
    (clip / VOCABULARY_FILE).write_text("person\nsky\nwater\ngrass\n")
    args = ["mine", str(target_images), "-t", "circle", "--clip", str(clip), "--top-k", "2", "--top-n", "4"]
    result = invoke(args)
    assert result.code == 0, result.stderr
    header, *words = _lines(result)
    assert header["mining"]["vocabulary"] == str(clip / VOCABULARY_FILE)
    assert header["mining"]["vocabulary_size"] == 4
    assert {w["word"] for w in words} <= {"person", "sky", "water", "grass"}
    assert VOCABULARY_FILE in result.stderr  # says which list it took
    other = tmp_path / "words.txt"
    other.write_text("cat\ndog\n")
    chosen = invoke([*args, "--vocab", str(other)])
    assert _lines(chosen)[0]["mining"]["vocabulary_size"] == 2


def test_mining_names_its_image_source_when_nothing_is_readable(tiny_clip_dir: Path, tmp_path: Path) -> None:
    """The library call names the images' source from its own argument, whatever provenance it records."""
    from recare_cli.errors import BadInputError
    from recare_cli.stages.mine import MineOptions, run_mining

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    words = tmp_path / "words.txt"
    words.write_text("cat\ndog\n")
    opts = MineOptions(images="my-target-images/", target="circle", clip=str(tiny_clip_dir), device="cpu",
                       vocab=str(words), no_cache=True)
    with pytest.raises(BadInputError, match="my-target-images/: none of the 1 images could be read"):
        run_mining(opts, [broken])


def test_refine_warns_about_stream_options_given_for_a_careset() -> None:
    """--alpha on a CARE-set file does nothing; said when the option was given, even at its default value."""
    care = orjson.dumps(_careset(["person"]))
    quiet = invoke(["refine", "-"], stdin=care)
    assert quiet.code == 0 and "to clustered streams" not in quiet.stderr
    given = invoke(["refine", "-", "--alpha", "0.01"], stdin=care)
    assert given.code == 0 and "--alpha applies to clustered streams" in given.stderr


def test_word_embeddings_as_npy_follow_the_stream(mined: Result, tiny_clip_dir: Path, target_images: Path,
                                                 tmp_path: Path) -> None:
    """--embeddings-npy writes the stream's word embeddings (row i = the i-th word record) and leaves the stream
    byte-identical; cluster writes the same rows for its stream."""
    npy = tmp_path / "words.npy"
    res = invoke(["mine", str(target_images), "--target", "circle", "--clip", str(tiny_clip_dir),
                  "--top-k", "20", "--top-n", "40", "--embeddings-npy", str(npy)])
    assert res.code == 0, res.stderr
    assert res.stdout == mined.stdout
    words = _lines(mined)[1:]
    array = np.load(npy, allow_pickle=False)
    assert array.dtype == np.float32 and array.shape == (40, 32)
    for row, record in zip(array, words, strict=True):
        assert row.tolist() == np.float32(record["embedding"]).tolist()
    clustered_npy = tmp_path / "clustered.npy"
    clustered = invoke(["cluster", "-n", "4", "--embeddings-npy", str(clustered_npy)], stdin=mined.stdout)
    assert clustered.code == 0, clustered.stderr
    rows = _lines(clustered)
    out_words = [r for r in rows[1:] if r.get("record", "word") == "word" and "embedding" in r]
    assert np.array_equal(np.load(clustered_npy), np.float32([w["embedding"] for w in out_words]))


@pytest.mark.parametrize(("where", "code", "needle"), [
    ("-", EXIT_USAGE, "--embeddings-npy needs a file"),
    ("folder", EXIT_BAD_INPUT, "is a folder"),
    ("missing/words.npy", EXIT_BAD_INPUT, "does not exist"),
    ("same", EXIT_USAGE, "name the same file"),
])
def test_a_bad_embeddings_npy_destination_is_refused_before_any_work(mined: Result, tmp_path: Path, where: str,
                                                                     code: int, needle: str) -> None:
    (tmp_path / "folder").mkdir()
    out = tmp_path / "clustered.jsonl"
    dest = {"-": "-", "same": str(out)}.get(where, str(tmp_path / where))
    res = invoke(["cluster", "-n", "4", "-o", str(out), "--embeddings-npy", dest], stdin=mined.stdout)
    _one_line_error(res, code, needle)
    assert not out.exists()
