"""The toy world's target detector (recare_cli.toyworld.detector): labels, rules, training, shipped weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recare_cli.toyworld import assets, detector, world
from recare_cli.toyworld.tasks import TASKS

shipped = pytest.mark.skipif(not (assets.data_dir() / detector.FILE).is_file(), reason="no shipped detector")


def test_labels_decode_back_to_every_attribute_of_drawn_scenes() -> None:
    data = world.make_dataset(300, seed=3)
    for scene in data.scenes:
        labels = detector.labels_of(scene)
        decoded = {head: detector.HEADS[head][i] for head, i in zip(detector.HEADS, labels, strict=True)}
        attrs = scene.attributes()
        assert decoded == {head: attrs.get(head, "none") for head in detector.HEADS}


def _rows(*scenes: world.Scene) -> np.ndarray:
    return np.array([detector.labels_of(s) for s in scenes])


def test_target_and_benign_rules() -> None:
    naked = world.Scene("sand", "person", None, True)
    clothed = world.Scene("sand", "person", "red")
    painting = world.Scene("stars", "tree", None, False, "vangogh")
    stars_photo = world.Scene("stars", "tree")
    tench = world.Scene("water", "tench")
    water = world.Scene("water")
    assert detector.target_shown(TASKS["nudity"], _rows(naked, clothed, water)).tolist() == [True, False, False]
    assert detector.benign_shown(TASKS["nudity"], _rows(naked, clothed, water)).tolist() == [True, True, False]
    assert detector.target_shown(TASKS["vangogh"], _rows(painting, stars_photo)).tolist() == [True, False]
    assert detector.benign_shown(TASKS["vangogh"], _rows(painting, stars_photo, water)).tolist() == [True, True, False]
    assert detector.target_shown(TASKS["tench"], _rows(tench, water)).tolist() == [True, False]
    assert detector.benign_shown(TASKS["tench"], _rows(tench, water, clothed)).tolist() == [True, True, False]
    # a naked judgement without a person (the heads disagree) is not the target
    odd = _rows(naked)
    odd[0, list(detector.HEADS).index("object")] = detector.HEADS["object"].index("tree")
    assert detector.target_shown(TASKS["nudity"], odd).tolist() == [False]


class _IdentityVAE:
    """Stands in for the VAE in a smoke-scale training: encode/decode return their input."""

    class _Out:
        def __init__(self, x: object) -> None:
            self.sample = x
            self.latent_dist = self
            self.mean = x

    def encode(self, x: object) -> _Out:
        return self._Out(x)

    def decode(self, x: object) -> _Out:
        return self._Out(x)


def test_training_is_reproducible_and_saved_weights_reload(tmp_path: Path) -> None:
    import torch

    one, report = detector.train(_IdentityVAE(), n=256, epochs=1, seed=1)
    two, _ = detector.train(_IdentityVAE(), n=256, epochs=1, seed=1)
    for (name, a), b in zip(one.state_dict().items(), two.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert report["settings"] == {"train": 256, "epochs": 1, "seed": 1}
    detector.save(one, tmp_path / "d.safetensors", report)
    back = detector.load(tmp_path / "d.safetensors")
    # the in-memory rounding (used to measure the shipped weights) is exactly what the file holds
    rounded = detector.as_shipped(one)
    for (name, a), b in zip(back.state_dict().items(), rounded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    images = world.make_dataset(32, seed=4).images
    # fp16 storage changes weights by rounding only: the same verdicts on nearly every image
    agree = (detector.predict(back, images) == detector.predict(one, images)).all(axis=1).mean()
    assert agree >= 0.9


@shipped
def test_shipped_detector_matches_its_manifest_and_reads_held_out_scenes() -> None:
    """Fresh scenes (a seed neither training nor the recorded held-out set used), every head ≥ 97% right."""
    model = detector.load()  # checks the file's SHA-256 against the manifest
    data = world.make_dataset(400, seed=20_001)
    truth = np.array([detector.labels_of(s) for s in data.scenes])
    predicted = detector.predict(model, data.images)
    for h, head in enumerate(detector.HEADS):
        assert (predicted[:, h] == truth[:, h]).mean() >= 0.97, head
    report = assets.read_manifest()["metrics"]["detector"]
    assert min(report["held_out"]["vae"].values()) >= 0.97


def test_a_changed_shipped_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from recare_cli.errors import BadInputError, ModelUnavailableError

    folder = tmp_path / "toyworld"
    folder.mkdir()
    (folder / assets.MANIFEST).write_text(json.dumps({"files": {}}), "utf-8")
    monkeypatch.setattr(assets, "data_dir", lambda: folder)
    with pytest.raises(ModelUnavailableError):
        detector.load()
    model, report = detector.train(_IdentityVAE(), n=128, epochs=1, seed=0)
    detector.ship(model, report, folder)
    detector.load()  # as shipped: accepted
    data = bytearray((folder / detector.FILE).read_bytes())
    data[-1] ^= 1
    (folder / detector.FILE).write_bytes(bytes(data))
    with pytest.raises(BadInputError, match="does not match its manifest"):
        detector.load()


@shipped
def test_shipping_a_detector_keeps_the_materialised_world_folders(tmp_path: Path) -> None:
    """The cache key covers the files the folders are built from: a new detector does not rebuild them, nor
    invalidate demo runs made with them (their settings record the folder paths)."""
    import shutil

    source = tmp_path / "data"
    shutil.copytree(assets.data_dir(), source)
    before = assets.materialise(tmp_path / "cache", source=source)
    model, report = detector.train(_IdentityVAE(), n=128, epochs=1, seed=0)
    detector.ship(model, report, source)
    assert assets.read_manifest(source)["files"][detector.FILE] != assets.read_manifest()["files"][detector.FILE]
    assert assets.materialise(tmp_path / "cache", source=source) == before
    assert len(list((tmp_path / "cache" / "toyworld").iterdir())) == 1


@pytest.mark.parametrize("where", [[], ["--ship", "--out", "d.safetensors"]])
def test_the_detector_command_needs_one_destination(where: list[str]) -> None:
    from tests.helpers import invoke

    run = invoke(["toyworld", "detector", *where])
    assert run.code == 2 and "give one of --ship (into the package data) and --out FILE" in run.stderr
