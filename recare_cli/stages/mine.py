"""Stage 1: mine co-occurring candidate words (method.md §1)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from recare_cli import console
from recare_cli.errors import BadInputError
from recare_cli.io.candidates import CandidateStream, make_header
from recare_cli.io.provenance import provenance

MAX_WORD_TOKENS = 75  # 77 minus BOS and EOS


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
                     use_cache: bool) -> tuple[np.ndarray, bool]:
    """(V, D) float32 embeddings, from the cache when a trustworthy entry exists."""
    from recare_cli.core.embed import embed_token_sequences
    from recare_cli.io import cache

    tok = bundle.tokenizer
    digest = cache.vocabulary_digest(vocabulary.words, vocabulary.token_ids)
    key = cache.cache_key(bundle.fingerprint, digest)
    folder = cache_dir or cache.default_cache_dir()
    if use_cache:
        hit = cache.load_cached(folder, key, digest, len(vocabulary))
        if hit is not None:
            console.info(f"vocabulary: {len(vocabulary):,} words from cache")
            return hit, True
    with console.progress(f"embedding {len(vocabulary):,} vocabulary words", len(vocabulary)) as advance:
        emb = embed_token_sequences(bundle.model, vocabulary.token_ids, bos=tok.bos_token_id,
                                    eos=tok.eos_token_id, pad=tok.pad_token_id or tok.eos_token_id,
                                    batch_size=batch_size, progress=advance)
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
                                 pad=tok.pad_token_id or tok.eos_token_id)[0]


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

    with console.progress(f"embedding {len(paths):,} images", len(paths)) as advance:
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
        console.warn(f"skipped {len(skipped)} of {len(paths)} images")
    dim = bundle.embed_dim
    return (np.concatenate(chunks) if chunks else np.zeros((0, dim), np.float32)), used, skipped


def _paths_digest(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for p in paths:
        digest.update(f"{p.name}\t{p.stat().st_size}\n".encode())
    return "sha256:" + digest.hexdigest()[:16]


def run_mining(*, paths: list[Path], target: str, top_k: int, top_n: int,
               words: list[tuple[int, str]] | None, vocab_source: str, strict: bool, clip: str,
               device: str, dtype: str, batch_size: int, text_batch_size: int,
               cache_dir: Path | None, use_cache: bool, params: dict[str, Any],
               reference_paths: list[Path] | None = None, reference_source: str = "") -> CandidateStream:
    """Mine ``paths`` (images of the target); with ``reference_paths`` (images without it), rank by lift
    (core.mining.mine)."""
    from recare_cli.core.mining import mine
    from recare_cli.models.clip import load_clip
    from recare_cli.models.quiet import quiet_libraries

    quiet_libraries()
    bundle = load_clip(clip, device=device, dtype=dtype)
    vocabulary = _vocabulary(bundle, words, vocab_source)
    if len(vocabulary) == 0:
        raise BadInputError("the vocabulary has no words", source=vocab_source)
    word_emb, _ = embed_vocabulary(bundle, vocabulary, batch_size=text_batch_size,
                                   cache_dir=cache_dir, use_cache=use_cache)
    image_emb, used, skipped = embed_images(bundle, paths, strict=strict, batch_size=batch_size)
    if not used:
        raise BadInputError(f"none of the {len(paths)} images could be read", source=params["images"])
    mining: dict[str, Any] = {"images": len(used), "skipped": len(skipped), "images_digest": _paths_digest(used),
                              "top_k": top_k, "top_n": top_n, "vocabulary": vocab_source,
                              "vocabulary_size": len(vocabulary)}
    reference_emb = None
    if reference_paths is not None:
        reference_emb, ref_used, ref_skipped = embed_images(bundle, reference_paths, strict=strict,
                                                            batch_size=batch_size)
        if not ref_used:
            raise BadInputError(f"none of the {len(reference_paths)} reference images could be read",
                                source=reference_source)
        mining.update(reference=reference_source, reference_images=len(ref_used),
                      reference_skipped=len(ref_skipped), reference_digest=_paths_digest(ref_used),
                      ranking="lift")
    found = mine(image_emb, word_emb, top_k=top_k, top_n=top_n, reference_emb=reference_emb)
    target_emb = embed_text(bundle, target)
    header = make_header(target=target, target_embedding=target_emb, clip=bundle.identity(), mining=mining,
                         provenance=provenance("mine", params))
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
                        "embedding": word_emb[i]})
    against = "" if reference_emb is None else f", ranked by lift against {reference_emb.shape[0]} reference images"
    console.info(f"mined {len(records)} candidate words from {len(used)} images "
                 f"(vocabulary {len(vocabulary):,}, top-k {top_k}{against})")
    return CandidateStream(header=header, words=records)
