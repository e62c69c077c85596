"""Benchmark: vocabulary embedding (short token-id sequences vs the reference's pad-to-77 strings)
and `recare mine` on 100 images with a cold vs a warm cache, with recare's tokenization and with
`--tokenization reference` (every entry as a string, the reference's ranking).

Models have ViT-B/32 shapes with random weights (speed depends on shape, not weights).

    python -m bench.bench_vocab            # full run (a few minutes on 2 CPU cores)
    python -m bench.bench_vocab --quick    # smaller sample, for a smoke run
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from recare_cli.core.embed import embed_token_sequences
from recare_cli.core.vocab import whole_word_vocabulary
from recare_cli.models.bpe import save_clip_tokenizer


def vit_b32_clip(folder: Path) -> None:
    from transformers import CLIPConfig, CLIPModel

    from recare_cli.models.clip import image_processor_class

    config = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                         num_attention_heads=8, max_position_embeddings=77, bos_token_id=49406,
                         eos_token_id=49407, pad_token_id=49407),
        vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                           num_attention_heads=12, image_size=224, patch_size=32),
        projection_dim=512)
    torch.manual_seed(0)
    CLIPModel(config).eval().save_pretrained(folder)
    save_clip_tokenizer(folder)
    image_processor_class()(size={"shortest_edge": 224},
                            crop_size={"height": 224, "width": 224}).save_pretrained(folder)


@torch.no_grad()
def reference_style(model, tokenizer, strings: list[str], batch: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The reference: each vocabulary entry tokenised as a string, padded to 77, then encoded."""
    out = []
    for s in range(0, len(strings), batch):
        toks = tokenizer(strings[s : s + batch], padding="max_length", max_length=77, truncation=True,
                         return_tensors="pt")
        pooled = model.text_model(input_ids=toks["input_ids"]).pooler_output
        feats = model.text_projection(pooled)
        out.append((feats / feats.norm(dim=-1, keepdim=True)).numpy())
    return np.concatenate(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--words", type=int, default=512, help="vocabulary entries timed each way")
    parser.add_argument("--images", type=int, default=100)
    args = parser.parse_args()
    n_words = 128 if args.quick else args.words
    torch.set_num_threads(os.cpu_count() or 1)
    from recare_cli.models.quiet import quiet_libraries

    quiet_libraries()
    from transformers import CLIPModel, CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "clip-vit-b32-random"
        vit_b32_clip(folder)
        model = CLIPModel.from_pretrained(folder).eval()
        tokenizer = CLIPTokenizer.from_pretrained(folder)
        vocab = tokenizer.get_vocab()
        words = whole_word_vocabulary(vocab)
        rng = np.random.default_rng(0)
        pick = sorted(rng.choice(len(words), size=n_words, replace=False).tolist())
        ids = [words.token_ids[i] for i in pick]
        strings = [words.words[i] + "</w>" for i in pick]  # the reference embeds entries like 'cat</w>'

        t0 = time.perf_counter()
        embed_token_sequences(model, ids, bos=49406, eos=49407, pad=49407, batch_size=256)
        ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        reference_style(model, tokenizer, strings, batch=256)
        ref = time.perf_counter() - t0

        rows = [("vocabulary embedding, per 1,000 entries", 1000 * ref / n_words, 1000 * ours / n_words),
                ("full vocabulary (ref: 49,408 entries; ours: "
                 f"{len(words):,} whole words), extrapolated", 49408 * ref / n_words, len(words) * ours / n_words)]

        mine_rows = []
        if not args.quick or args.images:
            from recare_cli.models.tiny import draw_images

            n_img = 20 if args.quick else args.images
            draw_images(Path(tmp) / "imgs", n_img, seed=0, size=256)
            cache = Path(tmp) / "cache"
            cmd = [sys.executable, "-m", "recare_cli", "mine", str(Path(tmp) / "imgs"), "-t", "nudity",
                   "--clip", str(folder), "--cache-dir", str(cache), "-q", "-o", os.devnull]
            for tokenization in ("recare", "reference"):
                for label in ("cold cache", "warm cache"):
                    t0 = time.perf_counter()
                    subprocess.run([*cmd, "--tokenization", tokenization], check=True,
                                   env={**os.environ, "HF_HUB_OFFLINE": "1"})
                    mine_rows.append((f"`recare mine --tokenization {tokenization}` on {n_img} images, {label}",
                                      time.perf_counter() - t0))

    print(f"\n### Vocabulary embedding, ViT-B/32-shaped text tower ({n_words} entries timed each way)\n")
    print("| measurement | reference: strings padded to 77 (s) | recare: [BOS, id, EOS] (s) | speed-up |")
    print("|---|---|---|---|")
    for name, r, o in rows:
        print(f"| {name} | {r:.2f} | {o:.2f} | {r / o:.1f}× |")
    if mine_rows:
        print("\n| run | wall time (s) |\n|---|---|")
        for name, t in mine_rows:
            print(f"| {name} | {t:.1f} |")
        print(f"\ncold/warm ratio: {mine_rows[0][1] / mine_rows[1][1]:.1f}× (recare), "
              f"{mine_rows[2][1] / mine_rows[3][1]:.1f}× (reference); reference/recare: "
              f"{mine_rows[2][1] / mine_rows[0][1]:.1f}× cold, {mine_rows[3][1] / mine_rows[1][1]:.1f}× warm")
    print(f"\nreproduce: python -m bench.bench_vocab{' --quick' if args.quick else ''} "
          f"(torch {torch.__version__}, {torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
