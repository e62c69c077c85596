"""recare export: the diffusers ↔ original SD key mapping, and round trips on the tiny model through diffusers'
own loaders (from_single_file, from_pretrained, load_textual_inversion)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from recare_cli.errors import BadInputError, RefusedError, UsageError
from tests.helpers import every_module_lora_tensors, invoke

TOKENS = ("<car-adv0>", "<car-adv1>")


def _load(folder: Path) -> Any:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(folder), safety_checker=None, requires_safety_checker=False)
    return pipe


def _states(pipe: Any) -> dict[str, dict[str, torch.Tensor]]:
    from recare_cli.models.export import pipeline_states

    return pipeline_states(pipe)


@pytest.fixture(scope="module")
def inputs(tiny_sd_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """UNet weights (cross-attention keys/values and conv_out moved off the base values) and two tokens, made
    for the tiny model as recare erase and recare invert write them."""
    from recare_cli.models.fingerprint import module_fingerprint
    from recare_cli.models.weights import save_embeddings, save_unet_weights

    folder = tmp_path_factory.mktemp("export-inputs")
    pipe = _load(tiny_sd_dir)
    generator = torch.Generator().manual_seed(0)
    state = pipe.unet.state_dict()
    names = [k for k in state if "attn2.to_k" in k or "attn2.to_v" in k] + ["conv_out.weight"]
    trained = {k: state[k] + 0.05 * torch.randn(state[k].shape, generator=generator) for k in names}
    weights = folder / "erased.safetensors"
    save_unet_weights(weights, trained, base_unet=module_fingerprint(pipe.unet))
    tokens = {t: torch.randn(1, 32, generator=generator) for t in TOKENS}
    adv = folder / "adv.safetensors"
    save_embeddings(adv, tokens, base_text_encoder=module_fingerprint(pipe.text_encoder))
    return SimpleNamespace(weights=weights, adv=adv, trained=trained, tokens=tokens)


@pytest.fixture(scope="module")
def expected(tiny_sd_dir: Path, inputs: SimpleNamespace) -> Any:
    """The base model with the weights applied, as recare sample uses it."""
    from recare_cli.models.weights import apply_unet_weights

    pipe = _load(tiny_sd_dir)
    apply_unet_weights(pipe, inputs.weights)
    return pipe


def _export(model: Path, out: Path, *extra: str) -> Any:
    return invoke(["export", "--model", str(model), "-o", str(out), *extra])


# ------------------------------------------------------------------------------------------------
# The key mapping


def test_mapping_round_trips_and_places_every_key(tiny_sd_dir: Path) -> None:
    from recare_cli.models.export import TEXT_PREFIX, UNET_PREFIX, VAE_PREFIX, OriginalLayout

    states = _states(_load(tiny_sd_dir))
    layout = OriginalLayout({p: s.keys() for p, s in states.items()})
    original = layout.to_original(states)
    counts = {p: len(s) for p, s in states.items()}
    assert len(original) == sum(counts.values())  # no key dropped, none merged
    for part, prefix in (("unet", UNET_PREFIX), ("vae", VAE_PREFIX), ("text_encoder", TEXT_PREFIX)):
        assert sum(k.startswith(prefix) for k in original) == counts[part]
    diffusers_words = ("down_blocks", "up_blocks", "mid_block", "resnets", "attentions", "time_embedding",
                       "group_norm", "to_q.")
    assert not [k for k in original if k.startswith((UNET_PREFIX, VAE_PREFIX)) and
                any(w in k for w in diffusers_words) and ".transformer_blocks." not in k]
    back = layout.to_diffusers(original)
    for part, state in states.items():
        assert set(back[part]) == set(state)
        for key, value in state.items():
            assert back[part][key].shape == value.shape and torch.equal(back[part][key], value), (part, key)
    # the VAE's mid-block attention is a 1x1 convolution in the original layout
    q = original[VAE_PREFIX + "encoder.mid.attn_1.q.weight"]
    assert q.dim() == 4 and q.shape[2:] == (1, 1)


def test_mapping_matches_diffusers_reading_of_sd1_shapes() -> None:
    """On SD 1.x's real shapes (empty tensors): the names the UIs look for are there, and diffusers' own
    converters read every one of them back to the diffusers names and shapes."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    from recare_cli.models.export import OriginalLayout

    with torch.device("meta"):
        unet = UNet2DConditionModel(cross_attention_dim=768)
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2)
        text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                            num_attention_heads=12, projection_dim=768))
    states = {"unet": unet.state_dict(), "vae": vae.state_dict(), "text_encoder": text.state_dict()}
    original = OriginalLayout({p: s.keys() for p, s in states.items()}).to_original(states)
    assert len(original) == 686 + 248 + 196
    for key, shape in [("model.diffusion_model.output_blocks.11.0.skip_connection.weight", (320, 640, 1, 1)),
                       ("model.diffusion_model.input_blocks.3.0.op.weight", (320, 320, 3, 3)),
                       ("model.diffusion_model.output_blocks.2.1.conv.weight", (1280, 1280, 3, 3)),
                       ("model.diffusion_model.output_blocks.5.2.conv.weight", (1280, 1280, 3, 3)),
                       ("model.diffusion_model.middle_block.2.out_layers.3.weight", (1280, 1280, 3, 3)),
                       ("model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight", (320, 768)),
                       ("first_stage_model.decoder.up.3.upsample.conv.weight", (512, 512, 3, 3)),
                       ("first_stage_model.decoder.mid.attn_1.proj_out.weight", (512, 512, 1, 1)),
                       ("cond_stage_model.transformer.text_model.embeddings.token_embedding.weight", (49408, 768)),
                       ("cond_stage_model.transformer.text_model.final_layer_norm.weight", (768,))]:
        assert tuple(original[key].shape) == shape, key
    read = {"unet": convert_ldm_unet_checkpoint(original, dict(unet.config)),
            "vae": convert_ldm_vae_checkpoint(original, dict(vae.config)),
            "text_encoder": {k.removeprefix("text_model."): v
                             for k, v in convert_ldm_clip_checkpoint(original).items()}}
    for part, state in states.items():
        assert set(read[part]) == set(state), part
        assert all(read[part][k].shape == state[k].shape for k in state), part


