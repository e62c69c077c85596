"""Prompt files as the field publishes them (tests/data/prompts, copied from the field), JSONL, text, and bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from recare_cli.errors import BadInputError, UsageError
from recare_cli.io.prompts import detect_format, read_prompts

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
        read_prompts(f)
    f.write_text('prompt,evaluation_seed\n"two\nlines",1\nok,2.0\n', "utf-8")
    rows = read_prompts(f)
    assert [(r.line, r.prompt, r.seed) for r in rows] == [(2, "two\nlines", 1), (4, "ok", 2)]


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
    ("cell.csv", "prompt,evaluation_seed\na,1\n ,2\n", r"cell\.csv:3 field 'prompt': empty prompt"),
    ("fields.csv", "prompt,evaluation_seed\na,1\na, b,2\n", r"fields\.csv:3: 3 fields, the header has 2"),
    ("neg.jsonl", '{"prompt": "a", "evaluation_seed": -1}\n', r"neg\.jsonl:1 field 'evaluation_seed'"),
    ("cut.jsonl", '{"prompt": "a"}\n{"prompt": "b\n', r"cut\.jsonl:2: not valid JSON"),
    ("noprompt.jsonl", '{"text": "a"}\n', r"noprompt\.jsonl:1 field 'prompt': missing"),
    ("binary.txt", b"\xff\xfe\x00a", r"binary\.txt: not UTF-8"),
])
def test_bad_prompt_files(tmp_path: Path, name: str, content: str | bytes, message: str) -> None:
    f = tmp_path / name
    if isinstance(content, bytes):
        f.write_bytes(content)
    else:
        f.write_text(content, "utf-8")
    with pytest.raises(BadInputError, match=message):
        read_prompts(f)


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
