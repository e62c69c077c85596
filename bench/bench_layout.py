"""Benchmark: the UNet in channels-last memory format (NHWC) against the default (NCHW), on the CPU.

The same module, the same inputs, the same fp32 arithmetic: only the layout of the 4-D tensors
(convolution weights, activations) differs. Measured at the batch sizes recare runs: 2 (an erase
iteration's x_t draw, a classifier-free-guidance pair), 4 (its batched teacher), 16 (sampling 8 images
with guidance) and, with a backward pass, the erase student (batch 2). Models: the shipped toy world's
UNet, and Stable Diffusion v1.4's block layout at about 1/5 of the width (random weights; speed depends
on shape, not weights). Each cell is the median of --repeat timings of --calls calls, the two layouts
interleaved so that both see the same machine.

    python -m bench.bench_layout                  # toy UNet (8x8 latents) + SD-1.4 layout (32x32)
    python -m bench.bench_layout --models toy     # quick
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import torch

from bench.interleave import interleaved_medians
from recare_cli.models.quiet import quiet_libraries

CASES = (("x_t draw (CFG pair)", 2, False), ("erase teacher", 4, False), ("sample 8 (CFG)", 16, False),
         ("erase student + backward", 2, True))


def toy_unet() -> tuple[Any, int]:
    from diffusers import UNet2DConditionModel

    from recare_cli.toyworld import assets

    sd = assets.materialise()[1]
    return UNet2DConditionModel.from_pretrained(sd, subfolder="unet").eval(), 8


def sd14_layout_unet() -> tuple[Any, int]:
    from bench.bench_erase import build

    m = build("sd14")
    return m["unet"], int(m["latent"])


def call(unet: Any, x: torch.Tensor, emb: torch.Tensor, backward: bool) -> Callable[[], None]:
    def run() -> None:
        if backward:
            unet(x, 500, encoder_hidden_states=emb).sample.square().mean().backward()
        else:
            with torch.no_grad():
                unet(x, 500, encoder_hidden_states=emb)
    return run


def measure(unet: Any, latent: int, batch: int, backward: bool, calls: int, repeat: int) -> dict[str, Any]:
    torch.manual_seed(0)
    x = torch.randn(batch, int(unet.config.in_channels), latent, latent)
    emb = torch.randn(batch, 77, int(unet.config.cross_attention_dim))
    # The erase engine trains the cross-attention projections (2-D weights): the layout does not touch them.
    for name, p in unet.named_parameters():
        p.requires_grad_(backward and "attn2" in name)
    formats = {"default": torch.contiguous_format, "channels_last": torch.channels_last}
    run = call(unet, x, emb, backward)
    outputs = {}
    for layout in formats:  # warm-up, and the numerical difference between the layouts
        unet.to(memory_format=formats[layout])
        run()
        with torch.no_grad():
            outputs[layout] = unet(x, 500, encoder_hidden_states=emb).sample
    medians = interleaved_medians(dict.fromkeys(formats, run), calls, repeat,
                                  before=lambda layout: unet.to(memory_format=formats[layout]))
    unet.zero_grad(set_to_none=True)
    unet.to(memory_format=torch.contiguous_format)
    default, last = medians["default"], medians["channels_last"]
    diff = float((outputs["default"] - outputs["channels_last"]).abs().max())
    return {"default_ms": default * 1e3, "channels_last_ms": last * 1e3, "ratio": last / default, "max_diff": diff}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="toy,sd14-small", help="comma-separated: toy, sd14-small")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    quiet_libraries()
    torch.set_num_threads(args.threads)
    builders = {"toy": toy_unet, "sd14-small": sd14_layout_unet}
    print("| model | call | batch | NCHW ms | NHWC ms | NHWC / NCHW | max abs diff |\n|---|---|---|---|---|---|---|")
    for model in args.models.split(","):
        unet, latent = builders[model]()
        for label, batch, backward in CASES:
            r = measure(unet, latent, batch, backward, args.calls, args.repeat)
            print(f"| {model} | {label} | {batch} | {r['default_ms']:.1f} | {r['channels_last_ms']:.1f} | "
                  f"{r['ratio']:.2f} | {r['max_diff']:.1e} |", flush=True)
    print(f"\n{args.threads} threads, median of {args.repeat} x {args.calls} calls, layouts interleaved; "
          f"reproduce: python -m bench.bench_layout --models {args.models} --threads {args.threads}")


if __name__ == "__main__":
    main()
