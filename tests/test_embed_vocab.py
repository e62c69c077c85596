"""Vocabulary extraction and CLIP embedding on the tiny model with the real BPE vocabulary."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from recare_cli.core.embed import embed_token_sequences
from recare_cli.core.vocab import whole_word_vocabulary
from recare_cli.models.bpe import VOCAB_SIZE
from recare_cli.models.clip import load_clip


@pytest.fixture(scope="module")
def bundle(tiny_clip_dir: Path):  # type: ignore[no-untyped-def]
    return load_clip(str(tiny_clip_dir), device="cpu", dtype="fp32")


def test_tokenizer_is_the_real_clip_vocabulary(bundle) -> None:  # type: ignore[no-untyped-def]
    tok = bundle.tokenizer
    assert len(tok) == VOCAB_SIZE and tok.model_max_length == 77
    # Ids as in openai/clip-vit-base-patch32.
    assert tok("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_whole_word_vocabulary_rules() -> None:
    vocab = {"cat</w>": 5, "cat": 6, "</w>": 7, "ca": 8, "dog</w>": 2, "x1</w>": 9, "é</w>": 10}
    v = whole_word_vocabulary(vocab)
    assert v.words == ["dog", "cat"]  # ordered by token id; no fragments, digits or non-ASCII
    assert v.token_ids == [[2], [5]]


def test_whole_word_vocabulary_of_real_clip(bundle) -> None:  # type: ignore[no-untyped-def]
    v = whole_word_vocabulary(bundle.tokenizer.get_vocab())
    assert 30_000 < len(v) < 40_000
    assert len(set(v.words)) == len(v)
    assert v.token_ids[v.words.index("cat")] == [2368]
    assert all(w.isascii() and w.isalpha() for w in v.words)


def _padded_to_77(model, ids: list[int]) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The reference's way: [BOS, ids, EOS] padded with EOS to 77, pooled at the first EOS."""
    seq = [49406, *ids, 49407]
    full = torch.tensor([seq + [49407] * (77 - len(seq))])
    with torch.no_grad():
        pooled = model.text_model(input_ids=full).pooler_output
        feat = model.text_projection(pooled)
    return (feat / feat.norm(dim=-1, keepdim=True)).numpy()[0]


def test_short_sequences_equal_padded_to_77(bundle) -> None:  # type: ignore[no-untyped-def]
    seqs = [[2368], [1125, 539, 2368], [320], [16630, 2533, 320, 1125, 539]]
    short = embed_token_sequences(bundle.model, seqs, bos=49406, eos=49407, pad=49407, batch_size=2)
    for row, seq in zip(short, seqs, strict=True):
        np.testing.assert_allclose(row, _padded_to_77(bundle.model, seq), atol=2e-6)
    # Batch composition does not matter (mixed lengths in one batch vs one at a time).
    single = np.vstack([embed_token_sequences(bundle.model, [s], bos=49406, eos=49407, pad=49407) for s in seqs])
    np.testing.assert_allclose(short, single, atol=2e-6)
    np.testing.assert_allclose(np.linalg.norm(short, axis=1), 1.0, atol=1e-6)
