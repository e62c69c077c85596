"""The shipped toy-world weights and the model folders materialised from them.

Package data (``recare_cli/data/toyworld/``) holds only what cannot be regenerated: fp16
safetensors of the CLIP, the VAE and the UNet, their configs, and ``manifest.json`` (file
SHA-256s, the fingerprints the loaders must report, the measured figures). The tokenizer is
written from ``recare_cli/models/bpe.py``, and the Stable Diffusion text encoder is the CLIP's
text tower, so it is stored once.

``materialise()`` builds ordinary folders (``clip/``: transformers CLIP; ``sd/``: diffusers
Stable Diffusion) under the recare cache, keyed by the manifest's digest, atomically: a folder
that exists is complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

from recare_cli.errors import BadInputError, ModelUnavailableError
from recare_cli.io.cache import default_cache_dir
from recare_cli.io.digest import sha256_file
from recare_cli.toyworld.options import ShipOptions

MANIFEST = "manifest.json"
WEIGHT_FILES = ("clip.safetensors", "vae.safetensors", "unet.safetensors")
CONFIG_FILES = ("clip_config.json", "vae_config.json", "unet_config.json", "scheduler_config.json")
DETECTOR_FILE = "detector.safetensors"  # toyworld.detector's weights, shipped beside the world's


def data_dir() -> Path:
    return Path(str(resources.files("recare_cli.data"))) / "toyworld"


def shipped(folder: Path | None = None) -> bool:
    return ((folder or data_dir()) / MANIFEST).is_file()


def read_manifest(folder: Path | None = None) -> dict[str, Any]:
    path = (folder or data_dir()) / MANIFEST
    if not path.is_file():
        raise ModelUnavailableError(f"no trained toy world here ({path} is missing); "
                                    "train one with: recare toyworld train --out DIR")
    data: dict[str, Any] = json.loads(path.read_text("utf-8"))
    return data


def fp16_state(module: Any) -> dict[str, Any]:
    import torch

    return {k: (v.detach().to(torch.float16) if v.is_floating_point() else v.detach()).contiguous()
            for k, v in module.state_dict().items()}


def export(clip_dir: Path, sd_dir: Path, dest: Path, *, metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the fp16 weights + configs of trained folders into ``dest`` with a manifest whose
    fingerprints are those of the folders materialised from ``dest`` (what users will load)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPModel

    from recare_cli.models.quiet import quiet_libraries

    quiet_libraries()
    dest.mkdir(parents=True, exist_ok=True)
    before = read_manifest(dest) if shipped(dest) else {}
    clip = CLIPModel.from_pretrained(clip_dir)
    vae = AutoencoderKL.from_pretrained(sd_dir / "vae")
    unet = UNet2DConditionModel.from_pretrained(sd_dir / "unet")
    for name, module in (("clip", clip), ("vae", vae), ("unet", unet)):
        save_file(fp16_state(module), str(dest / f"{name}.safetensors"), metadata={"format": "pt"})
    shutil.copyfile(clip_dir / "config.json", dest / "clip_config.json")
    shutil.copyfile(sd_dir / "vae" / "config.json", dest / "vae_config.json")
    shutil.copyfile(sd_dir / "unet" / "config.json", dest / "unet_config.json")
    shutil.copyfile(sd_dir / "scheduler" / "scheduler_config.json", dest / "scheduler_config.json")
    manifest: dict[str, Any] = {"files": {f: sha256_file(dest / f) for f in (*WEIGHT_FILES, *CONFIG_FILES)}}
    with tempfile.TemporaryDirectory() as tmp:
        clip_out, sd_out = build_folders(dest, Path(tmp))
        manifest["fingerprints"] = fingerprints(clip_out, sd_out)
    manifest["metrics"] = dict(metrics or {})
    _keep_detector(before, manifest, dest)
    write_manifest(dest, manifest)
    return manifest


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    """Record the shipped weights' total size in ``manifest`` and write it into ``folder`` atomically."""
    from recare_cli.io.atomic import atomic_write_bytes

    manifest["bytes"] = sum((folder / f).stat().st_size for f in manifest["files"] if f.endswith(".safetensors"))
    atomic_write_bytes(folder / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())


def _keep_detector(before: dict[str, Any], manifest: dict[str, Any], dest: Path) -> None:
    """Carry the shipped detector's entry into a new manifest when it still judges this world.

    The detector reads pixels decoded by the VAE and was trained on them: it stays valid while the
    VAE's weights are byte for byte the ones it was trained on; otherwise it is dropped from the
    manifest (the demo then says how to train one) rather than silently judging another world."""
    from recare_cli import console

    digest = before.get("files", {}).get(DETECTOR_FILE)
    if digest is None:
        return
    same_vae = before["files"].get("vae.safetensors") == manifest["files"]["vae.safetensors"]
    if same_vae and (dest / DETECTOR_FILE).is_file():
        manifest["files"][DETECTOR_FILE] = digest
        if "detector" in before.get("metrics", {}):
            manifest["metrics"]["detector"] = before["metrics"]["detector"]
        console.info("kept the shipped detector: the VAE it was trained on is unchanged")
    else:
        console.warn("the VAE changed: the shipped detector no longer judges this world and is left out of the "
                     "manifest; train a new one: recare toyworld detector --ship")


