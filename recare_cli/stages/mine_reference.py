"""`recare mine --tokenization reference`: the vocabulary and the embeddings as the ReCARE reference makes them
(damilab/CARE ``utils/dictionary.py``; its ranking is ``core.mining.mine_first_seen``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from recare_cli import console
from recare_cli.errors import BadInputError

MAX_WORD_TOKENS = 75  # 77 minus BOS and EOS
ENTRIES = "clip-vocabulary-entries"  # the vocabulary's name when mining every entry as the reference does


def reference_vocabulary(bundle: Any) -> Any:
    """Every entry of the tokenizer's vocabulary, in id order, tokenised as the reference feeds it: the
    entry's string (``cat</w>`` → ``cat``, ``</``, ``w``, ``>``) cleaned as OpenAI's CLIP cleans text."""
    from recare_cli.core.vocab import Vocabulary
    from recare_cli.models.clip_text import reference_clean, unfixed

    entries = [t for t, _ in sorted(bundle.tokenizer.get_vocab().items(), key=lambda kv: kv[1])]
    not_fixed = unfixed(entries)
    if not_fixed:
        console.warn(f"{len(not_fixed):,} of this tokenizer's vocabulary entries are not CLIP's: without ftfy "
                     "installed they are fed without ftfy's repairs, which the reference applies")
    ids = bundle.tokenizer([reference_clean(e) for e in entries], add_special_tokens=False)["input_ids"]
    for entry, seq in zip(entries, ids, strict=True):
        if len(seq) > MAX_WORD_TOKENS:
            raise BadInputError(f"vocabulary entry {entry!r} is {len(seq)} tokens long; CLIP takes at most "
                                f"{MAX_WORD_TOKENS}", source=ENTRIES)
    return Vocabulary(entries, [list(seq) for seq in ids])


def reference_embeddings(bundle: Any, sequences: list[list[int]], target: str, *,
                         batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The mined words' and the target's embeddings as the reference makes them once it has its words: the
    strings re-encoded padded to 77 (the words in one batch, the target alone), in full precision."""
    from recare_cli.core.embed import embed_padded_sequences
    from recare_cli.models.clip_text import reference_clean

    tok = bundle.tokenizer
    target_ids = tok(reference_clean(target), add_special_tokens=False)["input_ids"][:MAX_WORD_TOKENS]
    words = embed_padded_sequences(bundle.model, sequences, bos=tok.bos_token_id, eos=tok.eos_token_id,
                                   batch_size=batch_size)
    target_emb = embed_padded_sequences(bundle.model, [target_ids], bos=tok.bos_token_id, eos=tok.eos_token_id)
    return words, target_emb[0]
