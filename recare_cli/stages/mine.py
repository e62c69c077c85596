"""Stage 1: mine co-occurring candidate words (method.md §1)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recare_cli import console
from recare_cli.errors import BadInputError, UsageError, check_choice
from recare_cli.io.candidates import CandidateStream, make_header
from recare_cli.io.provenance import provenance
from recare_cli.models.clip import DEFAULT_CLIP, pad_id
from recare_cli.stages.mine_reference import ENTRIES, MAX_WORD_TOKENS, reference_embeddings, reference_vocabulary
from recare_cli.stages.options import recorded, recorded_if_set, recorded_when, run_control

__all__ = ["ENTRIES", "MAX_WORD_TOKENS", "MineOptions", "run_mining"]

WHOLE_WORDS = "clip-whole-words"  # the vocabulary's name when mining CLIP's whole-word tokens
TOKENIZATIONS = ("recare", "reference")


def _reference_tokenization(opts: MineOptions) -> bool:
    return opts.tokenization != "recare"


@dataclass
class MineOptions:
    """Every option of ``recare mine``; recorded fields in the order provenance records them."""

    images: str  # where the images came from (folder, list file or -): named in provenance and errors
    target: str
    top_k: int = 50
    top_n: int = 100
    vocab: str | None = None  # word list; None: the CLIP folder's own list if it ships one, else CLIP's words
    # recare: whole words as their own token ids; reference: every entry as text, the reference's ranking
    tokenization: str = recorded_when(_reference_tokenization, "recare")
    reference: str | None = recorded_if_set()
    recursive: bool = False
    strict: bool = False
    clip: str = DEFAULT_CLIP
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = 64
    # Not recorded: they do not change the stream.
    as_list: bool = run_control(False)
    text_batch_size: int = run_control(1024)
    cache_dir: str | None = run_control(None)
    no_cache: bool = run_control(False)
    output: str = run_control("-")
    embeddings_npy: str | None = run_control(None)


def _vocabulary(bundle: Any, words: list[tuple[int, str]] | None, source: str) -> Any:
    from recare_cli.core.vocab import Vocabulary, whole_word_vocabulary

    if words is None:
        return whole_word_vocabulary(bundle.tokenizer.get_vocab())
    out_words: list[str] = []
    ids: list[list[int]] = []
    seen: set[str] = set()
    for line, word in words:
        if word in seen:
            continue
        seen.add(word)
        token_ids = bundle.tokenizer(word, add_special_tokens=False)["input_ids"]
        if not token_ids:
            raise BadInputError("tokenises to nothing", source=source, line=line)
        if len(token_ids) > MAX_WORD_TOKENS:
            raise BadInputError(f"is {len(token_ids)} tokens long; CLIP takes at most "
                                f"{MAX_WORD_TOKENS}", source=source, line=line)
        out_words.append(word)
        ids.append(list(token_ids))
    return Vocabulary(out_words, ids)


def embed_vocabulary(bundle: Any, vocabulary: Any, *, batch_size: int, cache_dir: Path | None,
                     use_cache: bool, tokenization: str = "recare") -> tuple[np.ndarray, bool]:
    """(V, D) float32 embeddings, from the cache when a trustworthy entry exists (the cache is keyed by
    model, vocabulary and ``tokenization``). Reference tokenization embeds each distinct token sequence
    once, so entries the cleaning makes equal (``Ĳ``, ``ĳ``, ``ij``) get equal rows, as in the reference."""
    from recare_cli.core.embed import embed_token_sequences
    from recare_cli.io import cache

    tok = bundle.tokenizer
    digest = cache.vocabulary_digest(vocabulary.words, vocabulary.token_ids)
    key = cache.cache_key(bundle.fingerprint, digest, "" if tokenization == "recare" else tokenization)
    folder = cache_dir or cache.default_cache_dir()
    if use_cache:
        hit = cache.load_cached(folder, key, digest, len(vocabulary))
        if hit is not None:
            console.info(f"vocabulary: {len(vocabulary):,} words from cache")
            return hit, True
    sequences, rows = vocabulary.token_ids, None
    if tokenization != "recare":
        distinct: dict[tuple[int, ...], int] = {}
        rows = np.asarray([distinct.setdefault(tuple(seq), len(distinct)) for seq in sequences])
        sequences = [list(seq) for seq in distinct]
    with console.progress(f"embedding {len(vocabulary):,} vocabulary words", len(sequences)) as advance:
        emb = embed_token_sequences(bundle.model, sequences, bos=tok.bos_token_id,
                                    eos=tok.eos_token_id, pad=pad_id(tok),
                                    batch_size=batch_size, progress=advance)
    if rows is not None:
        emb = emb[rows]
    if use_cache:
        try:
            cache.store(folder, key, digest, emb)
        except OSError as err:
            console.warn(f"could not write the vocabulary cache in {folder}: {err.strerror or err}")
    return emb, False


def embed_text(bundle: Any, text: str) -> np.ndarray:
    from recare_cli.core.embed import embed_token_sequences

    tok = bundle.tokenizer
    ids = tok(text, add_special_tokens=False)["input_ids"][:MAX_WORD_TOKENS]
    return embed_token_sequences(bundle.model, [ids], bos=tok.bos_token_id, eos=tok.eos_token_id,
                                 pad=pad_id(tok))[0]


def embed_images(bundle: Any, paths: list[Path], *, strict: bool,
                 batch_size: int) -> tuple[np.ndarray, list[Path], list[tuple[Path, str]]]:
    """Embed readable images in batches; returns (embeddings, used paths, skipped (path, why))."""
    from recare_cli.core.embed import embed_pixel_batch
    from recare_cli.io.images import iter_images

    skipped: list[tuple[Path, str]] = []
    used: list[Path] = []
    chunks: list[np.ndarray] = []
    batch: list[Any] = []

    def flush() -> None:
        pixels = bundle.processor(images=batch, return_tensors="pt")["pixel_values"]
        chunks.append(embed_pixel_batch(bundle.model, pixels))
        batch.clear()

    with console.progress(f"embedding {console.plural(len(paths), 'image')}", len(paths)) as advance:
        for path, image in iter_images(paths, strict=strict, skipped=skipped):
            used.append(path)
            batch.append(image)
            if len(batch) == batch_size:
                flush()
                advance(batch_size)
        if batch:
            advance(len(batch))
            flush()
    for path, why in skipped:
        console.warn(f"skipped unreadable image {path}: {why}")
    if skipped:
        console.warn(f"skipped {len(skipped)} of {console.plural(len(paths), 'image')}")
    dim = bundle.embed_dim
    return (np.concatenate(chunks) if chunks else np.zeros((0, dim), np.float32)), used, skipped


def _paths_digest(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for p in paths:
        digest.update(f"{p.name}\t{p.stat().st_size}\n".encode())
    return "sha256:" + digest.hexdigest()[:16]


def vocabulary_source(opts: MineOptions) -> str | None:
    """The word list to mine over: --vocab, else the CLIP folder's own list, else None (CLIP's words).
    The reference's tokenization mines the tokenizer's whole vocabulary: never a word list."""
    from recare_cli.io.wordlist import folder_vocabulary

    if opts.vocab is not None:
        if _reference_tokenization(opts):
            raise UsageError("--vocab and --tokenization reference exclude each other: the reference mines every "
                             "entry of the tokenizer's vocabulary")
        return opts.vocab
    shipped = folder_vocabulary(opts.clip)
    if shipped is not None and _reference_tokenization(opts):
        console.info(f"vocabulary: every entry of the tokenizer's, as the reference mines (the CLIP folder's own "
                     f"word list {shipped} is not used with --tokenization reference)")
        return None
    return str(shipped) if shipped is not None else None


def run_mining(opts: MineOptions, paths: list[Path], reference_paths: list[Path] | None = None) -> CandidateStream:
    """Mine ``paths`` (images of the target, read from ``opts.images``); with ``reference_paths`` (images
    without it, from ``opts.reference``), rank by lift (core.mining.mine)."""
    from recare_cli.core.mining import mine, mine_first_seen
    from recare_cli.io.streams import display_name
    from recare_cli.io.wordlist import read_word_list
    from recare_cli.models.clip import load_clip
    from recare_cli.models.quiet import quiet_libraries

    check_choice("--tokenization", opts.tokenization, TOKENIZATIONS, "tokenization")
    as_reference = _reference_tokenization(opts)
    if as_reference and reference_paths is not None:
        raise UsageError("--reference IMAGES ranks by lift, recare's own ranking; --tokenization reference "
                         "reproduces the reference's count ranking: use one")
    source = vocabulary_source(opts)
    words = read_word_list(source) if source is not None else None
    vocab_name = display_name(source) if source is not None else ENTRIES if as_reference else WHOLE_WORDS
    if source is not None and opts.vocab is None:
        console.info(f"vocabulary: the word list the CLIP folder ships ({source}); --vocab to mine others")
    quiet_libraries()
    bundle = load_clip(opts.clip, device=opts.device, dtype=opts.dtype)
    vocabulary = reference_vocabulary(bundle) if as_reference else _vocabulary(bundle, words, vocab_name)
    if len(vocabulary) == 0:
        raise BadInputError("the vocabulary has no words", source=vocab_name)
    use_cache = not opts.no_cache
    word_emb, _ = embed_vocabulary(bundle, vocabulary, batch_size=opts.text_batch_size,
                                   cache_dir=Path(opts.cache_dir) if opts.cache_dir else None, use_cache=use_cache,
                                   tokenization=opts.tokenization)
    image_emb, used, skipped = embed_images(bundle, paths, strict=opts.strict, batch_size=opts.batch_size)
    if not used:
        raise BadInputError(f"none of the {len(paths)} images could be read", source=display_name(opts.images))
    mining: dict[str, Any] = {"images": len(used), "skipped": len(skipped), "images_digest": _paths_digest(used),
                              "top_k": opts.top_k, "top_n": opts.top_n, "vocabulary": vocab_name,
                              "vocabulary_size": len(vocabulary)}
    reference_emb = None
    if reference_paths is not None:
        reference_source = opts.reference or ""
        reference_emb, ref_used, ref_skipped = embed_images(bundle, reference_paths, strict=opts.strict,
                                                            batch_size=opts.batch_size)
        if not ref_used:
            raise BadInputError(f"none of the {len(reference_paths)} reference images could be read",
                                source=reference_source)
        mining.update(reference=reference_source, reference_images=len(ref_used),
                      reference_skipped=len(ref_skipped), reference_digest=_paths_digest(ref_used),
                      ranking="lift")
    target = opts.target.strip()
    if as_reference:
        mining.update(tokenization="reference", ranking="count, then first seen", similarities="fp16 vocabulary",
                      embeddings="re-encoded, padded to 77")
        found = mine_first_seen(image_emb, word_emb, top_k=opts.top_k, top_n=opts.top_n)
        chosen_emb, target_emb = reference_embeddings(bundle, [vocabulary.token_ids[i] for i in found.index], target,
                                                      batch_size=opts.text_batch_size)
    else:
        found = mine(image_emb, word_emb, top_k=opts.top_k, top_n=opts.top_n, reference_emb=reference_emb)
        chosen_emb, target_emb = word_emb[found.index], embed_text(bundle, target)
    header = make_header(target=target, target_embedding=target_emb, clip=bundle.identity(), mining=mining,
                         provenance=provenance("mine", recorded(opts)))
    records = []
    for rank, (i, count, mean, best, hit) in enumerate(zip(
            found.index, found.count, found.sim_mean, found.sim_max, found.hit_sim_mean, strict=True)):
        record: dict[str, Any] = {"record": "word", "word": vocabulary.words[i], "rank": rank + 1,
                                  "count": int(count), "frequency": round(float(count) / len(used), 6)}
        if found.reference_count is not None and found.lift is not None:
            record.update(reference_count=int(found.reference_count[rank]),
                          reference_frequency=round(float(found.reference_count[rank]) / mining["reference_images"], 6),
                          lift=round(float(found.lift[rank]), 6))
        records.append({**record, "sim_mean": float(mean), "sim_max": float(best), "hit_sim_mean": float(hit),
                        "embedding": chosen_emb[rank]})
    against = "" if reference_emb is None else f", ranked by lift against {reference_emb.shape[0]} reference images"
    console.info(f"mined {console.plural(len(records), 'candidate word')} from {console.plural(len(used), 'image')} "
                 f"(vocabulary {len(vocabulary):,}, top-k {opts.top_k}{against})")
    return CandidateStream(header=header, words=records)
