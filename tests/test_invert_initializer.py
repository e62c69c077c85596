"""invert --initializer-token: the word's own token (person</w>, recare's default) or the vocabulary entry spelled
as given (person, the word-initial piece: the ReCARE reference's convert_tokens_to_ids)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from recare_cli.errors import EXIT_USAGE
from tests.helpers import invoke

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _run(images: Path, model: Path, out: Path, *extra: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    # learning rate 0: the learned token is its starting vector, bit for bit
    result = invoke(["invert", str(images), "--target", "nudity", "--model", str(model), "--device", "cpu",
                     "--resolution", "32", "--rounds", "1", "--erase-iterations", "0", "--steps", "1", "--lr", "0",
                     "-o", str(out), "-q", *extra])
    assert result.code == 0, result.stderr
    with safe_open(str(out), framework="pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}, dict(fh.metadata())  # noqa: SIM118


def test_the_reference_choice_starts_from_the_word_initial_piece(tiny_sd_dir: Path, target_images: Path,
                                                                 tmp_path: Path) -> None:
    from diffusers import StableDiffusionPipeline

    from recare_cli.models.weights import decode_metadata
    from recare_cli.stages.invert import initializer_vector

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_dir)
    vocab, table = pipe.tokenizer.get_vocab(), pipe.text_encoder.get_input_embeddings().weight
    piece, word = table[vocab["person"]], table[vocab["person</w>"]]
    assert not torch.equal(piece, word)
    assert torch.equal(initializer_vector(pipe, "person")[0], word)
    assert torch.equal(initializer_vector(pipe, "person", "reference")[0], piece)

    default, meta = _run(target_images, tiny_sd_dir, tmp_path / "word.safetensors")
    assert torch.equal(default["<nudity-adv0>"][0], word)
    info = decode_metadata(meta)
    assert "initializer_token" not in info["provenance"]["params"]  # the default is not written: same bytes
    assert "initializer_token" not in info["hyperparameters"]

    chosen, meta = _run(target_images, tiny_sd_dir, tmp_path / "ref.safetensors", "--initializer-token", "reference")
    assert torch.equal(chosen["<nudity-adv0>"][0], piece)
    info = decode_metadata(meta)
    assert info["provenance"]["params"]["initializer_token"] == "reference"
    assert info["hyperparameters"]["initializer_token"] == "reference"


def test_an_initializer_that_is_no_vocabulary_entry_is_refused(tiny_sd_dir: Path, target_images: Path,
                                                               tmp_path: Path) -> None:
    result = invoke(["invert", str(target_images), "--target", "nudity", "--model", str(tiny_sd_dir),
                     "--initializer", "Person", "--initializer-token", "reference", "-o", str(tmp_path / "a.st")])
    assert result.code == EXIT_USAGE and result.stdout == b""
    assert "'Person' is not an entry" in result.stderr and "Traceback" not in result.stderr
