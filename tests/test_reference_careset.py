"""`recare mine --tokenization reference | recare cluster -n 7 | recare refine` against a plain re-implementation
of the ReCARE reference's CARE-set code (damilab/CARE ``utils/dictionary.py``), written in this file from its
code: OpenAI's ``clip.tokenize`` on every vocabulary string (BPE by hand), padded to 77, an fp16 cache, the
chunked min-heap top-k, ``Counter.most_common``, then t-SNE + k-means on the float32 word embeddings, the
extreme clusters dropped, the leave-one-out refinement, ``</w>`` stripped."""

from __future__ import annotations

import hashlib
import heapq
import html
import json
import os
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import regex
import torch

from recare_cli.errors import EXIT_USAGE
from tests.helpers import Result, invoke

TOP_K, TOP_N, CLUSTERS, SEED, ALPHA = 50, 100, 7, 42, 0.01
SOT, EOT = "<|startoftext|>", "<|endoftext|>"
PATTERN = regex.compile(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"""
                        r"""[^\s\p{L}\p{N}]+""", regex.IGNORECASE)


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """The tiny CLIP, t-SNE and k-means on one thread: on two shared cores idle OpenMP threads spin for seconds."""
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(before)


def _lines(result: Result) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in result.stdout.splitlines()]


class OpenAITokenizer:
    """OpenAI CLIP's SimpleTokenizer, naively: clean, split, bytes to symbols, merge the best-ranked pair."""

    def __init__(self, clip_dir: Path) -> None:
        model = json.loads((clip_dir / "tokenizer.json").read_text("utf-8"))["model"]
        self.vocab: dict[str, int] = model["vocab"]
        self.ranks = {tuple(m): i for i, m in enumerate(model["merges"])}
        printable = [*range(33, 127), *range(161, 173), *range(174, 256)]  # bytes that stand for themselves
        others = [b for b in range(256) if b not in printable]  # the rest: code points 256, 257, ...
        self.byte_symbol = {**{b: chr(b) for b in printable}, **{b: chr(256 + n) for n, b in enumerate(others)}}
        # ftfy.fix_text, as ftfy 6.3.1 (the reference's) gives it for these strings: the one input taken from recare
        from importlib import resources

        data = resources.files("recare_cli.data.clip_bpe").joinpath("ftfy_fixes.json").read_text("utf-8")
        self.ftfy = json.loads(data)["fixes"]

    def bpe(self, token: str) -> list[str]:
        if token in (SOT, EOT):
            return [token]
        word = [*token[:-1], token[-1] + "</w>"]
        while len(word) > 1:
            pairs = [(word[i], word[i + 1]) for i in range(len(word) - 1)]
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        return word

    def encode(self, text: str) -> list[int]:
        text = html.unescape(html.unescape(self.ftfy.get(text, text))).strip()
        text = regex.sub(r"\s+", " ", text).strip().lower()
        ids: list[int] = []
        for piece in PATTERN.findall(text):
            if piece not in (SOT, EOT):
                piece = "".join(self.byte_symbol[b] for b in piece.encode("utf-8"))
            ids.extend(self.vocab[p] for p in self.bpe(piece))
        return ids

    def tokenize(self, texts: list[str]) -> torch.Tensor:  # clip.tokenize: SOT, ids, EOT, zeros to 77
        out = torch.zeros(len(texts), 77, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.vocab[SOT], *self.encode(text), self.vocab[EOT]]
            out[row, : len(ids)] = torch.tensor(ids)
        return out


def reference_heap_top_k(table: np.ndarray, image: np.ndarray, k: int, chunk: int = 4096) -> list[int]:
    """dictionary.py's topk_sim_over_chunks, step by step."""
    heap: list[tuple[float, int]] = []
    for s in range(0, len(table), chunk):
        sims = table[s : s + chunk].astype(np.float32) @ image.astype(np.float32)
        if len(heap) < k:
            for i, val in enumerate(sims):
                heapq.heappush(heap, (float(val), s + i))
                if len(heap) > k:
                    heapq.heappop(heap)
        else:
            th = heap[0][0]
            for i, val in enumerate(sims):
                if float(val) > th:
                    heapq.heapreplace(heap, (float(val), s + i))
                    th = heap[0][0]
    heap.sort(reverse=True)
    return [i for _, i in heap]


def reference_tsne_kmeans(w: torch.Tensor) -> list[int]:
    """dictionary.py's global clustering: t-SNE of the float32 embeddings, k-means on the points."""
    from sklearn.cluster import KMeans
    from sklearn.manifold import TSNE

    points = TSNE(n_components=2, random_state=SEED, init="pca", learning_rate="auto").fit_transform(w.numpy())
    return KMeans(n_clusters=CLUSTERS, random_state=SEED, n_init="auto").fit_predict(points).tolist()


def reference_careset(w: torch.Tensor, c: torch.Tensor, labels: list[int], k_each_side: int = 1,
                      refine: bool = True) -> tuple[set[int], list[int]]:
    """dictionary.py after k-means: the extreme clusters removed, the leave-one-out refinement (unless the
    ablation leaves it out); (removed clusters, surviving rows in rank order)."""
    dim = w.shape[1]
    pc = (c @ c.T) / (c.T @ c + 1e-12)
    residual = (w @ (torch.eye(dim) - pc).T).norm(dim=1).numpy()
    ordered = sorted(set(labels), key=lambda k: residual[np.asarray(labels) == k].mean())
    k_eff = min(k_each_side, len(ordered) // 2)
    removed = set(ordered[:k_eff] + ordered[-k_eff:]) if k_eff else set()
    kept = [i for i, lab in enumerate(labels) if lab not in removed]
    dropped: set[int] = set()
    for cluster in sorted({labels[i] for i in kept}) if refine else []:
        rows = [i for i in kept if labels[i] == cluster]
        if len(rows) < 2:
            continue
        wc = w[rows]
        p_minus = (wc.sum(dim=0, keepdim=True) - wc) / (len(rows) - 1)
        d = ((p_minus @ (torch.eye(dim) - pc).T) ** 2).sum(dim=1)
        mean_excl = (d.sum() - d) / (len(rows) - 1)
        dropped |= {i for i, rm in zip(rows, (d > (1.0 + ALPHA) * mean_excl).tolist(), strict=True) if rm}
    return removed, [i for i in kept if i not in dropped]


@pytest.fixture(scope="module")
def reference(tiny_clip_dir: Path, target_images: Path) -> dict[str, Any]:
    """dictionary.py on the tiny CLIP and the test images (target 'circle')."""
    from PIL import Image
    from transformers import CLIPModel

    from recare_cli.models.clip import image_processor_class

    if True:
        model = CLIPModel.from_pretrained(tiny_clip_dir).eval()
        tok = OpenAITokenizer(tiny_clip_dir)
        vocab_tokens = sorted(tok.vocab, key=tok.vocab.__getitem__)

        @torch.no_grad()
        def encode_text(texts: list[str]) -> torch.Tensor:
            feats = model.text_projection(model.text_model(input_ids=tok.tokenize(texts)).pooler_output)
            return feats / feats.norm(dim=-1, keepdim=True)

        cache = np.concatenate([encode_text(vocab_tokens[s : s + 2048]).half().numpy()
                                for s in range(0, len(vocab_tokens), 2048)])
        processor = image_processor_class().from_pretrained(tiny_clip_dir)
        counter: Counter[str] = Counter()
        for name in sorted(os.listdir(target_images)):
            if not name.lower().endswith((".jpg", ".jpeg", ".png")):
                continue
            pixels = processor(images=Image.open(target_images / name).convert("RGB"), return_tensors="pt")
            with torch.no_grad():
                feat = model.visual_projection(model.vision_model(pixel_values=pixels["pixel_values"]).pooler_output)
            feat = (feat / feat.norm(dim=-1, keepdim=True))[0].numpy()
            counter.update(vocab_tokens[i] for i in reference_heap_top_k(cache, feat, TOP_K))
        words = [t for t, _ in counter.most_common(TOP_N)]
        w, c = encode_text(words).float(), encode_text(["circle"]).float().T
        labels = reference_tsne_kmeans(w)
    return {"words": words, "counts": [counter[t] for t in words], "labels": labels, "w": w, "c": c,
            "tokenizer": tok, "vocab": vocab_tokens}


def _careset(reference: dict[str, Any], **ablation: Any) -> tuple[set[int], list[str]]:
    removed, final = reference_careset(reference["w"], reference["c"], reference["labels"], **ablation)
    return removed, [reference["words"][i].replace("</w>", "") for i in final]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("vocabulary-cache")


@pytest.fixture(scope="module")
def ours(tiny_clip_dir: Path, target_images: Path, cache_dir: Path) -> dict[str, Result]:
    mined = invoke(["mine", str(target_images), "-t", "circle", "--clip", str(tiny_clip_dir), "--tokenization",
                    "reference", "--top-k", str(TOP_K), "--top-n", str(TOP_N), "--cache-dir", str(cache_dir)])
    assert mined.code == 0, mined.stderr
    clustered = invoke(["cluster", "-n", str(CLUSTERS)], stdin=mined.stdout)
    assert clustered.code == 0, clustered.stderr
    refined = invoke(["refine", "-q", "--alpha", str(ALPHA)], stdin=clustered.stdout)
    assert refined.code == 0, refined.stderr
    return {"mined": mined, "clustered": clustered, "refined": refined}


def test_every_vocabulary_entry_is_tokenised_as_the_reference_feeds_it(tiny_clip_dir: Path,
                                                                        reference: dict[str, Any]) -> None:
    from recare_cli.models.clip import load_clip
    from recare_cli.stages.mine_reference import reference_vocabulary

    vocabulary = reference_vocabulary(load_clip(str(tiny_clip_dir), device="cpu", dtype="fp32"))
    tok = reference["tokenizer"]
    assert vocabulary.words == reference["vocab"] and len(vocabulary) == 49408
    assert vocabulary.token_ids == [tok.encode(e) for e in reference["vocab"]]
    cat = vocabulary.words.index("cat</w>")
    assert [vocabulary.words[i] for i in vocabulary.token_ids[cat]] == ["cat</w>", "</</w>", "w</w>", "></w>"]
    # ftfy repairs mojibake entries before they are tokenised: 'Ã©' is fed as 'é'
    assert vocabulary.token_ids[vocabulary.words.index("Ã©")] == [tok.vocab["Ã©</w>"]]


def test_mined_words_counts_and_their_order_are_the_references(ours: dict[str, Result],
                                                                reference: dict[str, Any]) -> None:
    header, *words = _lines(ours["mined"])
    assert [w["word"] for w in words] == reference["words"]
    assert [w["count"] for w in words] == reference["counts"]
    # equal counts are in first-seen order, which recare's own tie rule (mean similarity) would not give
    by_similarity = sorted(words, key=lambda w: (-w["count"], -w["sim_mean"]))
    assert [w["word"] for w in by_similarity] != reference["words"]
    assert header["mining"]["tokenization"] == "reference" and header["mining"]["vocabulary_size"] == 49408
    assert header["provenance"][0]["params"]["tokenization"] == "reference"


def test_clusters_and_careset_are_the_references(ours: dict[str, Result], reference: dict[str, Any]) -> None:
    records = _lines(ours["clustered"])
    words = [r for r in records if r["record"] == "word"]
    removed, careset = _careset(reference)
    assert [w["cluster"] for w in words] == reference["labels"]
    assert {w["cluster"] for w in words if w["status"] == "dropped"} == removed and len(removed) == 2
    assert records[0]["clustering"]["tsne_dtype"] == "float32"
    care = orjson.loads(ours["refined"].stdout)
    assert care["words"] == careset
    assert not any("</w>" in w for w in care["words"])
    assert any(r["stage"] == "refine" for r in care["removed"])  # the refinement removed something here


def test_the_papers_ablations_are_one_liners(ours: dict[str, Result], reference: dict[str, Any]) -> None:
    """w/o Global: no extreme cluster dropped (cluster --drop-extremes 0); w/o Intra: no leave-one-out (refine
    --min-cluster-size above the number of words keeps every kept cluster whole) — each as the reference code
    with that step left out."""
    no_global = invoke(["cluster", "-n", str(CLUSTERS), "--drop-extremes", "0", "-q"], stdin=ours["mined"].stdout)
    assert no_global.code == 0, no_global.stderr
    assert all(r["status"] == "kept" for r in _lines(no_global) if r["record"] == "word")
    care = orjson.loads(invoke(["refine", "-q"], stdin=no_global.stdout).stdout)
    assert care["words"] == _careset(reference, k_each_side=0)[1]
    no_intra = invoke(["refine", "-q", "--min-cluster-size", str(TOP_N + 1)], stdin=ours["clustered"].stdout)
    care = orjson.loads(no_intra.stdout)
    assert care["words"] == _careset(reference, refine=False)[1]
    assert {r["stage"] for r in care["removed"]} == {"cluster"}
    full = orjson.loads(ours["refined"].stdout)["words"]
    assert len(full) < len(care["words"]) < TOP_N  # both steps remove words: the ablations differ from the full


def test_the_reference_top_k_keeps_the_heaps_ties() -> None:
    """Ties everywhere (values from a handful of levels): the heap keeps the higher index among equal values in
    the first block, and a later block's equal value does not displace it."""
    from recare_cli.core.mining import reference_top_k

    rng = np.random.default_rng(0)
    for trial in range(40):
        n, k, chunk = int(rng.integers(5, 60)), int(rng.integers(1, 12)), int(rng.integers(2, 20))
        table = rng.integers(0, 4, size=(n, 1)).astype(np.float16)
        image = np.ones(1, dtype=np.float32)
        sims = table.astype(np.float32) @ image
        expected = reference_heap_top_k(table, image, k, chunk)
        assert reference_top_k(sims, k, chunk) == expected, trial
    # a stable sort (recare's own tie rule) keeps the lower index instead
    sims = np.array([1.0, 1.0, 1.0], dtype=np.float32)
    assert reference_top_k(sims, 2, 4) == [2, 1]


def test_reference_mining_rounds_the_vocabulary_to_fp16_and_ranks_equal_counts_by_first_sight() -> None:
    from recare_cli.core.mining import mine, mine_first_seen

    # 0.50001 and 0.5 are one fp16 value: tied, the heap keeps the higher index; in float32 word 0 wins
    words = np.array([[0.50001], [0.5], [0.2]], dtype=np.float32)
    assert mine_first_seen(np.ones((1, 1), np.float32), words, top_k=1, top_n=1).index.tolist() == [1]
    assert mine(np.ones((1, 1), np.float32), words, top_k=1, top_n=1).index.tolist() == [0]
    # each word counted once: the reference lists them as first seen (image 1's word first), recare by
    # mean similarity (word 0 is the more similar on average)
    images = np.array([[0.0, 1.0], [1.0, 0.0]], dtype=np.float32)
    words = np.array([[0.9, 0.1], [0.0, 0.8], [0.0, 0.0]], dtype=np.float32)
    assert mine_first_seen(images, words, top_k=1, top_n=3).index.tolist() == [1, 0]
    assert mine(images, words, top_k=1, top_n=3).index.tolist() == [0, 1]


def test_equal_token_sequences_get_equal_rows_and_the_cache_is_keyed_by_tokenization(tiny_clip_dir: Path) -> None:
    from recare_cli.core.vocab import Vocabulary
    from recare_cli.io.cache import cache_key
    from recare_cli.models.clip import load_clip
    from recare_cli.stages.mine import embed_vocabulary
    from recare_cli.stages.mine_reference import reference_vocabulary

    bundle = load_clip(str(tiny_clip_dir), device="cpu", dtype="fp32")
    full = reference_vocabulary(bundle)
    entries = ["Ĳ", "cat</w>", "ij", "ĳ"]  # ftfy: 'Ĳ' -> 'IJ', lower-cased 'ij'; 'ĳ' -> 'ij'
    vocabulary = Vocabulary(entries, [full.token_ids[full.words.index(e)] for e in entries])
    assert vocabulary.token_ids[0] == vocabulary.token_ids[2] == vocabulary.token_ids[3] != vocabulary.token_ids[1]
    emb, _ = embed_vocabulary(bundle, vocabulary, batch_size=2, cache_dir=None, use_cache=False,
                              tokenization="reference")
    assert np.array_equal(emb[0], emb[2]) and np.array_equal(emb[0], emb[3]) and not np.allclose(emb[0], emb[1])
    # recare's own keys are what they always were; the reference's tokenization has its own
    plain = hashlib.sha256(b"v1|fp|digest").hexdigest()[:32]
    assert cache_key("fp", "digest") == cache_key("fp", "digest", "") == plain
    assert cache_key("fp", "digest", "reference") != plain


def test_shipped_ftfy_table_is_ftfys() -> None:
    ftfy = pytest.importorskip("ftfy")
    if ftfy.__version__ != "6.3.1":
        pytest.skip(f"the table is ftfy 6.3.1's; ftfy {ftfy.__version__} is installed")
    from recare_cli.models.bpe import build_vocab, load_merges
    from recare_cli.models.clip_text import _fixes, ftfy_table

    assert ftfy_table(list(build_vocab(load_merges()))) == _fixes()


def test_reference_clean_is_openai_clips_cleaning() -> None:
    from recare_cli.models.clip_text import reference_clean

    assert reference_clean("  A &amp;amp;  Cat\n") == "a & cat"  # unescaped twice, spaces collapsed, lower case
    assert reference_clean("Ã©</w>") == "é</w>"  # ftfy's repair of a CLIP entry, from the shipped table


def test_the_default_tokenization_writes_what_it_always_wrote(tiny_clip_dir: Path, target_images: Path) -> None:
    args = ["mine", str(target_images), "-t", "circle", "--clip", str(tiny_clip_dir), "--top-k", "5", "--top-n", "8"]
    default, explicit = invoke(args), invoke([*args, "--tokenization", "recare"])
    assert default.code == 0, default.stderr
    assert default.stdout == explicit.stdout
    header = _lines(default)[0]
    assert "tokenization" not in header["mining"] and "tokenization" not in header["provenance"][0]["params"]
    assert header["mining"]["vocabulary"] == "clip-whole-words"


def test_reference_tokenization_mines_the_whole_vocabulary_never_a_word_list(
        tiny_clip_dir: Path, target_images: Path, tmp_path: Path, cache_dir: Path, ours: dict[str, Result]) -> None:
    from recare_cli.io.wordlist import VOCABULARY_FILE

    words = tmp_path / "words.txt"
    words.write_text("person\nsky\n")
    base = ["mine", str(target_images), "-t", "circle", "--tokenization", "reference"]
    refused = invoke([*base, "--clip", str(tiny_clip_dir), "--vocab", str(words)])
    assert refused.code == EXIT_USAGE and "--vocab" in refused.stderr and refused.stdout == b""
    lift = invoke([*base, "--clip", str(tiny_clip_dir), "--reference", str(target_images)])
    assert lift.code == EXIT_USAGE and "--reference" in lift.stderr
    clip = tmp_path / "clip"  # a folder that ships its own list (as the toy world's CLIP does)
    shutil.copytree(tiny_clip_dir, clip)
    (clip / VOCABULARY_FILE).write_text("person\nsky\n")
    shipped = invoke([*base, "--clip", str(clip), "--top-k", str(TOP_K), "--top-n", "5", "--cache-dir",
                      str(cache_dir)])
    assert shipped.code == 0, shipped.stderr
    assert VOCABULARY_FILE in shipped.stderr and "not used" in shipped.stderr
    assert "from cache" in shipped.stderr  # the same model and vocabulary: the cache entry of the run above
    header, *mined = _lines(shipped)
    assert header["mining"]["vocabulary_size"] == 49408
    assert [w["word"] for w in mined] == [w["word"] for w in _lines(ours["mined"])[1:6]]


def test_cluster_says_the_reference_code_clusters_into_7(ours: dict[str, Result]) -> None:
    head = b"".join(ours["mined"].stdout.splitlines(keepends=True)[:21])  # 20 words: t-SNE in a moment
    six = invoke(["cluster", "-n", "6"], stdin=head)
    assert six.code == 0 and "clusters into 7" in six.stderr
    assert "clusters into 7" not in ours["clustered"].stderr  # said only when -n is not 7
