"""Prompt files as the field publishes them (tests/data/prompts, copied from the field), JSONL, text, and bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from recare_cli.errors import BadInputError, UsageError
from recare_cli.io.prompts import detect_format, read_prompt_file, read_prompts

PROMPTS = Path(__file__).resolve().parent / "data" / "prompts"


def test_vangogh_csv_unnamed_index_and_quoted_commas() -> None:
    rows = read_prompts(PROMPTS / "vangogh_prompts.csv")
    assert len(rows) == 50
    first = rows[0]
    assert first.prompt == "A Wheatfield, with Cypresses by Vincent van Gogh"  # quoted comma kept
    assert (first.index, first.line, first.seed, first.case_number) == (0, 2, 2219, 0)
    assert first.extra == {"artist": "Vincent van Gogh"}  # the unnamed index column is dropped
    assert [r.case_number for r in rows] == list(range(50))


def test_small_imagenet_csv_keeps_the_class_column() -> None:
    rows = read_prompts(PROMPTS / "small_imagenet_prompts.csv")
    assert len(rows) == 100
    assert rows[0].prompt == "Image of cassette player"
    assert rows[0].seed == 4068 and rows[1].seed == 4667
    assert rows[0].extra == {"class": "cassette player"}
    assert len({r.extra["class"] for r in rows}) == 10


def test_coco_csv_with_seed_in_another_position() -> None:
    rows = read_prompts(PROMPTS / "coco_30k_first200.csv")
    assert len(rows) == 200
    assert rows[0].prompt == "A bicycle replica with a clock as the front wheel."
    assert rows[0].seed == 41337 and rows[0].case_number == 0
    assert rows[0].extra == {"source": "coco-30k", "coco_id": "203564"}


def test_csv_line_numbers_follow_quoted_newlines(tmp_path: Path) -> None:
    f = tmp_path / "p.csv"
    f.write_text('prompt,evaluation_seed\n"two\nlines",1\nok,2.0\n"bad",x\n', "utf-8")
    with pytest.raises(BadInputError, match=r"p\.csv:5 field 'evaluation_seed'"):
        read_prompts(f, strict=True)
    prompts = read_prompt_file(f)
    assert [(r.line, r.prompt, r.seed) for r in prompts.rows] == [(2, "two\nlines", 1), (4, "ok", 2)]
    assert [(b.line, b.field) for b in prompts.bad] == [(5, "evaluation_seed")]


def test_jsonl_and_text_and_detection(tmp_path: Path) -> None:
    j = tmp_path / "p.jsonl"
    j.write_text('{"prompt": "a cat", "evaluation_seed": 7, "case_number": "c1", "tag": 3}\n\n'
                 '{"prompt": "a dog"}\n', "utf-8")
    rows = read_prompts(j)
    assert [(r.prompt, r.seed, r.case_number, r.line) for r in rows] == [("a cat", 7, "c1", 1),
                                                                          ("a dog", None, None, 3)]
    assert rows[0].extra == {"tag": 3}
    t = tmp_path / "p.txt"
    t.write_text("  a cat  \n\na dog, sitting\n", "utf-8")
    assert [(r.index, r.line, r.prompt) for r in read_prompts(t)] == [(0, 1, "a cat"), (1, 3, "a dog, sitting")]
    assert detect_format("-", '{"prompt": "x"}') == "jsonl"
    assert detect_format("-", ",case_number,prompt\n0,0,x") == "csv"
    assert detect_format("-", "a photo, of a cat\n") == "text"
    assert detect_format("x.data", "prompt\nx") == "csv"


@pytest.mark.parametrize(("name", "content", "message"), [
    ("noprompt.csv", "case_number,text\n0,a cat\n",
     r"noprompt\.csv:1: no 'prompt' column .*columns: case_number, text"),
    ("empty.csv", "", r"empty\.csv: no prompts found"),
    ("header_only.csv", "prompt,evaluation_seed\n", r"header_only\.csv: no prompts found"),
    ("blank.txt", "\n  \n", r"blank\.txt: no prompts found"),
    ("dupes.csv", "prompt,seed,seed\na,1,2\n", r"dupes\.csv:1: duplicate column\(s\) seed"),
    ("binary.txt", b"\xff\xfe\x00a", r"binary\.txt: not UTF-8"),
])
def test_bad_prompt_files(tmp_path: Path, name: str, content: str | bytes, message: str) -> None:
    """Problems of the whole file stop the run, strict or not."""
    f = tmp_path / name
    if isinstance(content, bytes):
        f.write_bytes(content)
    else:
        f.write_text(content, "utf-8")
    for strict in (False, True):
        with pytest.raises(BadInputError, match=message):
            read_prompts(f, strict=strict)


# A good row, then one bad row: skipped and named without --strict, refused (the same message) with it.
@pytest.mark.parametrize(("name", "content", "line", "message"), [
    ("cell.csv", "prompt,evaluation_seed\na,1\n ,2\n", 3, r"cell\.csv:3 field 'prompt': empty prompt"),
    ("fields.csv", "prompt,evaluation_seed\na,1\na, b,2\n", 3, r"fields\.csv:3: 3 fields, the header has 2"),
    ("short.csv", "prompt,evaluation_seed\na,1\nb\n", 3, r"short\.csv:3: 1 fields, the header has 2"),
    ("float.csv", "prompt,evaluation_seed\na,1\nb,4.5\n", 3, r"float\.csv:3 field 'evaluation_seed': .*'4\.5'"),
    ("neg.jsonl", '{"prompt": "a"}\n{"prompt": "b", "evaluation_seed": -1}\n', 2,
     r"neg\.jsonl:2 field 'evaluation_seed'"),
    ("cut.jsonl", '{"prompt": "a"}\n{"prompt": "b\n', 2, r"cut\.jsonl:2: not valid JSON"),
    ("list.jsonl", '{"prompt": "a"}\n["b"]\n', 2, r"list\.jsonl:2: expected a JSON object"),
    ("noprompt.jsonl", '{"prompt": "a"}\n{"text": "a"}\n', 2, r"noprompt\.jsonl:2 field 'prompt': missing"),
    ("number.jsonl", '{"prompt": "a"}\n{"prompt": 3}\n', 2, r"number\.jsonl:2 field 'prompt': expected a string"),
])
def test_a_bad_row_is_skipped_and_named_or_refused_with_strict(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                               name: str, content: str, line: int,
                                                               message: str) -> None:
    f = tmp_path / name
    f.write_text(content, "utf-8")
    with pytest.raises(BadInputError, match=message):
        read_prompts(f, strict=True)
    rows = read_prompts(f)
    assert [(r.index, r.prompt) for r in rows] == [(0, "a")]
    warning = capsys.readouterr().err
    assert f"warning: {f}: skipped 1 of 2 rows (--strict refuses them): line {line}" in warning
    assert warning.count("warning:") == 1


def test_the_skip_warning_names_ten_rows_and_counts_the_rest(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Thousands of rows, 25 bad ones: one warning, the first 10 named (line, case number, field, reason),
    the total counted; --strict names the first and counts the others."""
    lines = ["case_number,prompt,evaluation_seed"]
    bad = set(range(100, 3000, 116))
    assert len(bad) == 25
    for k in range(3000):
        lines.append(f"{k},,{k}" if k in bad else f"{k},prompt {k},{k}")
    f = tmp_path / "many.csv"
    f.write_text("\n".join(lines) + "\n", "utf-8")
    rows = read_prompts(f)
    assert len(rows) == 2975 and not bad & {r.index for r in rows}
    warnings = [w for w in capsys.readouterr().err.splitlines() if w.startswith("warning:")]
    assert len(warnings) == 1
    named = sorted(bad)[:10]
    expected = "; ".join(f"line {k + 2} (case {k}) field 'prompt': empty prompt" for k in named)
    assert warnings[0] == f"warning: {f}: skipped 25 of 3,000 rows (--strict refuses them): {expected}; and 15 more"
    with pytest.raises(BadInputError, match=r"many\.csv:102 field 'prompt': empty prompt \(and 24 more bad rows\)"):
        read_prompts(f, strict=True)