def fingerprints(clip_dir: Path, sd_dir: Path) -> dict[str, str]:
    from recare_cli.models.clip import load_clip
    from recare_cli.models.sd import load_sd

    clip = load_clip(str(clip_dir), device="cpu", dtype="fp32")
    sd = load_sd(str(sd_dir), device="cpu", dtype="fp32")
    return {"clip": clip.fingerprint, "unet": sd.unet_fingerprint, "text_encoder": sd.text_encoder_fingerprint}


def fp32_state(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` with its floating-point tensors in fp32 (the others as they are)."""
    import torch

    return {k: v.to(torch.float32) if v.is_floating_point() else v for k, v in state.items()}


def load_fp32(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return fp32_state(load_file(str(path)))


FOLDER_LAYOUT = 2  # 2: the CLIP folder carries the world's words (io.wordlist.VOCABULARY_FILE)


def build_folders(source: Path, out: Path) -> tuple[Path, Path]:
    """Write ``out/clip`` and ``out/sd`` from the files in ``source`` (fp32 weights)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPConfig, CLIPModel

    from recare_cli.models.quiet import quiet_libraries
    from recare_cli.toyworld.train import save_clip_folder, save_sd_folder, text_encoder_from_clip

    quiet_libraries()
    clip = CLIPModel(CLIPConfig.from_dict(json.loads((source / "clip_config.json").read_text("utf-8"))))
    clip.load_state_dict(load_fp32(source / "clip.safetensors"))
    vae = AutoencoderKL.from_config(json.loads((source / "vae_config.json").read_text("utf-8")))
    vae.load_state_dict(load_fp32(source / "vae.safetensors"))
    unet = UNet2DConditionModel.from_config(json.loads((source / "unet_config.json").read_text("utf-8")))
    unet.load_state_dict(load_fp32(source / "unet.safetensors"))
    scheduler = json.loads((source / "scheduler_config.json").read_text("utf-8"))
    clip_dir = save_clip_folder(clip.eval(), out / "clip")
    sd_dir = save_sd_folder(text_encoder_from_clip(clip), vae.eval(), unet.eval(), out / "sd",
                            scheduler_config=scheduler)
    return clip_dir, sd_dir


def verify_file(source: Path, name: str, digest: str) -> None:
    """Raise when the shipped file ``source/name`` does not have the manifest's SHA-256 ``digest``."""
    if sha256_file(source / name) != digest:
        raise BadInputError("shipped toy-world file does not match its manifest", source=str(source / name))


def verify(folder: Path | None = None) -> None:
    """Raise when a shipped file's SHA-256 differs from the manifest."""
    source = folder or data_dir()
    for name, digest in read_manifest(source)["files"].items():
        verify_file(source, name, digest)


def materialise(cache_dir: Path | None = None, *, source: Path | None = None) -> tuple[Path, Path]:
    """The ``(clip_dir, sd_dir)`` of the shipped toy world, built into the cache on first use."""
    source = source or data_dir()
    manifest = read_manifest(source)
    # keyed by the files the folders are built from (not the detector, which ships beside them) and by what
    # build_folders writes into them (FOLDER_LAYOUT), so a cache built by an older recare is built anew
    built_from = {f: d for f, d in manifest["files"].items() if f in (*WEIGHT_FILES, *CONFIG_FILES)}
    keyed = {**built_from, "layout": FOLDER_LAYOUT}
    key = hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:16]
    target = (cache_dir or default_cache_dir()) / "toyworld" / key
    if (target / "clip" / "config.json").is_file() and (target / "sd" / "model_index.json").is_file():
        return target / "clip", target / "sd"
    verify(source)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=target.parent))
    try:
        build_folders(source, tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first: theirs is complete too
            if not (target / "sd" / "model_index.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target / "clip", target / "sd"


def ship_trained(opts: ShipOptions) -> dict[str, Any]:
    """Ship a trained world (``recare toyworld train`` output): weights, configs and a manifest recording its
    training log and, given, its evaluation report, into ``opts.dest`` (default: the package data)."""
    metrics: dict[str, Any] = {}
    if (opts.trained / "train_log.json").is_file():
        metrics["training"] = json.loads((opts.trained / "train_log.json").read_text("utf-8"))
    if opts.report is not None:
        metrics["evaluation"] = json.loads(opts.report.read_text("utf-8"))
    return export(opts.trained / "clip", opts.trained / "sd", opts.dest or data_dir(), metrics=metrics)
