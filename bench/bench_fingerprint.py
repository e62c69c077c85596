"""Benchmark: the model fingerprint that hashes every value against the one that hashed a strided sample
of 256 values per tensor, side by side, on an SD-1.4-shaped UNet and a CLIP-L-shaped text encoder built
from configs with random weights (the cost depends on the shapes, not the values).

For each model in fp32 and in fp16 it prints the time of each fingerprint (best of --repeat, the two
interleaved), whether fp32 and fp16 give the same fingerprint, and whether the fingerprint sees one row of
the 49,408-row token embedding written over (what a textual-inversion token swapped in does).

    python -m bench.bench_fingerprint             # SD-1.4 widths (860 M UNet parameters; about 1 min to build)
    python -m bench.bench_fingerprint --reduced   # the SD-1.4 layout at about 1/5 of the width (quick)
"""

from __future__ import annotations

import argparse
import hashlib
import time
from collections.abc import Callable
from typing import Any

import torch

from recare_cli.models.fingerprint import state_fingerprint

SAMPLES_PER_TENSOR = 256


def sampled_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """The former fingerprint: name, shape and an evenly strided sample of up to 256 values per tensor."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach()
        flat = tensor.reshape(-1)
        stride = max(1, flat.numel() // SAMPLES_PER_TENSOR)
        sample = flat[::stride][:SAMPLES_PER_TENSOR].to(device="cpu", dtype=torch.float32)
        digest.update(name.encode())
        digest.update(repr(tuple(tensor.shape)).encode())
        digest.update(sample.to(torch.float16).numpy().tobytes())
    return "sha256:" + digest.hexdigest()[:16]


def build(reduced: bool) -> dict[str, torch.nn.Module]:
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from recare_cli.models.quiet import quiet_libraries

    quiet_libraries()
    torch.manual_seed(0)
    if reduced:  # as bench/bench_erase.py: SD-1.4's block layout at about 1/5 of the width
        unet = UNet2DConditionModel(block_out_channels=(64, 128, 256, 256), layers_per_block=2, sample_size=32,
                                    cross_attention_dim=160, attention_head_dim=8, norm_num_groups=32)
        text = dict(hidden_size=160, intermediate_size=640, num_hidden_layers=12, num_attention_heads=4)
    else:  # SD-1.4's UNet (its config) and CLIP ViT-L/14's text tower
        unet = UNet2DConditionModel(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, sample_size=64,
                                    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32)
        text = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
    encoder = CLIPTextModel(CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, **text))
    return {"UNet": unet.eval(), "text encoder": encoder.eval()}


def best(fn: Callable[[], Any], times: list[float]) -> Any:
    start = time.perf_counter()
    value = fn()
    times.append(time.perf_counter() - start)
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reduced", action="store_true", help="SD-1.4 layout at about 1/5 of the width")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    models = build(args.reduced)
    rows = []
    for name, module in models.items():
        params = sum(p.numel() for p in module.parameters())
        found: dict[str, dict[str, str]] = {}
        for dtype in (torch.float32, torch.float16):
            state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in module.state_dict().items()}
            t_old: list[float] = []
            t_new: list[float] = []
            for _ in range(args.repeat):  # interleaved: a burst of load from other jobs hits both alike
                old = best(lambda state=state: sampled_fingerprint(state), t_old)  # type: ignore[misc]
                new = best(lambda state=state: state_fingerprint(state), t_new)  # type: ignore[misc]
            found[str(dtype)] = {"old": old, "new": new}
            rows.append((name, params, str(dtype).removeprefix("torch."), min(t_old), min(t_new)))
            del state
        same = {kind: found["torch.float32"][kind] == found["torch.float16"][kind] for kind in ("old", "new")}
        rows[-2:] = [(*r, same) for r in rows[-2:]]
    edit = edit_seen(models["text encoder"])
    del models

    width = "about 1/5 of SD-1.4's widths (--reduced)" if args.reduced else "SD-1.4's widths"
    print(f"\n### fingerprint: sampled (256 values per tensor, the former) vs every value; {width}, random "
          f"weights, CPU ({torch.get_num_threads()} threads), best of {args.repeat}\n")
    print("| model | parameters | dtype | sampled (s) | every value (s) | every value, MB fp16 / s "
          "| fp32 = fp16: sampled / every value |")
    print("|---|---|---|---|---|---|---|")
    for name, params, dtype, old, new, same in rows:
        print(f"| {name} | {params / 1e6:.1f} M | {dtype} | {old:.3f} | {new:.2f} | {2 * params / 1e6 / new:.0f} "
              f"| {'yes' if same['old'] else 'no'} / {'yes' if same['new'] else 'no'} |")
    print(f"\none row of the text encoder's 49,408-row token embedding written over: sampled fingerprint "
          f"{'changes' if edit['old'] else 'unchanged'}, every-value fingerprint "
          f"{'changes' if edit['new'] else 'unchanged'}")
    print(f"\nreproduce: python -m bench.bench_fingerprint{' --reduced' if args.reduced else ''} "
          f"--repeat {args.repeat}")


def edit_seen(encoder: torch.nn.Module) -> dict[str, bool]:
    """Whether each fingerprint changes when row 1000 of the token embedding gets new values."""
    state = encoder.state_dict()
    before = {"old": sampled_fingerprint(state), "new": state_fingerprint(state)}
    key = next(k for k in state if k.endswith("token_embedding.weight"))
    edited = dict(state)
    edited[key] = state[key].clone()
    edited[key][1000] = torch.randn(state[key].shape[1])
    return {"old": sampled_fingerprint(edited) != before["old"], "new": state_fingerprint(edited) != before["new"]}


if __name__ == "__main__":
    main()
