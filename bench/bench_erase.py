"""Benchmark: recare's erase iteration and inversion step vs the reference implementation's pattern.

The reference pattern (damilab/CARE utils/recare.py, written here plainly, not copied):
* erase: every teacher prediction (∅, erase concept, each erase-set concept, anchor, retain) and both
  student predictions are separate calls of a classifier-free-guidance batch of 2 with guidance 1 (an
  unconditional half computed and cancelled), prompts re-encoded with their unconditional twin on
  every call, and the trained modules deep-copied (``FineTunedModel``) and swapped in and out;
* inversion: the VAE encodes the (resized, flipped) image on every step, the whole token-embedding table
  is trained by AdamW and all rows but the placeholder are copied back after each step.

Both sides run the same model (its scheduler configured as SD v1.4's), the same x_t draw (same k, same noise)
and the same fp32 arithmetic on one CPU thread (two shared cores here: several threads contending are
unusable). Time is the median CPU time of a step (process time; wall time on a shared machine includes
waiting for a core). Peak memory is the process's peak resident set size (sampled every 2 ms with psutil in
a fresh process per measurement) minus its RSS after the models were built: it counts each method's own
state (teacher copy or deep copy, optimizer state, activations). tracemalloc does not see torch's
allocations.

recare's erase also runs with LoRA adapters (``erase --lora``, rank ``--lora-rank``, default 4): the trained state is
the adapters, the teacher the base model with the adapters off. At step 0 the adapted model is the base model, so its
first loss is the same as well.

Both erase sides must compute the same first loss (to LOSS_RTOL, relative): for every erase row the script checks
it and exits with status 1 and a message naming both losses when they differ, before printing any table.

    python -m bench.bench_erase                 # tiny + SD-1.4 layout at reduced width
    python -m bench.bench_erase --models tiny   # quick
    python -m bench.bench_erase --child erase ours-lora sd14-full 1 1   # one row at SD-1.4's full size, 512 px
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]  # the child processes run this module from the repository root
# Both erase sides compute the same first loss up to fp32 summation order (batched vs separate calls): 1e-6
# relative on the tiny model; a real divergence (another x_t, another target) is orders of magnitude larger.
LOSS_RTOL = 1e-5
LORA_RANK = 4  # diffusers' LoRA training default
K_MEAN = 24  # x_t is drawn after k ~ U[1, 48] DDIM steps: mean 24.5
# Stable Diffusion v1.4's scheduler_config.json. clip_sample matters: PNDM ignores it, but the reference side's
# DDIMScheduler.from_config clips the predicted x0 to [-1, 1] unless the config says false (SD v1.4's does), while
# recare's engine never clips; without it the two sides draw different x_t and their losses differ.
SD14_SCHEDULER = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                  "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
                  "trained_betas": None, "clip_sample": False}


# ----------------------------------------------------------------------------------------------------------
# Models


def build(model: str) -> dict[str, Any]:
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from recare_cli.models.bpe import save_clip_tokenizer

    torch.manual_seed(0)
    if model == "tiny":
        unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, sample_size=16,
                                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                                    attention_head_dim=8, norm_num_groups=32)
        vae = AutoencoderKL(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
                            up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=32)
        text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
        resolution, scale = 32, 2
    elif model == "sd14-full":  # SD-1.4's shapes at full width and 512 px (one row at a time: gigabytes of RAM)
        unet = UNet2DConditionModel(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, sample_size=64,
                                    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32)
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2,
                            norm_num_groups=32)
        text = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
        resolution, scale = 512, 8
    else:  # SD-1.4's block layout (UNet, VAE, CLIP-L text tower) at about 1/5 of the width
        unet = UNet2DConditionModel(block_out_channels=(64, 128, 256, 256), layers_per_block=2, sample_size=32,
                                    cross_attention_dim=160, attention_head_dim=8, norm_num_groups=32)
        vae = AutoencoderKL(block_out_channels=(32, 64, 128, 128), down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2,
                            norm_num_groups=32)
        text = dict(hidden_size=160, intermediate_size=640, num_hidden_layers=12, num_attention_heads=4)
        resolution, scale = 256, 8
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, bos_token_id=49406,
                                                eos_token_id=49407, pad_token_id=49407, **text))
    folder = os.path.join(os.environ.get("TMPDIR", "/tmp"), "recare-bench-tokenizer")
    if not os.path.exists(os.path.join(folder, "vocab.json")):
        save_clip_tokenizer(Path(folder))
    tokenizer = CLIPTokenizer.from_pretrained(folder)
    tokenizer.model_max_length = 77
    scheduler = PNDMScheduler.from_config(SD14_SCHEDULER)
    for m in (unet, vae, text_encoder):
        m.eval().requires_grad_(False)
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
                resolution=resolution, latent=resolution // scale)


ERASE_SET = ["nudity", "naked", "nude"]  # the target and two stand-ins for adversarial tokens
ANCHORS = [f"A {w}" for w in ("person", "man", "woman", "girl", "boy", "face", "body", "dress", "hair", "smile")]
RETAINS = [f"A photo of {w}" for w in ("person", "man", "woman", "girl", "boy", "face", "body", "dress", "hair",
                                       "smile")]


# ----------------------------------------------------------------------------------------------------------
# Erase: ours


def erase_ours(m: dict[str, Any], k: int, lora: int | None = None) -> Any:
    import torch

    from recare_cli.core.diffusion import ErasePrompts, EraseSchedule, EraseTrainer, encode_prompts
    from recare_cli.core.guidance import select_parameters
    from recare_cli.stages.erase import EraseOptions, erase_settings, lora_settings

    def enc(p: list[str]) -> torch.Tensor:
        return encode_prompts(m["tokenizer"], m["text_encoder"], p, device=torch.device("cpu"))

    n = 100
    prompts = ErasePrompts(uncond=enc([""]), erase=enc(ERASE_SET), anchors=enc(ANCHORS), retains=enc(RETAINS))
    schedule = EraseSchedule(erase=[i % 3 for i in range(n)], anchor=[i % 10 for i in range(n)],
                             retain=[i % 10 for i in range(n)])
    opts = EraseOptions(target="bench", output="-", iterations=n, lora=lora)
    trainer = EraseTrainer(m["unet"], select_parameters(m["unet"], "noxattn"), prompts, schedule,
                           erase_settings(opts, m["latent"]), m["scheduler"].config,
                           torch.Generator().manual_seed(0), lora=lora_settings(opts))

    class Fixed:
        i = 0

        def step(self) -> float:
            trainer._draw = lambda i: fixed_draw(m, k, trainer.sampler.init_noise_sigma)  # type: ignore[method-assign]
            out = trainer.step(self.i)
            self.i += 1
            return out["loss"]

    return Fixed()


def fixed_draw(m: dict[str, Any], k: int, sigma: float) -> tuple[int, Any]:
    import torch

    z = torch.randn(1, 4, m["latent"], m["latent"], generator=torch.Generator().manual_seed(7))
    return k, z * sigma


# ----------------------------------------------------------------------------------------------------------
# Erase: the reference pattern


def _set_module(root: Any, name: str, module: Any) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attr, module)


def erase_reference(m: dict[str, Any], k: int) -> Any:
    import torch
    from diffusers import DDIMScheduler

    unet, te, tok = m["unet"], m["text_encoder"], m["tokenizer"]
    orig, ft = {}, {}
    for name, module in unet.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and "attn2" not in name:
            orig[name] = module
            ft[name] = copy.deepcopy(module).requires_grad_(True)
    params = [p for mod in ft.values() for p in mod.parameters()]
    opt = torch.optim.AdamW(params, lr=2e-5)
    sched = DDIMScheduler.from_config(m["scheduler"].config)

    def swap(modules: dict[str, Any]) -> None:
        for name, module in modules.items():
            _set_module(unet, name, module)

    def text(prompt: str) -> torch.Tensor:  # reference get_text_embeddings: [uncond, cond]
        ids = tok([prompt, ""], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        out = te(ids)[0]
        return torch.cat([out[1:], out[:1]])

    def predict(i: int, x: torch.Tensor, emb: torch.Tensor, g: float) -> torch.Tensor:
        t = sched.timesteps[i]
        eps = unet(sched.scale_model_input(torch.cat([x, x]), t), t, encoder_hidden_states=emb).sample
        u, c = eps.chunk(2)
        return u + g * (c - u)

    def project_guidance(conds: list[torch.Tensor], u: torch.Tensor, scales: list[float]) -> torch.Tensor:
        pos, neg, npos, nneg = torch.zeros_like(u), torch.zeros_like(u), 0, 0
        for c, s in zip(conds, scales, strict=True):
            diff = (c - u).double()
            v1 = torch.nn.functional.normalize(c.double(), dim=[-1, -2, -3])
            par = (diff * v1).sum(dim=[-1, -2, -3], keepdim=True) * v1
            update = ((diff - par) + par).to(u.dtype)
            if s > 0:
                pos, npos = pos + (s - 1) * update, npos + 1
            else:
                neg, nneg = neg + (s - 1) * update, nneg + 1
        return u + pos / max(npos, 1) + neg / max(nneg, 1)

    class Ref:
        i = 0

        def step(self) -> float:
            h, a, r = ERASE_SET[self.i % 3], ANCHORS[self.i % 10], RETAINS[self.i % 10]
            self.i += 1
            with torch.no_grad():
                neutral, target_e = text(""), text(h)
                text(a), text(r)  # the reference encodes these twice per iteration
                neg_embs = [text(e) for e in ERASE_SET]
                anchor_e, retain_e = text(a), text(r)
                sched.set_timesteps(50)
                kk, z = fixed_draw(m, k, sched.init_noise_sigma)
                x = z
                swap(ft)
                for i in range(kk):
                    x = sched.step(predict(i, x, target_e, 3.0), sched.timesteps[i], x).prev_sample
                swap(orig)
                sched.set_timesteps(1000)
                it = int(kk / 50 * 1000)
                u = predict(it, x, neutral, 1.0)
                predict(it, x, target_e, 1.0)  # computed and unused in the reference
                negs = [predict(it, x, e, 1.0) for e in neg_embs]
                anc = predict(it, x, anchor_e, 1.0)
                ret = predict(it, x, retain_e, 1.0)
            swap(ft)
            student = predict(it, x, target_e, 1.0)
            student_r = predict(it, x, retain_e, 1.0)
            swap(orig)
            target = project_guidance([*negs, anc], u, [-2.0] * len(negs) + [2.0])
            loss = torch.nn.functional.mse_loss(student, target) + torch.nn.functional.mse_loss(student_r, ret)
            opt.zero_grad()
            loss.backward()
            opt.step()
            return float(loss.detach())

    return Ref()


# ----------------------------------------------------------------------------------------------------------
# Inversion: ours and the reference pattern


def images(m: dict[str, Any], n: int = 4) -> list[Any]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (m["resolution"] + 40, m["resolution"] + 24, 3), dtype=np.uint8))
            for _ in range(n)]


def to_pixels(img: Any, res: int, flip: bool) -> Any:
    import numpy as np
    import torch
    from PIL import Image

    img = img.resize((res, res), resample=Image.Resampling.BICUBIC)
    if flip:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]


def invert_ours(m: dict[str, Any]) -> Any:
    import torch

    from recare_cli.core.diffusion import (
        InversionSettings,
        InversionTrainer,
        extend_tokenizer,
        latent_distributions,
        tokenize,
    )
    from recare_cli.stages.invert import OBJECT_TEMPLATES, InvertOptions

    tok, first = extend_tokenizer(m["tokenizer"], ["<adv0>"])
    pixels = torch.cat([to_pixels(im, m["resolution"], False) for im in images(m)])
    lat = latent_distributions(m["vae"], pixels)
    init = m["text_encoder"].get_input_embeddings().weight[2533:2534]
    ids = tokenize(tok, [t.format("<adv0>") for t in OBJECT_TEMPLATES])
    trainer = InversionTrainer(m["unet"], m["text_encoder"], first, init[:0], init, lat, ids, m["scheduler"].config,
                               InversionSettings(steps=InvertOptions.steps, lr=InvertOptions.lr,
                                                 precision=InvertOptions.precision), torch.Generator().manual_seed(0))

    class Ours:
        def step(self) -> float:
            return trainer.step()

    return Ours()


def invert_reference(m: dict[str, Any]) -> Any:
    import random

    import torch
    from diffusers import DDPMScheduler

    from recare_cli.stages.invert import OBJECT_TEMPLATES

    tok = copy.deepcopy(m["tokenizer"])
    tok.add_tokens(["<adv0>"])
    te, vae, unet = m["text_encoder"], m["vae"], m["unet"]
    te.resize_token_embeddings(len(tok))
    table = te.get_input_embeddings()
    with torch.no_grad():
        table.weight[-1] = table.weight[2533]
    table.weight.requires_grad_(True)
    orig = table.weight.data.clone()
    opt = torch.optim.AdamW(table.parameters(), lr=5e-3)
    noise_sched = DDPMScheduler.from_config(m["scheduler"].config)
    imgs = images(m)
    rnd = random.Random(0)
    keep = torch.ones(len(tok), dtype=torch.bool)
    keep[-1] = False

    class Ref:
        def step(self) -> float:
            pixels = to_pixels(imgs[rnd.randrange(len(imgs))], m["resolution"], rnd.random() < 0.5)
            text = rnd.choice(OBJECT_TEMPLATES).format("<adv0>")
            ids = tok(text, padding="max_length", truncation=True, max_length=77, return_tensors="pt").input_ids
            latents = vae.encode(pixels).latent_dist.sample() * 0.18215
            noise = torch.randn_like(latents)
            t = torch.randint(0, 999, (1,))
            noisy = noise_sched.add_noise(latents, noise, t)
            pred = unet(noisy, t, te(ids)[0]).sample
            loss = torch.nn.functional.mse_loss(pred.float(), noise.float())
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                table.weight.data[keep] = orig[keep]
            return float(loss)

    return Ref()


# ----------------------------------------------------------------------------------------------------------
# Measurement (one fresh process per row)


ERASE_IMPLS = ("reference", "ours", "ours-gc", "ours-lora", "ours-lora-gc")
INVERT_IMPLS = ("reference", "ours", "ours-gc")


def child(task: str, impl: str, model: str, k: int, iters: int, rank: int = LORA_RANK) -> dict[str, Any]:
    import psutil
    import torch

    torch.set_num_threads(1)
    from recare_cli.models.quiet import quiet_libraries

    quiet_libraries()
    m = build(model)
    proc = psutil.Process()
    base = proc.memory_info().rss
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    if impl.endswith("-gc"):  # recare's --gradient-checkpointing option
        m["unet"].enable_gradient_checkpointing()
        m["unet"].train()
    if task == "erase":
        lora = rank if impl.startswith("ours-lora") else None
        runner = erase_reference(m, k) if impl == "reference" else erase_ours(m, k, lora)
    else:
        runner = invert_reference(m) if impl == "reference" else invert_ours(m)
    first_loss = runner.step()  # warm-up (allocations, lazy inits)
    cpu, wall = [], []
    for _ in range(iters):
        c0, w0 = time.process_time(), time.perf_counter()
        runner.step()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    stop.set()
    thread.join()
    # CPU time of the (single-threaded) process: the machine is shared, and wall time includes waiting for a core.
    return {"seconds": statistics.median(cpu), "wall": statistics.median(wall), "peak_mb": (peak[0] - base) / 2**20,
            "first_loss": first_loss}


def check_same_loss(what: str, losses: dict[str, float], rtol: float = LOSS_RTOL) -> None:
    """Exit non-zero unless every side's first loss equals the reference's within ``rtol`` (relative): the timings
    compare two implementations of one computation only while they compute the same thing."""
    ref = losses["reference"]
    off = {impl: loss for impl, loss in losses.items() if abs(loss - ref) > rtol * abs(ref)}
    if off:
        sys.exit(f"bench_erase: {what}: the first losses differ beyond {rtol:g} relative: reference {ref!r}, "
                 + ", ".join(f"{impl} {loss!r}" for impl, loss in off.items())
                 + "; the two sides do not compute the same erase iteration")
    print(f"{what}: first losses agree within {rtol:g} relative: "
          + ", ".join(f"{impl} {loss:.9g}" for impl, loss in losses.items()), file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny,sd14", help="tiny and/or sd14 (comma-separated)")
    parser.add_argument("--iters", type=int, default=5, help="timed iterations per row after one warm-up (median "
                                                              "reported; 2 for the slow SD-layout k = 24 rows)")
    parser.add_argument("--lora-rank", type=int, default=LORA_RANK, help="rank of the LoRA rows (erase --lora)")
    parser.add_argument("--child", nargs=5, metavar=("TASK", "IMPL", "MODEL", "K", "ITERS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        task, impl, model, k, iters = args.child
        print(json.dumps(child(task, impl, model, int(k), int(iters), args.lora_rank)))
        return
    rows = []
    for model in args.models.split(","):
        for task, k in (("erase", 1), ("erase", K_MEAN), ("invert", 0)):
            res = {}
            for impl in ERASE_IMPLS if task == "erase" else INVERT_IMPLS:
                iters = args.iters if (task != "erase" or k == 1 or model == "tiny") else min(2, args.iters)
                out = subprocess.run([sys.executable, "-m", "bench.bench_erase", "--child", task, impl, model, str(k),
                                      str(iters), "--lora-rank", str(args.lora_rank)],
                                     capture_output=True, text=True, check=True, cwd=ROOT)
                res[impl] = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"{model} {task} k={k} {impl}: {res[impl]}", file=sys.stderr)
            if task == "erase":
                check_same_loss(f"{model} erase k={k}", {impl: r["first_loss"] for impl, r in res.items()})
            rows.append((model, task, k, res))
    print("| model | measured step (CPU s, median) | reference pattern s | recare s | speed-up | reference peak MB "
          "| recare peak MB | memory ratio | recare + grad. ckpt s | recare + grad. ckpt MB | memory ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for model, task, k, res in rows:
        what = f"erase iteration, k = {k}" if task == "erase" else "inversion step"
        r, o, c = res["reference"], res["ours"], res["ours-gc"]
        print(f"| {model} | {what} | {r['seconds']:.3f} | {o['seconds']:.3f} | {r['seconds'] / o['seconds']:.2f}× "
              f"| {r['peak_mb']:.0f} | {o['peak_mb']:.0f} | {o['peak_mb'] / max(r['peak_mb'], 1e-9):.2f} "
              f"| {c['seconds']:.3f} | {c['peak_mb']:.0f} | {c['peak_mb'] / max(r['peak_mb'], 1e-9):.2f} |")
    print(f"\nerase with LoRA adapters (rank {args.lora_rank}) beside the same modules, same run:\n")
    print("| model | measured step (CPU s, median) | reference pattern s | reference peak MB | recare s | recare MB "
          "| LoRA s | LoRA MB | LoRA memory ratio | LoRA + grad. ckpt s | LoRA + grad. ckpt MB | memory ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for model, task, k, res in rows:
        if task != "erase":
            continue
        r, o, lo, lc = res["reference"], res["ours"], res["ours-lora"], res["ours-lora-gc"]
        ref_mb = max(r["peak_mb"], 1e-9)
        print(f"| {model} | erase iteration, k = {k} | {r['seconds']:.3f} | {r['peak_mb']:.0f} | {o['seconds']:.3f} "
              f"| {o['peak_mb']:.0f} | {lo['seconds']:.3f} | {lo['peak_mb']:.0f} | {lo['peak_mb'] / ref_mb:.2f} "
              f"| {lc['seconds']:.3f} | {lc['peak_mb']:.0f} | {lc['peak_mb'] / ref_mb:.2f} |")
    print(f"\nreproduce: python -m bench.bench_erase --models {args.models} --iters {args.iters} "
          f"--lora-rank {args.lora_rank}")


if __name__ == "__main__":
    main()