def test_a_key_without_a_place_is_refused_not_dropped(tiny_sd_dir: Path) -> None:
    from recare_cli.models.export import OriginalLayout

    states = _states(_load(tiny_sd_dir))
    states["unet"]["class_embedding.linear_1.weight"] = torch.zeros(2, 2)  # no place in the SD 1.x layout
    layout = OriginalLayout({p: s.keys() for p, s in states.items()})
    with pytest.raises(BadInputError, match=re.escape("class_embedding.linear_1.weight")):
        layout.to_original(states)
    with pytest.raises(BadInputError, match="none of the UNet"):
        layout.to_diffusers({"model_ema.decay": torch.zeros(())})


def test_an_openclip_text_encoder_is_refused_for_the_single_file() -> None:
    from recare_cli.models.export import check_sd1_text_encoder

    class CLIPTextModel:  # SD 2.x's text encoder: the same class, GELU instead of quick-GELU
        config = SimpleNamespace(hidden_act="gelu")

    with pytest.raises(UsageError, match="--format diffusers"):
        check_sd1_text_encoder(SimpleNamespace(text_encoder=CLIPTextModel()))


@pytest.mark.parametrize(("token", "name"), [("<car-adv0>", "car-adv0"), ("<van gogh-adv1>", "vangogh-adv1"),
                                             ("plain", "plain")])
def test_embedding_file_names_are_safe_on_every_file_system(token: str, name: str) -> None:
    from recare_cli.models.export import embedding_file_name

    assert embedding_file_name(token) == name
    with pytest.raises(BadInputError):
        embedding_file_name("<>")


def test_tokens_that_share_a_file_name_are_refused(tmp_path: Path) -> None:
    from recare_cli.models.export import save_ui_embeddings

    with pytest.raises(BadInputError, match=r"both be written as (C|c)ar\.safetensors"):
        save_ui_embeddings(tmp_path, {"<Car>": torch.zeros(1, 4), "<car>": torch.zeros(1, 4)},
                           dtype=torch.float32, meta={})
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------------
# Round trips through the CLI


