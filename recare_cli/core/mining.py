"""Top-K co-occurring word mining (method.md §1, steps 2–3)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Candidates:
    """Top-N words by how many images have them among their top-K most similar words."""

    index: np.ndarray  # (N,) vocabulary indices, in rank order
    count: np.ndarray  # (N,) number of images with the word in their top-K
    sim_mean: np.ndarray  # (N,) mean cosine similarity over all images
    sim_max: np.ndarray  # (N,) max cosine similarity over all images
    hit_sim_mean: np.ndarray  # (N,) mean similarity over the images that counted the word
    # (N,) number of reference images with the word in their top-K; None when mined without a reference
    reference_count: np.ndarray | None = None
    lift: np.ndarray | None = None  # (N,) share of target images counting the word less share of reference images


def top_k_indices(sims: np.ndarray, k: int) -> np.ndarray:
    """Per row, the ``k`` columns of highest similarity; ties broken by lower column index."""
    k = min(k, sims.shape[1])
    # A stable sort of the negated values keeps equal values in column order: deterministic ties.
    return np.argsort(-sims, axis=1, kind="stable")[:, :k]


def _tally(image_emb: np.ndarray, word_emb: np.ndarray, top_k: int,
           chunk: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per word: top-``top_k`` count, similarity sum and max over all images, similarity sum over the
    images that counted it. Memory is bounded by ``chunk`` images at a time."""
    n_words = word_emb.shape[0]
    count = np.zeros(n_words, dtype=np.int64)
    sim_sum = np.zeros(n_words, dtype=np.float64)
    sim_max = np.full(n_words, -np.inf, dtype=np.float64)
    hit_sum = np.zeros(n_words, dtype=np.float64)
    for start in range(0, image_emb.shape[0], chunk):
        sims = image_emb[start : start + chunk] @ word_emb.T  # (c, V)
        top = top_k_indices(sims, top_k)
        rows = np.arange(top.shape[0])[:, None]
        np.add.at(count, top.ravel(), 1)
        np.add.at(hit_sum, top.ravel(), sims[rows, top].ravel().astype(np.float64))
        sim_sum += sims.sum(axis=0, dtype=np.float64)
        np.maximum(sim_max, sims.max(axis=0), out=sim_max)
    return count, sim_sum, sim_max, hit_sum


def mine(image_emb: np.ndarray, word_emb: np.ndarray, *, top_k: int, top_n: int,
         reference_emb: np.ndarray | None = None, chunk: int = 256) -> Candidates:
    """Count top-``top_k`` appearances of every word over all images; keep the ``top_n`` most frequent.

    Ranking: count (descending), then mean similarity (descending), then vocabulary index.
    Similarities are dot products of L2-normalised float32 embeddings.

    With ``reference_emb`` (images without the target), words are ranked by *lift* instead: the share
    of target images that count the word less the share of reference images that do; only words with
    a positive lift are kept (a word every image has, "photo", is no co-occurrence of the target), ties
    broken as above.
    """
    count, sim_sum, sim_max, hit_sum = _tally(image_emb, word_emb, top_k, chunk)
    sim_mean = sim_sum / max(image_emb.shape[0], 1)
    appeared = np.flatnonzero(count)
    reference_count = lift = None
    if reference_emb is None:
        order = np.lexsort((appeared, -sim_mean[appeared], -count[appeared]))
    else:
        reference_count = _tally(reference_emb, word_emb, top_k, chunk)[0]
        lift = count / max(image_emb.shape[0], 1) - reference_count / max(reference_emb.shape[0], 1)
        appeared = appeared[lift[appeared] > 0]
        order = np.lexsort((appeared, -sim_mean[appeared], -count[appeared], -lift[appeared]))
    chosen = appeared[order][:top_n]
    hit_mean = hit_sum[chosen] / count[chosen]
    if reference_count is None or lift is None:
        return Candidates(chosen, count[chosen], sim_mean[chosen], sim_max[chosen], hit_mean)
    return Candidates(chosen, count[chosen], sim_mean[chosen], sim_max[chosen], hit_mean, reference_count[chosen],
                      lift[chosen])


# The ReCARE reference's ranking (damilab/CARE utils/dictionary.py), for `mine --tokenization reference`.
REFERENCE_CHUNK = 4096  # the reference's --chunk_size_sim: rows per similarity block; its tie rule depends on it


def reference_top_k(sims: np.ndarray, k: int, chunk: int = REFERENCE_CHUNK) -> list[int]:
    """The ``k`` best columns of one image's similarities as the reference's running min-heap keeps them.

    The heap holds (similarity, index) pairs and is filled block by block. A block met while the heap
    holds fewer than ``k`` pairs is pushed whole, the smallest pair popped whenever there are more than
    ``k``: the ``k`` largest pairs survive, so among equal similarities the higher index. A later block
    replaces the smallest pair only with a strictly higher similarity. Returned in descending
    (similarity, index) order, the order the reference counts them in."""
    import heapq

    heap: list[tuple[float, int]] = []
    for start in range(0, sims.shape[0], chunk):
        block = sims[start : start + chunk]
        if len(heap) < k:
            pairs = heap + list(zip(block.tolist(), range(start, start + block.shape[0]), strict=True))
            heap = heapq.nlargest(k, pairs)
            heapq.heapify(heap)
            continue
        # Only values above the block's starting threshold can enter (the threshold only rises).
        for j in np.flatnonzero(block > heap[0][0]).tolist():
            value = float(block[j])
            if value > heap[0][0]:
                heapq.heapreplace(heap, (value, start + j))
    return [i for _, i in sorted(heap, reverse=True)]


def mine_first_seen(image_emb: np.ndarray, word_emb: np.ndarray, *, top_k: int, top_n: int,
                    chunk: int = REFERENCE_CHUNK) -> Candidates:
    """The reference's mining: similarities against the vocabulary embeddings rounded to fp16 (its cache),
    one image at a time in blocks of ``chunk`` rows; per image the top ``top_k`` by :func:`reference_top_k`;
    the ``top_n`` words by count, equal counts in the order the words were first counted (images in
    order, each image's words best first), as Python's ``Counter.most_common`` keeps them."""
    table = np.asarray(word_emb, dtype=np.float16).astype(np.float32)
    n_words = table.shape[0]
    count = np.zeros(n_words, dtype=np.int64)
    first = np.full(n_words, n_words * max(top_k, 1) * max(image_emb.shape[0], 1), dtype=np.int64)
    sim_sum = np.zeros(n_words, dtype=np.float64)
    sim_max = np.full(n_words, -np.inf, dtype=np.float64)
    hit_sum = np.zeros(n_words, dtype=np.float64)
    seen = 0
    for image in np.asarray(image_emb, dtype=np.float32):
        sims = np.concatenate([table[s : s + chunk] @ image for s in range(0, n_words, chunk)])
        for j in reference_top_k(sims, top_k, chunk):
            if count[j] == 0:
                first[j] = seen
                seen += 1
            count[j] += 1
            hit_sum[j] += float(sims[j])
        sim_sum += sims
        np.maximum(sim_max, sims, out=sim_max)
    appeared = np.flatnonzero(count)
    chosen = appeared[np.lexsort((first[appeared], -count[appeared]))][:top_n]
    sim_mean = sim_sum / max(image_emb.shape[0], 1)
    return Candidates(chosen, count[chosen], sim_mean[chosen], sim_max[chosen], hit_sum[chosen] / count[chosen])