def test_a_file_of_bad_rows_only_stops_the_run(tmp_path: Path) -> None:
    f = tmp_path / "allbad.csv"
    f.write_text("prompt,evaluation_seed\n,1\n", "utf-8")
    with pytest.raises(BadInputError, match=r"allbad\.csv: no usable prompts: the only row is bad \(line 2 field "
                                            r"'prompt': empty prompt\)"):
        read_prompts(f)
    f.write_text("prompt,evaluation_seed\n" + "a,x\n" * 5, "utf-8")
    with pytest.raises(BadInputError, match=r"all 5 rows are bad \(line 2 field 'evaluation_seed': .*; line 4 .*; …\)"):
        read_prompts(f)


def test_skipped_rows_keep_their_place(tmp_path: Path) -> None:
    """A skipped row still counts in the indices (file names of prompts without case numbers), so fixing it
    later does not rename the other rows' images."""
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "a"}\n{"prompt": ""}\n\n{"prompt": "c"}\n', "utf-8")
    broken = read_prompt_file(f)
    f.write_text('{"prompt": "a"}\n{"prompt": "b"}\n\n{"prompt": "c"}\n', "utf-8")
    fixed = read_prompt_file(f)
    assert [(r.index, r.line) for r in broken.rows] == [(0, 1), (2, 4)]
    assert [(r.index, r.line) for r in fixed.rows] == [(0, 1), (1, 2), (2, 4)]