def _unet_out(pipe: Any) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(2, 4, 16, 16, generator=generator)
    context = torch.randn(2, 77, 32, generator=generator)
    with torch.no_grad():
        return pipe.unet(latents.to(pipe.unet.dtype), torch.tensor([10, 500]),
                         encoder_hidden_states=context.to(pipe.unet.dtype)).sample.float()


def _same_networks(pipe: Any, reference: Any, atol: float) -> None:
    """UNet noise prediction, VAE decoding and text-encoder states agree within ``atol``."""
    torch.testing.assert_close(_unet_out(pipe), _unet_out(reference), atol=atol, rtol=0)
    z = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(2))
    ids = reference.tokenizer(["a red car"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        for a, b in ((pipe.vae.decode(z.to(pipe.vae.dtype)).sample, reference.vae.decode(z).sample),
                     (pipe.text_encoder(ids)[0], reference.text_encoder(ids)[0])):
            torch.testing.assert_close(a.float(), b.float(), atol=atol, rtol=0)


def test_single_file_loads_in_diffusers_with_the_weights_applied(tiny_sd_dir: Path, inputs: SimpleNamespace,
                                                                  expected: Any, tmp_path: Path,
                                                                  one_torch_thread: None) -> None:
    from diffusers import StableDiffusionPipeline
    from safetensors import safe_open

    out = tmp_path / "erased.safetensors"
    res = _export(tiny_sd_dir, out, "--weights", str(inputs.weights))
    assert res.code == 0, res.stderr
    assert res.stdout == b"" and "368 tensors" in res.stderr
    with safe_open(str(out), framework="pt") as fh:
        assert fh.metadata()["format"] == "pt" and '"command":"export"' in fh.metadata()["provenance"]
        key = next(k for k in fh.keys() if k.endswith("attn2.to_k.weight"))  # noqa: SIM118
        assert fh.get_tensor(key).dtype == torch.float32
    loaded = StableDiffusionPipeline.from_single_file(str(out), config=str(tiny_sd_dir), local_files_only=True,
                                                      safety_checker=None, requires_safety_checker=False)
    _same_networks(loaded, expected, atol=0.0)
    base = _load(tiny_sd_dir)  # the weights changed the UNet, not only a copy of it
    assert not torch.allclose(_unet_out(loaded), _unet_out(base))


def test_fp16_single_file_holds_the_rounded_values(tiny_sd_dir: Path, inputs: SimpleNamespace, expected: Any,
                                                   tmp_path: Path) -> None:
    from safetensors.torch import load_file

    out = tmp_path / "half.safetensors"
    assert _export(tiny_sd_dir, out, "--weights", str(inputs.weights), "--dtype", "fp16").code == 0
    from recare_cli.models.export import OriginalLayout

    tensors = load_file(str(out))
    assert {t.dtype for t in tensors.values()} == {torch.float16}
    layout = OriginalLayout({p: s.keys() for p, s in _states(expected).items()})
    for name, value in inputs.trained.items():
        key, _ = layout.mappers["unet"].to_original(name, value)
        assert torch.equal(tensors[key], value.half()), name


def test_the_diffusers_folder_loads_and_matches(tiny_sd_dir: Path, inputs: SimpleNamespace, expected: Any,
                                                tmp_path: Path, one_torch_thread: None) -> None:
    out = tmp_path / "sd-erased"
    res = _export(tiny_sd_dir, out, "--weights", str(inputs.weights), "--format", "diffusers")
    assert res.code == 0, res.stderr
    assert (out / "recare-export.json").is_file() and (out / "model_index.json").is_file()
    assert not list(tmp_path.glob(".*"))  # no temporary folder left beside it
    _same_networks(_load(out), expected, atol=0.0)


def test_embeddings_become_ui_files_that_diffusers_loads(tiny_sd_dir: Path, inputs: SimpleNamespace,
                                                         tmp_path: Path) -> None:
    from safetensors.torch import load_file

    out = tmp_path / "erased.safetensors"
    res = _export(tiny_sd_dir, out, "--weights", str(inputs.weights), "--weights", str(inputs.adv))
    assert res.code == 0, res.stderr
    folder = tmp_path / "erased-embeddings"
    assert sorted(p.name for p in folder.iterdir()) == ["car-adv0.safetensors", "car-adv1.safetensors"]
    assert list(load_file(str(folder / "car-adv0.safetensors"))) == ["emb_params"]
    pipe = _load(tiny_sd_dir)
    for token in TOKENS:
        name = token.strip("<>")
        pipe.load_textual_inversion(str(folder / f"{name}.safetensors"), token=token)
        row = pipe.tokenizer.convert_tokens_to_ids(token)
        vector = pipe.text_encoder.get_input_embeddings().weight[row]
        assert torch.equal(vector, inputs.tokens[token][0]), token


def test_the_same_command_writes_the_same_bytes(tiny_sd_dir: Path, inputs: SimpleNamespace, tmp_path: Path) -> None:
    out = tmp_path / "m.safetensors"
    args = ["--weights", str(inputs.weights), "--weights", str(inputs.adv), "--dtype", "bf16"]
    files = [out, *(tmp_path / "m-embeddings" / f"car-adv{i}.safetensors" for i in range(2))]
    assert _export(tiny_sd_dir, out, *args).code == 0
    first = [f.read_bytes() for f in files]
    assert _export(tiny_sd_dir, out, *args, "--force").code == 0  # --force steers the run, it is not recorded
    assert [f.read_bytes() for f in files] == first


# ------------------------------------------------------------------------------------------------
# Refusals


def test_weights_for_another_base_model_are_one_line_exit_3(tiny_sd_dir: Path, tmp_path: Path) -> None:
    from recare_cli.models.weights import save_unet_weights

    other = tmp_path / "other.safetensors"
    save_unet_weights(other, {"conv_out.bias": torch.zeros(4)}, base_unet="sha256:0123456789abcdef")
    res = _export(tiny_sd_dir, tmp_path / "m.safetensors", "--weights", str(other))
    assert res.code == 3, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "made for base UNet sha256:0123456789abcdef" in lines[0], lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.safetensors"]


def test_a_file_of_neither_recare_nor_the_unet_is_exit_3(tiny_sd_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    alien = tmp_path / "alien.safetensors"
    save_file({"x": torch.zeros(1)}, str(alien))
    res = _export(tiny_sd_dir, tmp_path / "m.safetensors", "--weights", str(alien))
    assert res.code == 3 and "parameter 'x' is not in the model's UNet" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alien.safetensors"]


def test_an_erase_checkpoint_is_exit_3_naming_what_it_is(tiny_sd_dir: Path, tmp_path: Path) -> None:
    from recare_cli.models.weights import CHECKPOINT_FORMAT, write_safetensors

    ckpt = tmp_path / "erased.safetensors.ckpt"
    write_safetensors(ckpt, {"x": torch.zeros(1)}, {"format": CHECKPOINT_FORMAT})
    res = _export(tiny_sd_dir, tmp_path / "m.safetensors", "--weights", str(ckpt))
    assert res.code == 3 and "unfinished recare erase run" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_an_existing_output_is_kept_unless_force(tiny_sd_dir: Path, inputs: SimpleNamespace, tmp_path: Path) -> None:
    out = tmp_path / "m.safetensors"
    out.write_bytes(b"precious")
    res = _export(tiny_sd_dir, out, "--weights", str(inputs.weights))
    assert res.code == 5 and "--force" in res.stderr, res.stderr
    assert out.read_bytes() == b"precious"
    assert _export(tiny_sd_dir, out, "--weights", str(inputs.weights), "--force").code == 0
    assert out.read_bytes()[8:9] == b"{"  # a safetensors header now


def test_force_replaces_a_folder_only_once_the_new_one_is_complete(tiny_sd_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "pipe"
    out.mkdir()
    (out / "old.txt").write_text("old")
    assert _export(tiny_sd_dir, out, "--format", "diffusers").code == 5
    assert (out / "old.txt").read_text() == "old"
    assert _export(tiny_sd_dir, out, "--format", "diffusers", "--force").code == 0
    assert not (out / "old.txt").exists() and (out / "model_index.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]


@pytest.mark.parametrize(("extra", "phrase"), [(["--format", "ckpt"], "--format: unknown format 'ckpt'"),
                                               (["--dtype", "fp8"], "--dtype: unknown dtype 'fp8'")])
def test_a_value_outside_the_choices_is_one_usage_line(tmp_path: Path, extra: list[str], phrase: str) -> None:
    res = _export(tmp_path / "no-model", tmp_path / "m.safetensors", *extra)
    assert res.code == 2 and phrase in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("name", ["model.ckpt", "model", "-"])
def test_a_single_file_name_must_end_in_safetensors(tmp_path: Path, name: str) -> None:
    res = invoke(["export", "--model", str(tmp_path), "-o", name if name == "-" else str(tmp_path / name)])
    assert res.code == 2, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------------------
# Staged folders


def test_a_staged_folder_appears_only_when_complete(tmp_path: Path) -> None:
    from recare_cli.io.atomic import staged_folder

    target = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt), staged_folder(target) as tmp:
        (tmp / "half").write_text("x")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    with staged_folder(target) as tmp:
        (tmp / "a").write_text("new")
    assert (target / "a").read_text() == "new"
    with pytest.raises(RefusedError), staged_folder(target) as tmp:
        (tmp / "a").write_text("newer")
    assert (target / "a").read_text() == "new" and sorted(tmp_path.iterdir()) == [target]
    with staged_folder(target, replace=True) as tmp:
        (tmp / "b").write_text("newer")
    assert sorted(p.name for p in target.iterdir()) == ["b"] and sorted(tmp_path.iterdir()) == [target]


# ------------------------------------------------------------------------------------------------
# --format kohya-lora

@pytest.fixture(scope="module")
def lora_file(tiny_sd_dir: Path, care_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A recare erase --lora run on the tiny model (rank 4, alpha 8: a scale of 2)."""
    folder = tmp_path_factory.mktemp("lora")
    out = folder / "lora.safetensors"
    res = invoke(["erase", "--target", "nudity", "--care", str(care_file), "--model", str(tiny_sd_dir), "--device",
                  "cpu", "--resolution", "32", "--iterations", "3", "--ddim-steps", "8", "--lr", "1e-2", "--lora", "4",
                  "--lora-alpha", "8", "-o", str(out), "-q"])
    assert res.code == 0, res.stderr
    return out


def every_module_lora(tiny_sd_dir: Path, path: Path) -> None:
    """A recare.unet-lora file adapting every Linear and Conv2d module of the tiny UNet (cross-attention, the
    3×3 convolutions, conv_in/conv_out, the time embedding), rank 2, alpha 3, B not zero."""
    from recare_cli.models.fingerprint import module_fingerprint
    from recare_cli.models.lora import save_unet_lora

    unet = _load(tiny_sd_dir).unet
    tensors = every_module_lora_tensors(unet)
    save_unet_lora(path, tensors, rank=2, alpha=3.0, base_unet=module_fingerprint(unet))


@pytest.mark.parametrize("source", ["erase-run", "every-module"])
def test_kohya_lora_loads_in_diffusers_as_recare_applies_it(tiny_sd_dir: Path, lora_file: Path, tmp_path: Path,
                                                            source: str, one_torch_thread: None) -> None:
    from safetensors import safe_open

    from recare_cli.core.lora import lora_layers
    from recare_cli.models.lora import lora_modules
    from recare_cli.models.weights import apply_unet_weights

    recare_lora = lora_file
    if source == "every-module":
        recare_lora = tmp_path / "every.safetensors"
        every_module_lora(tiny_sd_dir, recare_lora)
    with safe_open(str(recare_lora), framework="pt") as fh:
        modules = lora_modules([k.removeprefix("unet.") for k in fh.keys()])  # noqa: SIM118
        alpha = float(json.loads(fh.metadata()["lora_adapter_metadata"])["unet.lora_alpha"])
    out = tmp_path / "kohya.safetensors"
    res = _export(tiny_sd_dir, out, "--weights", str(recare_lora), "--format", "kohya-lora")
    assert res.code == 0 and res.stdout == b"", res.stderr
    assert f"{3 * len(modules)} tensors" in res.stderr
    with safe_open(str(out), framework="pt") as fh:
        keys, meta = set(fh.keys()), fh.metadata()
        alphas = {k: fh.get_tensor(k) for k in keys if k.endswith(".alpha")}
    expected_keys = {"lora_unet_" + m.replace(".", "_") + part for m in modules
                     for part in (".lora_down.weight", ".lora_up.weight", ".alpha")}
    assert keys == expected_keys  # kohya naming, every module, nothing else
    assert all(a.shape == () and float(a) == alpha for a in alphas.values())
    assert meta["format"] == "pt" and meta["ss_network_module"] == "networks.lora" and '"kohya-lora"' in \
        meta["provenance"]

    base = _unet_out(_load(tiny_sd_dir))
    loaded = _load(tiny_sd_dir)
    loaded.load_lora_weights(str(out))  # diffusers' kohya converter, then peft layers
    assert len(lora_layers(loaded.unet)) == len(modules)  # every adapter found its module
    ours = _load(tiny_sd_dir)
    apply_unet_weights(ours, recare_lora)  # recare's merged application
    moved = float((_unet_out(ours) - base).abs().max())
    assert moved > 1e-3
    torch.testing.assert_close(_unet_out(loaded), _unet_out(ours), rtol=0, atol=1e-5 * moved + 1e-6)


def test_kohya_lora_in_fp16_keeps_alpha_exact(tiny_sd_dir: Path, lora_file: Path, tmp_path: Path) -> None:
    from safetensors import safe_open

    out = tmp_path / "kohya16.safetensors"
    res = _export(tiny_sd_dir, out, "--weights", str(lora_file), "--format", "kohya-lora", "--dtype", "fp16")
    assert res.code == 0, res.stderr
    with safe_open(str(out), framework="pt") as fh, safe_open(str(lora_file), framework="pt") as src:
        for key in fh.keys():  # noqa: SIM118
            value = fh.get_tensor(key)
            if key.endswith(".alpha"):
                assert value.dtype == torch.float32 and float(value) == 8.0
                continue
            assert value.dtype == torch.float16
            module = key.removeprefix("lora_unet_").rsplit(".lora_", 1)[0]
            original = next(src.get_tensor(k) for k in src.keys()  # noqa: SIM118
                            if k.removeprefix("unet.").rsplit(".lora_", 1)[0].replace(".", "_") == module
                            and k.endswith("lora_A.weight" if ".lora_down." in key else "lora_B.weight"))
            assert torch.equal(value, original.to(torch.float16))


def test_kohya_lora_for_another_base_model_is_one_line_exit_3(tiny_sd_dir: Path, lora_file: Path,
                                                             tmp_path: Path) -> None:
    from recare_cli.models.weights import read_safetensors, write_safetensors

    tensors, meta = read_safetensors(lora_file)
    other = tmp_path / "other-lora.safetensors"
    write_safetensors(other, tensors, {**meta, "base_unet": "sha256:0123456789abcdef"})
    out = tmp_path / "kohya.safetensors"
    res = _export(tiny_sd_dir, out, "--weights", str(other), "--format", "kohya-lora")
    lines = res.stderr.strip().splitlines()
    assert res.code == 3 and len(lines) == 1 and "made for base UNet sha256:0123456789abcdef" in lines[0], lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other-lora.safetensors"]


def test_kohya_lora_of_weights_that_are_not_lora_is_one_usage_line(tiny_sd_dir: Path, inputs: SimpleNamespace,
                                                                   lora_file: Path, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    esd = tmp_path / "esd.safetensors"
    save_file({"conv_out.bias": torch.zeros(4)}, str(esd))
    out = tmp_path / "kohya.safetensors"
    cases = [("holds trained UNet parameters from recare erase", [inputs.weights]),
             ("holds trained UNet parameters from recare erase", [lora_file, inputs.weights]),
             ("holds weights of another tool", [esd]), ("exactly one", [lora_file, lora_file]),
             ("(0 given)", [inputs.adv])]
    for phrase, files in cases:
        args = [x for f in files for x in ("--weights", str(f))]
        res = _export(Path("/nonexistent-model"), out, *args, "--format", "kohya-lora")  # refused before loading
        lines = res.stderr.strip().splitlines()
        assert res.code == 2 and len(lines) == 1 and phrase in lines[0], (phrase, res.stderr)
        assert not out.exists()
