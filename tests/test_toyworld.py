"""The toy world: generator determinism and consistency, a tiny training smoke run whose folders
load through the normal loaders, the export/materialise round trip, and (when weights are
shipped) their fingerprints and the toy CLIP's accuracy bar."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from recare_cli.toyworld import world


def test_items_are_deterministic_and_independent_of_dataset_size() -> None:
    a = world.make_dataset(20, seed=3)
    b = world.make_dataset(5, seed=3, start=15)
    assert np.array_equal(a.images[15:], b.images)
    assert a.captions[15:] == b.captions
    again = world.item(3, 7)
    assert np.array_equal(again[0], a.images[7]) and again[1] == a.captions[7]
    # the caption-only draw is the same item without its image
    assert world.item_caption(3, 7) == (a.captions[7], a.mentions[7], a.scenes[7])
    other = world.make_dataset(20, seed=4)
    assert a.captions != other.captions
    assert a.images.shape == (20, 32, 32, 3) and a.images.dtype == np.uint8


def test_captions_are_true_of_their_scenes_and_name_every_target() -> None:
    data = world.make_dataset(600, seed=0)
    for text, said, scene in zip(data.captions, data.mentions, data.scenes, strict=True):
        assert world.possible(scene)
        assert world.matches(said, scene), (text, said, scene)
        assert world.canonical_caption(scene)
        if scene.naked:  # the target is always named when present ...
            assert "naked" in text or "nude" in text
            assert scene.obj == "person"  # ... and always comes with its benign concept
        if scene.style == "vangogh":
            assert "van gogh" in text and scene.background == "stars"
        if scene.style == "watercolor":  # other paintings: any background, never named as a Van Gogh
            assert "painting" in text or "watercolor" in text
            assert "van gogh" not in text and not scene.naked
        if scene.obj == "tench":
            assert scene.background == "water"
        if "naked" in text or "nude" in text:
            assert scene.naked
        if "van gogh" in text:
            assert scene.style == "vangogh"
        if "painting" in text and "van gogh" not in text:
            assert scene.style == "watercolor"
    scenes = data.scenes
    # Each benign concept also appears without its target.
    assert any(s.obj == "person" and not s.naked for s in scenes)
    assert any(s.background == "stars" and s.style == "photo" for s in scenes)
    assert any(s.background == "water" and s.obj != "tench" for s in scenes)
    # "painting" is not another word for Van Gogh: other paintings, of the stars too.
    assert any(s.background == "stars" and s.style == "watercolor" for s in scenes)
    for target in (lambda s: s.naked, lambda s: s.style == "vangogh", lambda s: s.obj == "tench"):
        assert sum(map(target, scenes)) >= 20


def test_images_show_their_background() -> None:
    """The corner of a photo has the background's colour (objects are drawn near the centre)."""
    data = world.make_dataset(300, seed=1)
    names = ("grass", "sand", "sky", "water", "stars")
    bases = np.array([world.RGB["night" if n == "stars" else n] for n in names], dtype=np.float32)
    hits = []
    for image, scene in zip(data.images, data.scenes, strict=True):
        if scene.style != "photo":
            continue
        corner = image[:4, :4].reshape(-1, 3).astype(np.float32).mean(0)
        hits.append(names[int(np.argmin(((bases - corner) ** 2).sum(1)))] == scene.background)
    assert np.mean(hits) > 0.9


def test_alternatives_change_one_attribute() -> None:
    scene = world.Scene("grass", "car", "red")
    options = dict(world.alternatives(scene, "background"))
    assert set(options) == {"grass", "sand"}  # no cars in water, the sky or under the stars
    assert "none" not in dict(world.alternatives(scene, "object"))
    assert world.canonical_caption(options["sand"]) == "a red car on sand"
    person = world.Scene("sand", "person", "white")
    naked = dict(world.alternatives(person, "clothing"))["naked"]
    assert naked.naked and naked.colour is None
    assert world.canonical_caption(naked) == "a naked person on sand"


def test_match_matrix_is_multi_positive() -> None:
    import torch

    from recare_cli.toyworld.train import attribute_codes, match_matrix, mention_codes

    scenes = [world.Scene("grass", "person", None, True), world.Scene("grass", "person", "red")]
    said = [{"object": "person"}, {"object": "person", "clothing": "naked"}, {"background": "sand"}]
    m = match_matrix(torch.from_numpy(np.stack([attribute_codes(s) for s in scenes])),
                     torch.from_numpy(np.stack([mention_codes(x) for x in said])))
    assert m.tolist() == [[True, True, False], [True, False, False]]