def test_numbers_written_as_floats(tmp_path: Path) -> None:
    """pandas writes integer columns with a missing value as floats: seeds, case numbers and sizes as
    "42.0" are the integers they name (exactly, also past float precision); guidance "7.0" is 7.0."""
    f = tmp_path / "p.csv"
    f.write_text("case_number,prompt,evaluation_seed,evaluation_guidance,sd_image_height,sd_image_width\n"
                 "3.0,a,42.0,7.0,512.0,512\n"
                 "4,b,9007199254740993.0,7.5,,64.00\n"
                 "c5,c,4261553411,,,\n", "utf-8")
    rows = read_prompts(f, row_settings=True)
    assert [(r.case_number, r.seed, r.guidance, r.height, r.width) for r in rows] == [
        (3, 42, 7.0, 512, 512), (4, 2**53 + 1, 7.5, None, 64), ("c5", 4261553411, None, None, None)]
    assert all(r.extra == {} for r in rows)


def test_case_numbers_written_as_floats_are_integers(tmp_path: Path) -> None:
    """A case number "3.0" names case 3 (images case-3_…), as its seed "42.0" names seed 42."""
    f = tmp_path / "p.csv"
    f.write_text("case_number,prompt\n3.0,a\n4.00,b\n", "utf-8")
    assert [r.case_number for r in read_prompts(f)] == [3, 4]


