"""Benchmark: the toy world's UNet with two layers per block (as shipped) against one, or (``--vary tokens``)
the shipped UNet cross-attending to 77 text states (as shipped) against 24, or (``--vary compile``) the
shipped UNet run eagerly (as the training code runs it) against ``torch.compile`` of it (inductor, which
needs a C++ compiler; the first call of each shape compiles, outside the timing).

The UNets are built by ``recare_cli.toyworld.train.build_unet`` from the training defaults, differing only
in ``unet_layers`` (random weights: speed depends on shape, not weights). Timed: the training step (batch
128, forward + backward + AdamW, every weight trained) and the calls the demo makes: an erase iteration's
x_t draw (batch 2, classifier-free-guidance pair), its batched teacher (4), the erase student with a
backward pass through the cross-attention weights (2), and sampling 8 images with guidance (16). Each cell
is the median of --repeat timings of --calls calls, the two variants interleaved so that both see the same
machine (this machine's speed moves 1.5-2x within a day).

    python -m bench.bench_toy_unet
    python -m bench.bench_toy_unet --vary tokens
    python -m bench.bench_toy_unet --vary compile
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import torch

from bench.interleave import interleaved_medians
from recare_cli.models.quiet import quiet_libraries
from recare_cli.toyworld.train import TrainConfig, build_unet

# label, batch, what runs
CASES = (("training step", 128, "train"), ("x_t draw (CFG pair)", 2, "infer"), ("erase teacher", 4, "infer"),
         ("erase student + backward", 2, "xattn"), ("sample 8 (CFG)", 16, "infer"))


def call(unet: Any, optimizer: Any, batch: int, kind: str, tokens: int = 77) -> Callable[[], None]:
    torch.manual_seed(0)
    x = torch.randn(batch, 4, 8, 8)
    emb = torch.randn(batch, tokens, int(unet.config.cross_attention_dim))
    t = torch.randint(0, 1000, (batch,))
    for name, p in unet.named_parameters():
        p.requires_grad_(kind == "train" or (kind == "xattn" and "attn2" in name))

    def run() -> None:
        if kind == "infer":
            with torch.no_grad():
                unet(x, t, encoder_hidden_states=emb)
            return
        loss = unet(x, t, encoder_hidden_states=emb).sample.square().mean()
        loss.backward()
        if kind == "train":
            optimizer.step()
        unet.zero_grad(set_to_none=True)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vary", choices=("layers", "tokens", "compile"), default="layers",
                        help="layers: 2 vs 1 per block; tokens: 77 vs 24 text states (2 layers); compile: eager "
                             "vs torch.compile (2 layers)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    quiet_libraries()
    torch.set_num_threads(args.threads)
    # variant -> (layers per block, text states, compiled); the first is the shipped world's, as trained
    variants = {"layers": {"2 layers": (2, 77, False), "1 layer": (1, 77, False)},
                "tokens": {"77 tokens": (2, 77, False), "24 tokens": (2, 24, False)},
                "compile": {"eager": (2, 77, False), "compiled": (2, 77, True)}}[args.vary]
    built = {layers: build_unet(TrainConfig(unet_layers=layers), 3, 64).train()
             for layers in {layers for layers, _, _ in variants.values()}}
    # a compiled variant shares the eager one's module (and weights, and optimizer)
    unets = {name: torch.compile(built[layers]) if compiled else built[layers]
             for name, (layers, _, compiled) in variants.items()}
    optimizers = {layers: torch.optim.AdamW(u.parameters(), lr=1e-6) for layers, u in built.items()}
    sizes = {layers: sum(p.numel() for p in u.parameters()) / 1e6 for layers, u in built.items()}
    print("parameters: " + ", ".join(f"{layers} layer(s) {size:.2f} M" for layers, size in sorted(sizes.items())))
    first, second = variants
    print(f"\n| call | batch | {first} ms | {second} ms | ratio |\n|---|---|---|---|---|")
    for label, batch, kind in CASES:
        runs = {name: call(unets[name], optimizers[layers], batch, kind, tokens)
                for name, (layers, tokens, _) in variants.items()}
        for run in runs.values():  # warm-up
            run()
        medians = interleaved_medians(runs, args.calls, args.repeat)
        a, b = medians[first] * 1e3, medians[second] * 1e3
        print(f"| {label} | {batch} | {a:.1f} | {b:.1f} | {b / a:.2f} |", flush=True)
    print(f"\n{args.threads} threads, median of {args.repeat} x {args.calls} calls, variants interleaved; "
          f"reproduce: python -m bench.bench_toy_unet --vary {args.vary} --threads {args.threads}")


if __name__ == "__main__":
    main()
