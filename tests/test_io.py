"""File formats and reading rules."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import orjson
import pytest
from PIL import Image

from recare_cli.errors import BadInputError, RefusedError
from recare_cli.io import cache
from recare_cli.io.atomic import atomic_write_bytes
from recare_cli.io.candidates import parse_candidates
from recare_cli.io.careset import CareSet, parse_careset, reference_key
from recare_cli.io.images import list_images, load_image, resolve_image_inputs
from recare_cli.io.jsonl import parse_jsonl
from recare_cli.io.streams import open_output


def test_atomic_write_keeps_old_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "care.json"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), open_output(target, binary=False) as fh:
        fh.write(b"half of the new")
        raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["care.json"]  # no temporary left
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"


def test_atomic_output_has_the_mode_a_plain_open_gives(tmp_path: Path) -> None:
    import os
    import stat

    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "care.json", b"{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "care.json").stat().st_mode) == 0o644  # not mkstemp's private 0600


def test_output_in_missing_directory_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="does not exist"), open_output(tmp_path / "no" / "x.json",
                                                                             binary=False):
        pass


def test_binary_output_refuses_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    class Tty(io.BytesIO):
        def isatty(self) -> bool:
            return True

    class FakeStdout:
        buffer = Tty()

        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stdout", FakeStdout())
    with pytest.raises(RefusedError, match="terminal"), open_output("-", binary=True):
        pass


def _save(img: Image.Image, path: Path, **kw: object) -> Path:
    img.save(path, **kw)
    return path


def test_image_modes_and_orientation(tmp_path: Path) -> None:
    rgb = Image.new("RGB", (8, 4), (10, 200, 30))
    paths = {
        "png": _save(rgb, tmp_path / "a.png"),
        "jpg": _save(rgb, tmp_path / "b.JPG", quality=95),
        "webp": _save(rgb, tmp_path / "c.webp", lossless=True),
        "grey": _save(Image.new("L", (8, 4), 77), tmp_path / "d.png"),
        "rgba": _save(Image.new("RGBA", (8, 4), (0, 0, 0, 0)), tmp_path / "e.png"),
    }
    pal = Image.new("P", (8, 4), 1)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    paths["palette"] = _save(pal, tmp_path / "f.png", transparency=0)
    sixteen = Image.fromarray(np.array([[0, 32896, 65535, 1000]], dtype=np.uint16))
    paths["16bit"] = _save(sixteen, tmp_path / "g.png")
    assert load_image(paths["png"]).getpixel((0, 0)) == (10, 200, 30)
    assert load_image(paths["webp"]).getpixel((0, 0)) == (10, 200, 30)
    assert load_image(paths["grey"]).getpixel((0, 0)) == (77, 77, 77)
    assert load_image(paths["rgba"]).getpixel((0, 0)) == (255, 255, 255)  # transparent → white
    assert load_image(paths["palette"]).getpixel((0, 0)) == (255, 0, 0)
    row = [load_image(paths["16bit"]).getpixel((x, 0))[0] for x in range(4)]
    assert row == [0, 128, 255, 4]  # scaled by 257, not clipped at 255
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    _save(rgb, tmp_path / "h.jpg", exif=exif)
    assert load_image(tmp_path / "h.jpg").size == (4, 8)
    listed = [p.name for p in list_images(tmp_path)]
    assert listed == sorted(listed) and "b.JPG" in listed


def test_unreadable_images_raise_oserror(tmp_path: Path) -> None:
    fake = tmp_path / "fake.png"
    fake.write_text("I am text")
    full = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(full, "JPEG")
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(full.getvalue()[: len(full.getvalue()) // 2])
    for path in (fake, cut):
        with pytest.raises(OSError):
            load_image(path)


def test_image_inputs_errors(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="no such folder"):
        resolve_image_inputs(str(tmp_path / "missing"), recursive=False, as_list=False)
    with pytest.raises(BadInputError, match="no image files"):
        resolve_image_inputs(str(tmp_path), recursive=False, as_list=False)
    (tmp_path / "sub").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "sub" / "x.png")
    assert resolve_image_inputs(str(tmp_path), recursive=True, as_list=False) == [tmp_path / "sub" / "x.png"]
    listing = tmp_path / "list.txt"
    listing.write_text("# my images\nsub/x.png\n\n")
    assert resolve_image_inputs(str(listing), recursive=False, as_list=True) == [tmp_path / "sub" / "x.png"]
    with pytest.raises(BadInputError, match=r"not a folder \(for a file listing image paths, add --list\)"):
        resolve_image_inputs(str(listing), recursive=False, as_list=False)


def test_jsonl_cut_line_names_the_line() -> None:
    data = b'{"a": 1}\n\n{"b": [1, 2\n'
    with pytest.raises(BadInputError, match=r"^<x>:3: not valid JSON"):
        list(parse_jsonl(data, "<x>"))


def _header(dim: int = 3) -> dict:
    return {"record": "header", "format": "recare.candidates", "version": 1, "target": "t",
            "embedding_dim": dim, "target_embedding": [1.0] + [0.0] * (dim - 1), "clip": {}}


def _stream(*records: dict) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in records)


def test_candidates_validation() -> None:
    word = {"record": "word", "word": "person", "count": 3, "embedding": [0.0, 1.0, 0.0]}
    s = parse_candidates(_stream(_header(), word), "s")
    assert [w["word"] for w in s.words] == ["person"]
    wrong = dict(word, word="cat", embedding=[0.0] * 5)
    with pytest.raises(BadInputError, match=r"^s:3 field 'embedding': has 5 values .*different CLIP"):
        parse_candidates(_stream(_header(), word, wrong), "s")
    with pytest.raises(BadInputError, match=r"^s:1: the first record must be the header"):
        parse_candidates(_stream(word), "s")
    with pytest.raises(BadInputError, match="duplicate word"):
        parse_candidates(_stream(_header(), word, word), "s")
    with pytest.raises(BadInputError, match="newer"):
        parse_candidates(_stream(dict(_header(), version=99)), "s")
    with pytest.raises(BadInputError, match="empty input"):
        parse_candidates(b"", "s")


def test_careset_layouts_round_trip() -> None:
    care = CareSet.from_words("Van Gogh", "style", ["stars", "sky"])
    ref = care.to_reference()
    assert ref == {"vangogh_care_word": ["A stars", "A sky"],
                   "vangogh_care_word_painting": ["A painting of stars", "A painting of sky"]}
    back = parse_careset(ref, source="r")
    assert (back.words, back.property, back.retain_prompts) == (["stars", "sky"], "style", care.retain_prompts)
    ours = parse_careset(orjson.loads(orjson.dumps(care.to_recare())), source="o")
    assert ours.words == care.words and ours.anchor_prompts == care.anchor_prompts
    assert reference_key(" Nudity! ") == "nudity"
    two = {"a_care_word": ["A x"], "a_care_word_photo": ["A photo of x"],
           "b_care_word": ["A y"], "b_care_word_photo": ["A photo of y"]}
    with pytest.raises(BadInputError, match="several"):
        parse_careset(two, source="r")
    assert parse_careset(two, source="r", target="b").words == ["y"]
    with pytest.raises(BadInputError, match="field 'words'"):
        parse_careset({"format": "recare.careset", "version": 1, "target": "t", "words": [""]}, source="o")


def test_vocab_cache_rejects_corruption(tmp_path: Path) -> None:
    arr = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    digest = cache.vocabulary_digest(list("abcde"), [[1], [2], [3], [4], [5]])
    key = cache.cache_key("sha256:model", digest)
    path = cache.store(tmp_path, key, digest, arr)
    np.testing.assert_array_equal(cache.load_cached(tmp_path, key, digest, 5), arr)
    assert cache.load_cached(tmp_path, key, digest, 6) is None  # other vocabulary size
    assert cache.load_cached(tmp_path, cache.cache_key("sha256:other", digest), digest, 5) is None
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0xFF  # flip bits in the data
    path.write_bytes(bytes(raw))
    assert cache.load_cached(tmp_path, key, digest, 5) is None
    path.write_bytes(b"garbage")
    assert cache.load_cached(tmp_path, key, digest, 5) is None


def test_sha256_file_matches_hashlib_across_read_blocks(tmp_path: Path) -> None:
    from recare_cli.io.digest import sha256_bytes, sha256_file

    # 2.5 blocks of the reader's 1 MiB: the last, short block and the block boundary both count
    data = bytes(range(256)) * (10 * 1024) + b"tail"
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    naive = "sha256:" + hashlib.sha256(data).hexdigest()
    assert sha256_file(path) == naive == sha256_bytes(data)
    assert sha256_file(str(path)) == naive
    path.write_bytes(data[:-1])
    assert sha256_file(path) != naive


def test_plural_counts() -> None:
    from recare_cli.console import plural

    assert [plural(n, "image") for n in (0, 1, 2, 1024)] == ["0 images", "1 image", "2 images", "1,024 images"]