def test_seed_aliases_and_which_wins(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A seed column is evaluation_seed, else seed, else I2P's sd_seed; the columns that lose stay in extra,
    and one line says which column is used."""
    f = tmp_path / "p.csv"
    f.write_text("prompt,seed\na,5\n", "utf-8")
    assert [(r.seed, r.extra) for r in read_prompts(f)] == [(5, {})]
    f.write_text("prompt,sd_seed,seed,evaluation_seed\na,1,2,3\nb,1,2,\n", "utf-8")
    capsys.readouterr()
    rows = read_prompts(f)
    assert [(r.seed, r.extra) for r in rows] == [(3, {"sd_seed": "1", "seed": "2"}),
                                                 (None, {"sd_seed": "1", "seed": "2"})]
    assert (f"{f}: the seed comes from column 'evaluation_seed'; 'seed', 'sd_seed' kept as extra"
            in capsys.readouterr().err)
    j = tmp_path / "p.jsonl"
    j.write_text('{"prompt": "a", "seed": 7.0, "sd_seed": 1}\n{"prompt": "b", "sd_seed": 8}\n', "utf-8")
    assert [(r.seed, r.extra) for r in read_prompts(j)] == [(7, {"sd_seed": 1}), (8, {})]


def test_row_settings_are_read_only_when_asked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Without row_settings, guidance and size columns are extra, unchecked, and one line says they are not
    used; with it they are parsed (guidance wins as seeds do), and a bad value is a bad row."""
    f = tmp_path / "p.csv"
    f.write_text("prompt,guidance,sd_guidance,height,width\na,7,9,64,32\nb,,9,500,32\nc,-1,9,,\n", "utf-8")
    rows = read_prompts(f)
    assert [r.prompt for r in rows] == ["a", "b", "c"]
    assert rows[0].extra == {"guidance": "7", "sd_guidance": "9", "height": "64", "width": "32"}
    assert rows[0].guidance is None and rows[0].height is None
    assert "per-row settings in column(s) guidance, sd_guidance, height, width are not used" in capsys.readouterr().err
    prompts = read_prompt_file(f, row_settings=True)
    assert [(r.prompt, r.guidance, r.height, r.width, r.extra) for r in prompts.rows] == [
        ("a", 7.0, 64, 32, {"sd_guidance": "9"})]
    assert [b.describe() for b in prompts.bad] == [
        "line 3 field 'height': expected an image size in pixels, a multiple of 8, got '500'",
        "line 4 field 'guidance': expected a non-negative guidance scale, got '-1'"]


I2P_COLUMNS = ["", "prompt", "categories", "hard", "inappropriate_percentage", "nudity_percentage",
               "q16_percentage", "sd_safety_percentage", "prompt_toxicity", "lexica_url", "evaluation_seed",
               "evaluation_guidance", "sd_image_width", "sd_image_height", "sd_model", "case_number"]
_SUBJECTS = ["a portrait of a woman", "a man standing in the rain", "two people on a beach", "a dancer",
             "a crowd at night", "a sleeping figure", "an old sailor", "a girl reading"]
_STYLES = ["oil painting", "highly detailed, trending on artstation", "by edward hopper", "photograph, 8 k",
           "concept art, matte painting", "charcoal sketch"]
_CATEGORIES = ["sexual", "violence", "self-harm", "hate, harassment", "shocking", "illegal activity"]


def write_i2p_format(path: Path, n: int, *, bad: dict[int, str] | None = None,
                     sizes: tuple[int, ...] = (512,)) -> Path:
    """A synthetic prompt file in the columns of ESD's data/unsafe-prompts4703.csv (I2P with evaluation
    columns): pandas' unnamed index, quoted prompts with commas, I2P's metadata, per-row seed, guidance and
    size, case numbers. Every fifth row writes its numbers as floats. ``bad``: row -> "empty" (empty
    prompt), "seed" (a seed that is not a number) or "fields" (a record cut short). Deterministic."""
    import csv
    import random

    rng = random.Random(0)
    bad = bad or {}
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(I2P_COLUMNS)
        for k in range(n):
            prompt = f"{_SUBJECTS[k % len(_SUBJECTS)]} {k}, {_STYLES[k % len(_STYLES)]}"
            seed, guidance = rng.randrange(2**32), rng.choice([7] * 6 + [6, 8, 10, 12, 13])
            size = sizes[k % 7 % len(sizes)] if k % 7 == 3 else sizes[0]
            as_float = k % 5 == 0
            num = (lambda v: f"{v}.0") if as_float else str
            row = [str(k), prompt, _CATEGORIES[k % len(_CATEGORIES)], str(k % 2), f"{rng.randrange(11) * 10}.0",
                   f"{rng.randrange(11) * 10}.0", f"{rng.randrange(11) * 10}.0", f"{rng.randrange(11) * 10}.0",
                   f"{rng.random():.8f}", f"https://lexica.art/prompt/{rng.getrandbits(64):016x}", num(seed),
                   num(guidance), num(size), num(size), "stable-diffusion-v1-4", str(k)]
            kind = bad.get(k)
            if kind == "empty":
                row[1] = ""
            elif kind == "seed":
                row[10] = "n/a"
            elif kind == "fields":
                row = row[:9]
            writer.writerow(row)
    return path


def test_the_i2p_format_fixture_has_the_real_header() -> None:
    """tests/data/prompts/i2p_format_sample.csv is write_i2p_format's output (20 rows, row 5's prompt empty)
    and its header is the real file's (read from ESD's data/unsafe-prompts4703.csv)."""
    fixture = PROMPTS / "i2p_format_sample.csv"
    header = fixture.read_text("utf-8").splitlines()[0]
    assert header == ",".join(I2P_COLUMNS)
    assert header == (",prompt,categories,hard,inappropriate_percentage,nudity_percentage,q16_percentage,"
                      "sd_safety_percentage,prompt_toxicity,lexica_url,evaluation_seed,evaluation_guidance,"
                      "sd_image_width,sd_image_height,sd_model,case_number")


def test_i2p_format_reads_with_its_empty_prompt_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prompts = read_prompt_file(PROMPTS / "i2p_format_sample.csv", row_settings=True)
    assert prompts.records == 20 and len(prompts.rows) == 19
    assert [b.describe() for b in prompts.bad] == ["line 7 (case 5) field 'prompt': empty prompt"]
    first = prompts.rows[0]
    assert first.prompt == "a portrait of a woman 0, oil painting" and first.case_number == 0
    assert (first.seed, first.guidance, first.height, first.width) == (3626764237, 6.0, 512, 512)  # "….0"
    assert set(first.extra) == {"categories", "hard", "inappropriate_percentage", "nudity_percentage",
                                "q16_percentage", "sd_safety_percentage", "prompt_toxicity", "lexica_url",
                                "sd_model"}
    assert [r.case_number for r in prompts.rows] == [k for k in range(20) if k != 5]
    # Without row settings the three setting columns are carried as extra.
    plain = read_prompt_file(PROMPTS / "i2p_format_sample.csv")
    assert {"evaluation_guidance", "sd_image_width", "sd_image_height"} <= set(plain.rows[0].extra)
    # The fixture is the generator's output.
    assert write_i2p_format(tmp_path / "again.csv", 20, bad={5: "empty"}).read_bytes() == (
        PROMPTS / "i2p_format_sample.csv").read_bytes()


def test_the_raw_i2p_columns(tmp_path: Path) -> None:
    """I2P as its authors publish it: no case_number, sd_seed and sd_guidance instead of the evaluation
    columns."""
    f = tmp_path / "i2p.csv"
    f.write_text("prompt,categories,hard,inappropriate_percentage,nudity_percentage,q16_percentage,"
                 "sd_safety_percentage,prompt_toxicity,lexica_url,sd_seed,sd_guidance,sd_image_width,"
                 "sd_image_height,sd_model\n"
                 '"a woman, oil painting",sexual,1,60.0,40.0,50.0,20.0,0.17,https://lexica.art/prompt/x,'
                 "4261553411,13,512,512,stable-diffusion-v1-4\n", "utf-8")
    (row,) = read_prompts(f, row_settings=True)
    assert (row.prompt, row.seed, row.guidance, row.height, row.width, row.case_number) == (
        "a woman, oil painting", 4261553411, 13.0, 512, 512, None)


def test_format_csv_reads_back(tmp_path: Path) -> None:
    from recare_cli.io.prompts import format_csv

    rows = [{"prompt": 'A photo of "person", standing\nby a lake', "evaluation_seed": 42, "case_number": 0,
             "concept": "person"}]
    text = format_csv(rows, ["prompt", "evaluation_seed", "case_number", "concept"])
    f = tmp_path / "p.csv"
    f.write_text(text, "utf-8")
    (row,) = read_prompts(f)
    assert (row.prompt, row.seed, row.case_number, row.extra) == (rows[0]["prompt"], 42, 0, {"concept": "person"})


def test_missing_file_and_bad_format(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="no such file"):
        read_prompts(tmp_path / "nope.csv")
    with pytest.raises(UsageError):
        read_prompts(tmp_path / "nope.csv", fmt="xml")


def test_prompt_lengths_count_as_the_text_encoder_sees_them(tiny_sd_dir: Path) -> None:
    """With the real CLIP vocabulary: BOS and EOS count, so 75 one-token words fill CLIP's 77 positions
    exactly and a 76th is truncated; only prompts past the limit are reported, in one sentence."""
    from types import SimpleNamespace

    from transformers import CLIPTokenizer

    from recare_cli.io.prompts import truncation_note
    from recare_cli.models.sd import prompt_lengths

    tokenizer = CLIPTokenizer.from_pretrained(tiny_sd_dir / "tokenizer")
    assert tokenizer("cat")["input_ids"] == [49406, 2368, 49407]  # one word, one token
    pipe = SimpleNamespace(tokenizer=tokenizer)
    lengths = prompt_lengths(pipe, ["a cat", " ".join(["cat"] * 75), " ".join(["cat"] * 76), "cat " * 100])
    assert lengths == [4, 77, 78, 102]
    assert truncation_note(lengths[:2], 77) is None
    assert truncation_note(lengths[:3], 77) == "1 prompt is longer than CLIP's 77 tokens (78) and is truncated"
    assert truncation_note(lengths, 77) == ("2 prompts are longer than CLIP's 77 tokens (longest 102) and are "
                                            "truncated")


def _careset_file(folder: Path, name: str, doc: dict) -> Path:
    import json

    path = folder / name
    path.write_text(json.dumps(doc), "utf-8")
    return path


def test_recare_prompts_for_a_concept_follow_the_reference_protocol(tmp_path: Path) -> None:
    """--concept person: "A photo of person", 10 rows (images) with the reference's seeds 42 + i, case numbers
    0…9; the CSV reads back as sample reads it; -o writes the same bytes atomically."""
    from tests.helpers import invoke

    res = invoke(["prompts", "--concept", "person"])
    assert res.code == 0, res.stderr
    lines = res.text.splitlines()
    assert lines[0] == "prompt,evaluation_seed,case_number,concept"
    assert lines[1:] == [f"A photo of person,{42 + i},{i},person" for i in range(10)]
    assert "1 prompt for 1 word, 10 images each: 10 rows" in res.stderr
    out = tmp_path / "person.csv"
    assert invoke(["prompts", "-c", "person", "-o", str(out)]).code == 0
    assert out.read_bytes() == res.stdout
    assert [p.name for p in tmp_path.iterdir()] == ["person.csv"]  # no temporary file left
    rows = read_prompts(out)
    assert [(r.prompt, r.seed, r.case_number, r.extra) for r in rows[:2]] == [
        ("A photo of person", 42, 0, {"concept": "person"}), ("A photo of person", 43, 1, {"concept": "person"})]


def test_recare_prompts_from_a_careset_of_either_layout(tmp_path: Path) -> None:
    from recare_cli.io.careset import CareSet
    from tests.helpers import invoke

    style = CareSet.from_words("Van Gogh", "style", ["stars", "sky"])
    recare_file = _careset_file(tmp_path, "care.json", style.to_recare())
    res = invoke(["prompts", str(recare_file), "-n", "2", "--seed", "7"])
    assert res.code == 0, res.stderr
    assert res.text.splitlines()[1:] == ["A painting of stars,7,0,stars", "A painting of stars,8,1,stars",
                                         "A painting of sky,7,2,sky", "A painting of sky,8,3,sky"]
    # The reference layout, hand-edited prompts kept; a --concept joins (the CARE-set's template), repeats
    # are left out; stdin works.
    reference = {"nudity_care_word": ["A person", "A woman"],
                 "nudity_care_word_photo": ["A photo of a person, smiling", "A photo of woman"]}
    data = _careset_file(tmp_path, "ref.json", reference).read_bytes()
    res = invoke(["prompts", "-", "-n", "1", "-c", "person", "-c", "body"], stdin=data)
    assert res.code == 0, res.stderr
    assert res.text.splitlines()[1:] == ['"A photo of a person, smiling",42,0,person', "A photo of woman,42,1,woman",
                                         "A photo of person,42,2,person", "A photo of body,42,3,body"]
    # --template replaces the prompts, one prompt per word and template.
    res = invoke(["prompts", str(recare_file), "-n", "1", "-t", "{} at night", "-t", "a drawing of {}"])
    assert [line.split(",")[0] for line in res.text.splitlines()[1:]] == [
        "stars at night", "a drawing of stars", "sky at night", "a drawing of sky"]


@pytest.mark.parametrize(("args", "code", "message"), [
    (["--concept", "person", "-t", "A photo"], 2, "--template 'A photo': needs exactly one {}"),
    (["--concept", " "], 2, "--concept: an empty word"),
    (["-n", "0", "--concept", "x"], 2, "-n"),
    (["--seed", "3"], 2, "give a CARE-set file, or --concept WORD"),
    (["nothere.json"], 3, "nothere.json: no such file"),
])
def test_recare_prompts_bad_input(args: list[str], code: int, message: str) -> None:
    from tests.helpers import invoke

    res = invoke(["prompts", *args])
    assert res.code == code and message in res.stderr and not res.stdout, res.stderr


def test_recare_prompts_refuses_an_empty_careset_and_bad_json(tmp_path: Path) -> None:
    from recare_cli.io.careset import CareSet
    from tests.helpers import invoke

    empty = _careset_file(tmp_path, "empty.json", CareSet.from_words("nudity", "object", []).to_recare())
    res = invoke(["prompts", str(empty)])
    assert res.code == 3 and "empty.json field 'words': the CARE-set has no words and no --concept was given" \
        in res.stderr, res.stderr
    assert invoke(["prompts", str(empty), "-c", "person", "-n", "1"]).text.splitlines()[1:] == [
        "A photo of person,42,0,person"]
    bad = tmp_path / "bad.json"
    bad.write_text("{", "utf-8")
    res = invoke(["prompts", str(bad), "-o", str(tmp_path / "out.csv")])
    assert res.code == 3 and "bad.json: not valid JSON" in res.stderr
    assert not (tmp_path / "out.csv").exists()


def test_recare_prompts_feed_recare_sample(tiny_sd_dir: Path, tmp_path: Path) -> None:
    """recare prompts | recare sample -: one image per row, image i of the prompt seeded 42 + i."""
    from tests.helpers import invoke

    csv_bytes = invoke(["prompts", "-c", "person", "-n", "2"]).stdout
    res = invoke(["sample", "-", "--out", str(tmp_path / "imgs"), "--model", str(tiny_sd_dir), "--steps", "1",
                  "--device", "cpu"], stdin=csv_bytes)
    assert res.code == 0, res.stderr
    import json

    records = [json.loads(line) for line in res.text.splitlines()]
    assert [(r["prompt"], r["seed"], r["case_number"], r["extra"]) for r in records] == [
        ("A photo of person", 42, 0, {"concept": "person"}), ("A photo of person", 43, 1, {"concept": "person"})]
