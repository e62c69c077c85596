"""The real CLIP BPE vocabulary (49,408 entries), built from OpenAI's shipped merges file.

OpenAI's tokenizer defines the vocabulary as: the 256 byte symbols, the same with ``</w>``, one
entry per merge (the first 48,894 merges), then ``<|startoftext|>`` and ``<|endoftext|>``.
transformers' ``CLIPTokenizer`` reads the same data as ``vocab.json`` + ``merges.txt``.
"""

from __future__ import annotations

import gzip
import json
from importlib import resources
from pathlib import Path

VOCAB_SIZE = 49408
N_MERGES = VOCAB_SIZE - 2 * 256 - 2  # 48,894
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable unicode symbols."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes), strict=True))


def load_merges() -> list[tuple[str, str]]:
    data = resources.files("recare_cli.data.clip_bpe").joinpath("bpe_simple_vocab_16e6.txt.gz")
    lines = gzip.decompress(data.read_bytes()).decode("utf-8").split("\n")
    merges = [line.split() for line in lines[1 : N_MERGES + 1]]
    return [(a, b) for a, b in merges]


def build_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [BOS, EOS]
    vocab = {token: index for index, token in enumerate(tokens)}
    assert len(vocab) == VOCAB_SIZE, len(vocab)
    return vocab


def write_tokenizer_files(folder: Path) -> None:
    """Write ``vocab.json`` and ``merges.txt`` as transformers' CLIPTokenizer expects them."""
    merges = load_merges()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(build_vocab(merges), ensure_ascii=False), "utf-8")
    body = "\n".join(f"{a} {b}" for a, b in merges)
    (folder / "merges.txt").write_text("#version: 0.2\n" + body + "\n", "utf-8")


def save_clip_tokenizer(folder: Path) -> None:
    """Save a complete ``CLIPTokenizer`` (real vocabulary, 77-token limit) into ``folder``."""
    import tempfile

    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        write_tokenizer_files(Path(tmp))
        tokenizer = CLIPTokenizer.from_pretrained(tmp, model_max_length=77)
    tokenizer.save_pretrained(folder)
