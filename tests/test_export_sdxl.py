"""recare export on SDXL: the kohya LoRA in sd-scripts' SDXL naming (its original-layout UNet), read back by
diffusers' own kohya converter on the tiny SDXL model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tests.helpers import every_module_lora_tensors, invoke


def _load_sdxl(folder: Path) -> Any:
    from diffusers import StableDiffusionXLPipeline

    return StableDiffusionXLPipeline.from_pretrained(str(folder))


def _unet_out(pipe: Any) -> torch.Tensor:
    """The SDXL UNet's prediction on fixed random latents, text states, pooled embedding and size ids."""
    g = torch.Generator().manual_seed(1)
    config = pipe.unet.config
    latents = torch.randn(2, 4, 16, 16, generator=g)
    context = torch.randn(2, 77, config.cross_attention_dim, generator=g)
    pooled_width = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
    added = {"text_embeds": torch.randn(2, pooled_width, generator=g),
             "time_ids": torch.tensor([[32.0, 32, 0, 0, 32, 32]] * 2)}
    with torch.no_grad():
        return pipe.unet(latents, torch.tensor([10, 500]), encoder_hidden_states=context,
                         added_cond_kwargs=added).sample.float()


@pytest.fixture(scope="module")
def sdxl_lora_file(tiny_sdxl_dir: Path, care_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A recare erase --lora run on the tiny SDXL model (rank 4, alpha 8: a scale of 2)."""
    folder = tmp_path_factory.mktemp("sdxl-lora")
    out = folder / "lora.safetensors"
    res = invoke(["erase", "--target", "nudity", "--care", str(care_file), "--model", str(tiny_sdxl_dir), "--device",
                  "cpu", "--iterations", "2", "--ddim-steps", "4", "--lr", "1e-2", "--lora", "4", "--lora-alpha", "8",
                  "-o", str(out), "-q"])
    assert res.code == 0, res.stderr
    return out


def every_module_lora(folder: Path, path: Path) -> list[str]:
    """A recare.unet-lora file adapting every Linear and Conv2d of the tiny SDXL UNet (attention, feed-forward,
    resnets, resamplers, shortcut, conv_in/out, time and added-condition embeddings), rank 2, alpha 3; returns
    the modules."""
    from recare_cli.models.fingerprint import module_fingerprint
    from recare_cli.models.lora import save_unet_lora

    unet = _load_sdxl(folder).unet
    tensors = every_module_lora_tensors(unet)
    save_unet_lora(path, tensors, rank=2, alpha=3.0, base_unet=module_fingerprint(unet))
    return [k.removesuffix(".lora_A.weight") for k in tensors if k.endswith(".lora_A.weight")]


# The sd-scripts SDXL names of some modules of the tiny UNet (one resnet and one attention block per level).
SGM_NAMES = {
    "conv_in": "lora_unet_input_blocks_0_0",
    "time_embedding.linear_1": "lora_unet_time_embed_0",
    "add_embedding.linear_2": "lora_unet_label_emb_0_2",
    "down_blocks.0.resnets.0.conv1": "lora_unet_input_blocks_1_0_in_layers_2",
    "down_blocks.0.resnets.0.time_emb_proj": "lora_unet_input_blocks_1_0_emb_layers_1",
    "down_blocks.0.downsamplers.0.conv": "lora_unet_input_blocks_2_0_op",
    "down_blocks.1.resnets.0.conv_shortcut": "lora_unet_input_blocks_3_0_skip_connection",
    "down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k":
        "lora_unet_input_blocks_3_1_transformer_blocks_1_attn2_to_k",
    "mid_block.attentions.0.proj_in": "lora_unet_middle_block_1_proj_in",
    "mid_block.resnets.1.conv2": "lora_unet_middle_block_2_out_layers_3",
    "up_blocks.0.attentions.1.transformer_blocks.0.ff.net.0.proj":
        "lora_unet_output_blocks_1_1_transformer_blocks_0_ff_net_0_proj",
    "up_blocks.0.upsamplers.0.conv": "lora_unet_output_blocks_1_2_conv",
    "up_blocks.1.resnets.1.conv_shortcut": "lora_unet_output_blocks_3_0_skip_connection",
    "conv_out": "lora_unet_out_2",
}


@pytest.mark.parametrize("source", ["erase-run", "every-module"])
def test_sdxl_kohya_lora_loads_in_diffusers_as_recare_applies_it(tiny_sdxl_dir: Path, sdxl_lora_file: Path,
                                                                 tmp_path: Path, source: str,
                                                                 one_torch_thread: None) -> None:
    from safetensors import safe_open

    from recare_cli.core.lora import lora_layers
    from recare_cli.models.lora import lora_modules
    from recare_cli.models.weights import apply_unet_weights

    recare_lora = sdxl_lora_file
    if source == "every-module":
        recare_lora = tmp_path / "every.safetensors"
        every_module_lora(tiny_sdxl_dir, recare_lora)
    with safe_open(str(recare_lora), framework="pt") as fh:
        modules = lora_modules([k.removeprefix("unet.") for k in fh.keys()])  # noqa: SIM118
    out = tmp_path / "kohya.safetensors"
    res = invoke(["export", "--model", str(tiny_sdxl_dir), "-o", str(out), "--weights", str(recare_lora),
                  "--format", "kohya-lora"])
    assert res.code == 0, res.stderr
    with safe_open(str(out), framework="pt") as fh:
        keys = set(fh.keys())
    names = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in keys}
    assert len(keys) == 3 * len(modules) and len(names) == len(modules)
    # sd-scripts' SDXL naming: the original UNet's paths, none of diffusers' block names
    assert not [n for n in names if any(w in n for w in ("down_blocks", "up_blocks", "mid_block", "resnets"))]
    if source == "every-module":
        assert {SGM_NAMES[m] for m in SGM_NAMES} <= names

    base = _unet_out(_load_sdxl(tiny_sdxl_dir))
    loaded = _load_sdxl(tiny_sdxl_dir)
    loaded.load_lora_weights(str(out))  # diffusers' SGM block mapping and kohya converter, then peft layers
    assert len(lora_layers(loaded.unet)) == len(modules)  # every adapter found its module
    ours = _load_sdxl(tiny_sdxl_dir)
    apply_unet_weights(ours, recare_lora)  # recare's merged application
    moved = float((_unet_out(ours) - base).abs().max())
    assert moved > 1e-3
    torch.testing.assert_close(_unet_out(loaded), _unet_out(ours), rtol=0, atol=1e-5 * moved + 1e-6)


# ------------------------------------------------------------------------------------------------
# --format single-file on SDXL and SD 2.x


def _load_sd2(folder: Path) -> Any:
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(str(folder), safety_checker=None, requires_safety_checker=False)


def _weights(pipe: Any, path: Path) -> dict[str, torch.Tensor]:
    """UNet weights as recare erase writes them: cross-attention keys/values and conv_out moved off the base."""
    from recare_cli.models.fingerprint import module_fingerprint
    from recare_cli.models.weights import save_unet_weights

    g = torch.Generator().manual_seed(0)
    state = pipe.unet.state_dict()
    names = [k for k in state if "attn2.to_k" in k or "attn2.to_v" in k] + ["conv_out.weight"]
    trained = {k: state[k] + 0.05 * torch.randn(state[k].shape, generator=g) for k in names}
    save_unet_weights(path, trained, base_unet=module_fingerprint(pipe.unet))
    return trained


def _text_states(pipe: Any, encoder: Any, tokenizer: Any) -> list[torch.Tensor]:
    ids = tokenizer(["a red car"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        out = encoder(ids, output_hidden_states=True)
    return [*out.hidden_states, out[0]]


FAMILIES = {"sdxl": ("tiny_sdxl_dir", _load_sdxl, ("text_encoder", "text_encoder_2")),
            "sd2": ("tiny_sd2_dir", _load_sd2, ("text_encoder",))}


@pytest.mark.parametrize("family", ["sdxl", "sd2"])
def test_mapping_round_trips_every_key(family: str, request: pytest.FixtureRequest) -> None:
    from recare_cli.models.export import TEXT_LAYOUTS, OriginalLayout, pipeline_states

    fixture, load, parts = FAMILIES[family]
    states = pipeline_states(load(request.getfixturevalue(fixture)))
    assert tuple(states) == ("unet", "vae", *parts)
    layout = OriginalLayout({p: s.keys() for p, s in states.items()}, family)
    original = layout.to_original(states)
    layers = {p: sum(".self_attn.q_proj.weight" in k for k in states[p]) for p in parts}
    fused = sum(4 * layers[p] for p, _, kind in TEXT_LAYOUTS[family] if kind == "openclip")  # q,k,v → 1, twice
    assert len(original) == sum(len(s) for s in states.values()) - fused
    for part, prefix, kind in TEXT_LAYOUTS[family]:
        mine = [k for k in original if k.startswith(prefix)]
        if kind == "openclip":
            assert sum(k.endswith("attn.in_proj_weight") for k in mine) == layers[part]
            assert prefix + "positional_embedding" in mine and not [k for k in mine if "self_attn" in k]
    back = layout.to_diffusers(original)
    for part, state in states.items():
        assert set(back[part]) == set(state), part
        for key, value in state.items():
            assert torch.equal(back[part][key], value), (part, key)


@pytest.mark.parametrize("family", ["sdxl", "sd2"])
def test_single_file_loads_in_diffusers_with_the_weights_applied(family: str, request: pytest.FixtureRequest,
                                                                  tmp_path: Path, one_torch_thread: None) -> None:
    """from_single_file(config=<tiny folder>) gives exactly (atol 0) the networks of the base model with the
    weights applied: UNet prediction, VAE decoding, every hidden state of each text encoder."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    from recare_cli.models.weights import apply_unet_weights

    fixture, load, parts = FAMILIES[family]
    folder = request.getfixturevalue(fixture)
    expected = load(folder)
    weights = tmp_path / "erased.safetensors"
    _weights(expected, weights)
    apply_unet_weights(expected, weights)
    out = tmp_path / "single.safetensors"
    res = invoke(["export", "--model", str(folder), "-o", str(out), "--weights", str(weights)])
    assert res.code == 0, res.stderr
    cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    extra = {} if family == "sdxl" else {"safety_checker": None, "requires_safety_checker": False}
    loaded = cls.from_single_file(str(out), config=str(folder), local_files_only=True, **extra)
    if family == "sdxl":
        torch.testing.assert_close(_unet_out(loaded), _unet_out(expected), rtol=0, atol=0)
    else:
        torch.testing.assert_close(_sd_unet_out(loaded), _sd_unet_out(expected), rtol=0, atol=0)
    z = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(loaded.vae.decode(z).sample, expected.vae.decode(z).sample, rtol=0, atol=0)
    for part, tok in zip(parts, ("tokenizer", "tokenizer_2"), strict=False):
        ours = _text_states(expected, getattr(expected, part), getattr(expected, tok))
        theirs = _text_states(loaded, getattr(loaded, part), getattr(expected, tok))
        assert len(ours) == len(theirs)
        for a, b in zip(theirs, ours, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    if family == "sdxl":
        ids = expected.tokenizer_2(["a red car"], padding="max_length", max_length=77, return_tensors="pt").input_ids
        with torch.no_grad():
            torch.testing.assert_close(loaded.text_encoder_2(ids).text_embeds, expected.text_encoder_2(ids).text_embeds,
                                       rtol=0, atol=0)
    base = load(folder)  # the weights changed the UNet, not only a copy of it
    outs = (_unet_out if family == "sdxl" else _sd_unet_out)
    assert not torch.allclose(outs(loaded), outs(base))


def _sd_unet_out(pipe: Any) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(2, 4, 16, 16, generator=g)
    context = torch.randn(2, 77, pipe.unet.config.cross_attention_dim, generator=g)
    with torch.no_grad():
        return pipe.unet(latents, torch.tensor([10, 500]), encoder_hidden_states=context).sample.float()


def _real_size(family: str) -> dict[str, Any]:
    """The networks of SDXL base or SD 2.x at their real shapes, on the meta device (no memory, no values)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    clip_l = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
              "projection_dim": 768}
    with torch.device("meta"):
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2)
        if family == "sd2":
            unet = UNet2DConditionModel(cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
                                        use_linear_projection=True)
            text = CLIPTextModel(CLIPTextConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                                                num_attention_heads=16, projection_dim=512, hidden_act="gelu"))
            return {"unet": unet, "vae": vae, "text_encoder": text}
        unet = UNet2DConditionModel(
            block_out_channels=(320, 640, 1280), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D",
                                                                   "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(5, 10, 20),
            use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816, transformer_layers_per_block=(1, 2, 10),
            cross_attention_dim=2048)
        text = CLIPTextModel(CLIPTextConfig(**clip_l))
        text_2 = CLIPTextModelWithProjection(CLIPTextConfig(
            hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
            projection_dim=1280, hidden_act="gelu"))
    return {"unet": unet, "vae": vae, "text_encoder": text, "text_encoder_2": text_2}


@pytest.mark.parametrize(("family", "model_type", "sizes"),
                         [("sdxl", "xl_base", {"unet": 1680, "vae": 248, "text_encoder": 196, "text_encoder_2": 389}),
                          ("sd2", "v2", {"unet": 686, "vae": 248, "text_encoder": 280})])
def test_real_shapes_are_detected_and_read_back_by_diffusers(family: str, model_type: str,
                                                             sizes: dict[str, int]) -> None:
    """At the real shapes (empty tensors): diffusers' detection names the model type from the keys, and its own
    converters read every tensor back to the diffusers names and shapes."""
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
        convert_open_clip_checkpoint,
        infer_diffusers_model_type,
    )

    from recare_cli.models.export import TEXT_LAYOUTS, OriginalLayout

    nets = _real_size(family)
    states = {part: net.state_dict() for part, net in nets.items()}
    original = OriginalLayout({p: s.keys() for p, s in states.items()}, family).to_original(states)
    counted = {part: sum(k.startswith(prefix) for k in original) for part, prefix, _ in TEXT_LAYOUTS[family]}
    counted |= {"unet": sum(k.startswith("model.diffusion_model.") for k in original),
                "vae": sum(k.startswith("first_stage_model.") for k in original)}
    assert counted == sizes and len(original) == sum(sizes.values())
    assert infer_diffusers_model_type(original) == model_type
    read = {"unet": convert_ldm_unet_checkpoint(original, dict(nets["unet"].config)),
            "vae": convert_ldm_vae_checkpoint(original, dict(nets["vae"].config))}
    for part, prefix, kind in TEXT_LAYOUTS[family]:
        if kind == "clip":
            mine = {k: v for k, v in original.items() if k.startswith(prefix)}
            found = convert_ldm_clip_checkpoint(mine)
        else:
            found = convert_open_clip_checkpoint(nets[part], original, prefix=prefix)
        wrapped = any(k.startswith("text_model.") for k in states[part])
        read[part] = found if wrapped else {k.removeprefix("text_model."): v for k, v in found.items()}
    for part, state in states.items():
        assert set(read[part]) == set(state), part
        assert all(read[part][k].shape == state[k].shape for k in state), part


def test_a_text_encoder_of_another_layout_is_refused_for_the_single_file() -> None:
    """SDXL's second encoder must be OpenCLIP (GELU), its first OpenAI CLIP (quick-GELU): one swapped is refused."""
    from types import SimpleNamespace

    from recare_cli.errors import UsageError
    from recare_cli.models.export import check_text_encoders

    class CLIPTextModel:
        config = SimpleNamespace(hidden_act="quick_gelu")

    class CLIPTextModelWithProjection:
        config = SimpleNamespace(hidden_act="gelu")

    check_text_encoders(SimpleNamespace(text_encoder=CLIPTextModel(), text_encoder_2=CLIPTextModelWithProjection()),
                        "sdxl")
    swapped = SimpleNamespace(text_encoder=CLIPTextModel(), text_encoder_2=CLIPTextModel())
    with pytest.raises(UsageError, match=r"text_encoder_2 is OpenCLIP.*--format diffusers"):
        check_text_encoders(swapped, "sdxl")
    with pytest.raises(UsageError, match="text_encoder is OpenCLIP"):
        check_text_encoders(SimpleNamespace(text_encoder=CLIPTextModel()), "sd2")


def test_a_family_without_a_single_file_layout_is_refused() -> None:
    from types import SimpleNamespace

    from recare_cli.errors import UsageError
    from recare_cli.models.export import check_text_encoders

    with pytest.raises(UsageError, match="this model is flux: use --format diffusers"):
        check_text_encoders(SimpleNamespace(), "flux")