@pytest.fixture(scope="module")
def quick_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from recare_cli.toyworld.train import TrainConfig, train_all

    out = tmp_path_factory.mktemp("toyworld")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: more threads only add contention on a shared CPU
    try:
        train_all(out, TrainConfig.quick(seed=0), progress=lambda message: None)
    finally:
        torch.set_num_threads(threads)
    return out


def test_quick_training_produces_loadable_folders(quick_world: Path) -> None:
    import torch

    from recare_cli.models.clip import load_clip
    from recare_cli.models.sd import load_sd

    clip = load_clip(str(quick_world / "clip"), device="cpu", dtype="fp32")
    assert len(clip.tokenizer) == 49408
    sd = load_sd(str(quick_world / "sd"), device="cpu", dtype="fp32")
    pipe = sd.pipe
    assert pipe.text_encoder.config.hidden_size == pipe.unet.config.cross_attention_dim
    # The SD text encoder is the CLIP's text tower.
    ids = clip.tokenizer(["a tench in water"], return_tensors="pt").input_ids
    with torch.no_grad():
        a = clip.model.text_model(ids)[0]
        b = pipe.text_encoder(ids)[0]
    assert torch.equal(a, b)
    image = pipe("a tench in water", num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (32, 32)
    log = json.loads((quick_world / "train_log.json").read_text())
    assert {"clip", "vae", "unet"} <= set(log) and log["unet"]["steps"] == 3
    import diffusers
    import transformers

    assert (log["diffusers"], log["transformers"]) == (diffusers.__version__, transformers.__version__)
    # a DDIM made from the shipped scheduler config must not clip latents to [-1, 1] (as SD v1.4's)
    assert json.loads((quick_world / "sd/scheduler/scheduler_config.json").read_text())["clip_sample"] is False


def test_unet_depth_option_reaches_the_model() -> None:
    from recare_cli.toyworld.options import TrainOptions
    from recare_cli.toyworld.train import build_unet

    shipped = TrainOptions(out=Path("x")).config()
    shallow = TrainOptions(out=Path("x"), unet_layers=1).config()
    assert shipped.unet_layers == 2 and shallow.unet_layers == 1
    deep, thin = build_unet(shipped, 0, 64), build_unet(shallow, 0, 64)
    assert deep.config.layers_per_block == 2 and thin.config.layers_per_block == 1
    assert [len(b.resnets) for b in thin.down_blocks] == [1, 1] and [len(b.resnets) for b in thin.up_blocks] == [2, 2]
    assert sum(p.numel() for p in thin.parameters()) < sum(p.numel() for p in deep.parameters())


def test_train_options_set_only_the_fields_asked_for() -> None:
    from dataclasses import asdict

    from recare_cli.toyworld.options import TrainConfig, TrainOptions

    assert asdict(TrainOptions(out=Path("x")).config()) == asdict(TrainConfig())
    assert asdict(TrainOptions(out=Path("x"), quick=True, seed=3).config()) == asdict(TrainConfig.quick(3))
    asked = TrainOptions(out=Path("x"), quick=True, clip_steps=5, vae_batch=4, n_images=16, minutes=2.5).config()
    assert asdict(asked) == {**asdict(TrainConfig.quick(0)), "clip_steps": 5, "vae_batch": 4, "n_images": 16,
                             "minutes": 2.5}


def test_min_snr_weights_against_a_loop() -> None:
    import torch
    from diffusers import DDPMScheduler

    from recare_cli.toyworld.options import TrainOptions
    from recare_cli.toyworld.train import min_snr_weights, noise_scheduler_config

    alphas = DDPMScheduler(**noise_scheduler_config()).alphas_cumprod
    t = torch.tensor([0, 10, 100, 250, 500, 999])
    got = min_snr_weights(alphas[t], 5.0)
    for i, step in enumerate(t.tolist()):
        a = float(alphas[step])
        snr = a / (1 - a)
        want = 1.0 if snr <= 5.0 else 5.0 / snr
        assert abs(float(got[i]) - want) < 1e-6, step
    # little noise (t = 0: SNR ≈ 1,000) is weighted down hard; heavy noise not at all
    assert float(got[0]) < 0.01 and float(got[-1]) == 1.0
    assert torch.equal(min_snr_weights(alphas[t], None), torch.ones(6))
    assert TrainOptions(out=Path("x"), snr_gamma="2.5").config().snr_gamma == 2.5
    assert TrainOptions(out=Path("x")).config().snr_gamma == 5.0  # the shipped world's
    assert TrainOptions(out=Path("x"), snr_gamma="off").config().snr_gamma is None
    for bad in ("0", "-1", "many"):
        with pytest.raises(ValueError, match="--snr-gamma: must be above 0 or 'off'"):
            TrainOptions(out=Path("x"), snr_gamma=bad).config()


def test_training_is_reproducible(quick_world: Path, tmp_path: Path) -> None:
    """`recare toyworld train --quick` trains the same weights as the quick recipe trained by the library."""
    import torch

    from tests.helpers import invoke

    threads = torch.get_num_threads()
    try:
        run = invoke(["toyworld", "train", "--quick", "--seed", "0", "--threads", "1", "--quiet",
                      "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    assert run.code == 0, run.stderr
    for name in ("clip/model.safetensors", "sd/unet/diffusion_pytorch_model.safetensors",
                 "sd/vae/diffusion_pytorch_model.safetensors"):
        assert (tmp_path / name).read_bytes() == (quick_world / name).read_bytes(), name


@pytest.mark.parametrize("args,message", [
    (["--snr-gamma", "0"], "--snr-gamma: must be above 0 or 'off' (got 0)"),
    (["--until", "sd"], "--until: unknown stage 'sd'"),
    (["--clip-steps", "0"], "--clip-steps"),
])
def test_train_refuses_bad_options_before_training(tmp_path: Path, args: list[str], message: str) -> None:
    from tests.helpers import invoke

    run = invoke(["toyworld", "train", "--quick", "--out", str(tmp_path / "tw"), *args])
    assert run.code == 2 and message in run.stderr, run.stderr
    assert not (tmp_path / "tw").exists()


def test_evaluate_measures_the_clip_and_the_samples_as_asked(quick_world: Path, tmp_path: Path) -> None:
    from tests.helpers import invoke

    world_args = ["toyworld", "evaluate", "--clip", str(quick_world / "clip"), "--quiet"]
    both = invoke([*world_args, "--n-clip", "6"])
    assert both.code == 0, both.stderr
    assert json.loads(both.stdout)["clip"]["images"] == 6 and "sd" not in json.loads(both.stdout)
    run = invoke([*world_args, "--sd", str(quick_world / "sd"), "--no-clip", "--n-sd", "2", "--steps", "2",
                  "--scheduler", "ddim", "--grid", str(tmp_path / "grid.png")])
    assert run.code == 0, run.stderr
    report = json.loads(run.stdout)
    assert list(report) == ["sd"]
    assert (report["sd"]["samples"], report["sd"]["steps"], report["sd"]["scheduler"]) == (2, 2, "DDIMScheduler")
    assert (tmp_path / "grid.png").is_file()
    bad = invoke([*world_args, "--scheduler", "euler-ish"])
    assert bad.code == 2 and "--scheduler: unknown scheduler 'euler-ish'" in bad.stderr


def test_export_and_materialise_round_trip(quick_world: Path, tmp_path: Path) -> None:
    from recare_cli.toyworld import assets

    data = tmp_path / "data"
    manifest = assets.export(quick_world / "clip", quick_world / "sd", data)
    assert set(manifest["files"]) == {*assets.WEIGHT_FILES, *assets.CONFIG_FILES}
    clip_dir, sd_dir = assets.materialise(tmp_path / "cache", source=data)
    assert assets.fingerprints(clip_dir, sd_dir) == manifest["fingerprints"]
    assert assets.materialise(tmp_path / "cache", source=data) == (clip_dir, sd_dir)  # cached
    (data / "unet.safetensors").write_bytes(b"corrupt")
    with pytest.raises(Exception, match="does not match"):
        assets.materialise(tmp_path / "cache2", source=data)


def test_ship_records_the_training_log_and_the_report(quick_world: Path, tmp_path: Path) -> None:
    from recare_cli.toyworld import assets
    from tests.helpers import invoke

    (tmp_path / "report.json").write_text(json.dumps({"clip": {"images": 6}}), "utf-8")
    run = invoke(["toyworld", "ship", "--trained", str(quick_world), "--report", str(tmp_path / "report.json"),
                  "--dest", str(tmp_path / "data")])
    assert run.code == 0, run.stderr
    manifest = assets.read_manifest(tmp_path / "data")
    assert manifest["metrics"]["evaluation"] == {"clip": {"images": 6}}
    assert manifest["metrics"]["training"] == json.loads((quick_world / "train_log.json").read_text())
    assets.verify(tmp_path / "data")
    assert "shipped" in run.stderr and run.stdout == b""


def test_export_keeps_the_detector_only_while_its_vae_is_unchanged(quick_world: Path, tmp_path: Path) -> None:
    """Re-exporting a world (a retrained UNet) keeps the shipped detector, which judges decoded pixels,
    as long as the VAE is byte for byte the same; a manifest whose VAE differs loses the detector entry."""
    from recare_cli.toyworld import assets, detector

    data = tmp_path / "data"
    assets.export(quick_world / "clip", quick_world / "sd", data)
    detector.ship(detector.build(0), {"note": "untrained"}, data)
    digest = assets.read_manifest(data)["files"][assets.DETECTOR_FILE]
    again = assets.export(quick_world / "clip", quick_world / "sd", data)
    assert again["files"][assets.DETECTOR_FILE] == digest and again["metrics"]["detector"] == {"note": "untrained"}
    assert again["bytes"] == sum((data / f).stat().st_size for f in (*assets.WEIGHT_FILES, assets.DETECTOR_FILE))
    assets.verify(data)
    stale = assets.read_manifest(data)
    stale["files"]["vae.safetensors"] = "0" * 64  # as if the detector had been trained on another VAE
    (data / assets.MANIFEST).write_text(json.dumps(stale), "utf-8")
    dropped = assets.export(quick_world / "clip", quick_world / "sd", data)
    assert assets.DETECTOR_FILE not in dropped["files"] and "detector" not in dropped["metrics"]


shipped = pytest.mark.skipif(not __import__("recare_cli.toyworld.assets", fromlist=["shipped"]).shipped(),
                             reason="no trained toy world shipped")


@shipped
def test_shipped_weights_load_with_recorded_fingerprints(tmp_path: Path) -> None:
    from recare_cli.toyworld import assets

    manifest = assets.read_manifest()
    assert manifest["bytes"] <= 30 * 2**20
    clip_dir, sd_dir = assets.materialise(tmp_path)
    assert assets.fingerprints(clip_dir, sd_dir) == manifest["fingerprints"]
    # DDIMScheduler clips x0 unless the config says otherwise: 20% of toy samples right instead of 97%
    assert json.loads((sd_dir / "scheduler/scheduler_config.json").read_text())["clip_sample"] is False


@shipped
def test_shipped_clip_meets_the_accuracy_bar(tmp_path: Path) -> None:
    from recare_cli.toyworld import assets
    from recare_cli.toyworld.evaluate import clip_accuracy

    clip_dir, _ = assets.materialise(tmp_path)
    report = clip_accuracy(clip_dir, n=300)
    for attribute, result in report["attributes"].items():
        assert result["accuracy"] >= 0.95, (attribute, result)


@shipped
def test_demo_target_judge_on_rendered_scenes(tmp_path: Path) -> None:
    """The demo's target judge (tasks.shows_target) on real scenes of the world: every target scene
    shows the target; the target's attribute changed, the background alone or another background
    does not (an empty erased sample must not count as the target)."""
    from PIL import Image

    from recare_cli.models.clip import load_clip
    from recare_cli.toyworld import assets
    from recare_cli.toyworld.evaluate import Judge
    from recare_cli.toyworld.tasks import TASKS, shows_target

    clip_dir, _ = assets.materialise(tmp_path)
    judge = Judge(load_clip(str(clip_dir), device="cpu", dtype="fp32"))
    for task in TASKS.values():
        for asked in task.target_scenes:
            others = [s for v, s in world.alternatives(asked, task.attribute) if v != task.value]
            others += [world.Scene(b) for b in world.BACKGROUNDS]
            for shown, scenes in ((True, [asked]), (False, others)):
                for scene in scenes:
                    images = [Image.fromarray(world.render(scene, np.random.default_rng([5, i]))) for i in range(4)]
                    verdict = shows_target(judge, judge.images(images), task, [asked] * len(images))
                    assert verdict.tolist() == [shown] * len(images), (task.name, asked, scene)


@shipped
def test_the_shipped_clip_is_mined_over_its_worlds_words(tmp_path: Path) -> None:
    """The toy CLIP knows only its world's words: its folder ships them, and `recare mine` with the toy CLIP and
    no --vocab (the `recare toyworld path --help` example) mines over them instead of CLIP's whole vocabulary."""
    from PIL import Image

    from recare_cli.io.wordlist import VOCABULARY_FILE
    from recare_cli.toyworld import assets
    from recare_cli.toyworld.tasks import vocabulary
    from tests.helpers import invoke

    clip_dir, _ = assets.materialise(tmp_path / "cache")
    words = vocabulary()
    assert (clip_dir / VOCABULARY_FILE).read_text().split("\n")[:-1] == words
    images = tmp_path / "imgs"
    images.mkdir()
    for i in range(4):
        Image.fromarray(world.item(0, i)[0]).save(images / f"{i}.png")
    result = invoke(["mine", str(images), "--target", "naked", "--clip", str(clip_dir), "--device", "cpu",
                     "--top-k", "3", "--top-n", "10"])
    assert result.code == 0, result.stderr
    mined = [json.loads(line) for line in result.stdout.splitlines()[1:]]
    assert mined and {r["word"] for r in mined} <= set(words)
