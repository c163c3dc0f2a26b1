"""Single-file `.safetensors` checkpoints load offline, with the shipped family configs.

The end-to-end tests write SD 1.5- and SD 2.1-architecture checkpoints (random weights) in the
key layout A1111/ComfyUI files use, load them through the engine with the hub switched off,
check the weights arrived where they belong and generate. SDXL is checked on shapes here (meta
tensors) and end to end by `scripts/check_single_file.py xl_base` (~20 GB of RAM).
"""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from engines.base import EngineError
from engines.diffusion.single_file import SUPPORTED, checkpoint_family, config_folder
from ldm_checkpoint import family_parts

# Parameter counts of the public checkpoints' components (diffusers layout).
PUBLIC_SIZES = {
    "v1": {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480},
    "v2": {"unet": 865_910_724, "vae": 83_653_863, "text_encoder": 340_387_840},
    "xl_base": {"unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480,
                "text_encoder_2": 694_659_840},
}


@pytest.fixture(autouse=True)
def offline_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GENSTUDIO_MODELS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.parametrize("family", sorted(SUPPORTED))
def test_family_configs_build_the_public_architectures(family):
    parts = family_parts(family)
    counts = {name: sum(p.numel() for p in model.parameters()) for name, model in vars(parts).items()}
    assert counts == PUBLIC_SIZES[family]


def _shapes(state: dict) -> dict:
    # transformers 5 names CLIP text weights without the `text_model.` level; compare without it
    shapes = {k.removeprefix("text_model."): tuple(v.shape) for k, v in state.items()
              if not k.endswith("position_ids")}
    assert len(shapes) > 10
    return shapes


@pytest.mark.parametrize("family", sorted(SUPPORTED))
def test_single_file_layout_maps_back_onto_the_family_config(family):
    """Each family on shapes: its parts written in the single-file layout are detected as that
    family, and diffusers' own converters put every tensor back on the right parameter."""
    from diffusers.loaders.single_file_utils import (convert_ldm_clip_checkpoint,
                                                     convert_ldm_unet_checkpoint,
                                                     convert_ldm_vae_checkpoint,
                                                     convert_open_clip_checkpoint,
                                                     infer_diffusers_model_type)
    from ldm_checkpoint import ldm_state_dict

    parts = family_parts(family)
    ldm = ldm_state_dict(parts, family)
    assert infer_diffusers_model_type(ldm) == family
    assert _shapes(convert_ldm_unet_checkpoint(ldm, dict(parts.unet.config))) == \
        _shapes(parts.unet.state_dict())
    assert _shapes(convert_ldm_vae_checkpoint(ldm, dict(parts.vae.config))) == \
        _shapes(parts.vae.state_dict())
    if family == "v2":
        text = convert_open_clip_checkpoint(parts.text_encoder, ldm, "cond_stage_model.model.")
    else:
        text = convert_ldm_clip_checkpoint(ldm)
    assert _shapes(text) == _shapes(parts.text_encoder.state_dict())
    if family == "xl_base":
        text_2 = convert_open_clip_checkpoint(parts.text_encoder_2, ldm,
                                              "conditioner.embedders.1.model.")
        assert _shapes(text_2) == _shapes(parts.text_encoder_2.state_dict())


def test_clip_tokenizer_matches_openai_ids():
    from transformers import CLIPTokenizer

    v1 = CLIPTokenizer.from_pretrained(config_folder("v1") / "tokenizer")
    assert v1("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert v1("an astronaut riding a horse")["input_ids"][2:6] == [18376, 6765, 320, 4558]
    assert len(v1) == 49408 and v1.pad_token == "<|endoftext|>"
    # SD 2 and SDXL's second tokenizer pad with "!", id 0, as OpenCLIP does
    xl = CLIPTokenizer.from_pretrained(config_folder("xl_base") / "tokenizer_2")
    assert xl.pad_token == "!" and xl.pad_token_id == 0


def test_config_folder_is_written_once(monkeypatch):
    first = config_folder("v1")
    stamp = (first / "model_index.json").stat().st_mtime_ns
    assert config_folder("v1") == first
    assert (first / "model_index.json").stat().st_mtime_ns == stamp
    assert json.loads((first / "model_index.json").read_text())["_class_name"] == \
        "StableDiffusionPipeline"
    assert not list(first.parent.glob("*.partial-*"))
    with pytest.raises(ValueError, match="family"):
        config_folder("sd9")


def _write(path, tensors):
    save_file({k: torch.zeros(shape) for k, shape in tensors.items()}, str(path))
    return path


def test_family_detection_and_clear_refusals(tmp_path):
    unet_key = "model.diffusion_model.input_blocks.0.0.weight"
    assert checkpoint_family(_write(tmp_path / "v1.safetensors", {unet_key: (8, 4, 3, 3)})) == "v1"
    xl = _write(tmp_path / "xl.safetensors", {
        unet_key: (8, 4, 3, 3),
        "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias": (8,)})
    assert checkpoint_family(xl) == "xl_base"
    inpaint = _write(tmp_path / "inpaint.safetensors", {unet_key: (8, 9, 3, 3)})
    with pytest.raises(EngineError, match="inpainting-only"):
        checkpoint_family(inpaint)
    lora = _write(tmp_path / "lora.safetensors", {"lora_unet_down.alpha": (1,)})
    with pytest.raises(EngineError, match="not a Stable Diffusion checkpoint"):
        checkpoint_family(lora)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(EngineError, match="not a readable .safetensors"):
        checkpoint_family(corrupt)
    flux = _write(tmp_path / "flux.safetensors", {
        "model.diffusion_model.double_blocks.0.img_attn.norm.key_norm.scale": (8,)})
    with pytest.raises(EngineError, match="'flux.*supported single files: Stable Diffusion 1.x"):
        checkpoint_family(flux)


def test_native_side_from_header_or_folder_without_torch(tmp_path):
    from engines.diffusion.loading import ALIASES, DEFAULT_MODEL
    from engines.diffusion.single_file import native_side

    unet_key = "model.diffusion_model.input_blocks.0.0.weight"
    sd2_key = "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight"
    xl_key = "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias"
    assert native_side(_write(tmp_path / "a.safetensors", {unet_key: (8, 4, 3, 3)})) == 512
    assert native_side(_write(tmp_path / "b.safetensors", {sd2_key: (4, 1024)})) == 768
    assert native_side(_write(tmp_path / "c.safetensors", {unet_key: (8, 4, 3, 3), xl_key: (8,)})) == 1024
    assert native_side(ALIASES[DEFAULT_MODEL]) == 64
    (tmp_path / "junk.safetensors").write_bytes(b"\xff" * 64)
    assert native_side(tmp_path / "junk.safetensors") is None
    assert native_side(tmp_path / "missing.safetensors") is None


def test_sidecar_yaml_sets_the_prediction_type(tmp_path):
    from engines.diffusion.single_file import sidecar_prediction_type

    checkpoint = tmp_path / "sd21.safetensors"
    assert sidecar_prediction_type(checkpoint) is None
    sidecar = checkpoint.with_suffix(".yaml")
    sidecar.write_text("model:\n  params:\n    parameterization: \"v\"\n")
    assert sidecar_prediction_type(checkpoint) == "v_prediction"
    sidecar.write_text("model:\n  params:\n    scale_factor: 0.18215\n")
    assert sidecar_prediction_type(checkpoint) == "epsilon"
    sidecar.write_text("just: [a, list")
    with pytest.raises(EngineError, match="sd21.yaml beside the checkpoint is not an LDM"):
        sidecar_prediction_type(checkpoint)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["v1", "v2"])
def test_single_file_loads_offline_and_generates(tmp_path, family):
    """An SD 1.5- or SD 2.1-architecture checkpoint with random weights, written as one fp16
    file in the A1111 layout, loads through the engine with the hub off and generates."""
    from ldm_checkpoint import ldm_state_dict

    from engines.diffusion.engine import DiffusionEngine
    from engines.diffusion.params import Txt2ImgParams

    # 1. Random weights in the family's architecture, written as a single file.
    torch.manual_seed(0)
    parts = family_parts(family, device="cpu")
    checkpoint = tmp_path / f"my-{family}-finetune.safetensors"
    ldm = ldm_state_dict(parts, family, dtype=torch.float16)
    # names every such file from A1111/civitai carries, so the layout is the real one
    assert {"model.diffusion_model.time_embed.0.weight", "model.diffusion_model.out.2.weight",
            "model.diffusion_model.input_blocks.3.0.op.weight",
            "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight",
            "model.diffusion_model.middle_block.1.proj_in.weight",
            "model.diffusion_model.output_blocks.11.0.skip_connection.weight",
            "model.diffusion_model.output_blocks.2.1.conv.weight",
            "first_stage_model.encoder.down.0.block.0.norm1.weight",
            "first_stage_model.decoder.up.3.block.2.conv2.weight",
            "first_stage_model.decoder.mid.attn_1.q.weight"} <= set(ldm)
    assert ({"cond_stage_model.transformer.text_model.final_layer_norm.weight"} if family == "v1"
            else {"cond_stage_model.model.ln_final.weight",
                  "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"}) <= set(ldm)
    save_file(ldm, str(checkpoint))
    del ldm
    fp16 = lambda state: {k: v.half().float() for k, v in state.items()}  # noqa: E731
    unet = {k: v for k, v in fp16(parts.unet.state_dict()).items()
            if k.startswith(("conv_in", "down_blocks.1.attentions.0", "up_blocks.3.resnets.2"))}
    vae = fp16(parts.vae.state_dict())
    text = fp16(parts.text_encoder.state_dict())
    del parts

    # 2. Load it as a user would, with no hub: the engine detects the family and uses shipped configs.
    assert checkpoint_family(checkpoint) == family
    engine = DiffusionEngine(str(checkpoint), device="cpu")
    engine.load()
    pipe = engine._pipes["txt2img"]
    for expected, module in ((unet, pipe.unet), (vae, pipe.vae), (text, pipe.text_encoder)):
        loaded = module.state_dict()
        for key, value in expected.items():
            assert torch.equal(loaded[key].reshape(value.shape), value), key
    assert set(pipe.text_encoder.state_dict()) == set(text)
    assert pipe.tokenizer("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert pipe.scheduler.config.prediction_type == ("epsilon" if family == "v1" else "v_prediction")

    # 3. It generates, and the result names the checkpoint and its A1111 hash.
    result = engine.generate(Txt2ImgParams(prompt="a red circle", steps=2, width=64, height=64,
                                           seed=1, guidance_scale=3.0))
    assert result.images[0].size == (64, 64)
    assert result.info["model"] == f"my-{family}-finetune"
    assert result.info["model_hash"] is not None and len(result.info["model_hash"]) == 10
    engine.unload()

    # 4. A1111's sidecar yaml (no `parameterization: v`) marks a 512-px epsilon SD 2.x base.
    if family == "v2":
        checkpoint.with_suffix(".yaml").write_text("model:\n  params:\n    linear_start: 0.00085\n")
        engine = DiffusionEngine(str(checkpoint), device="cpu")
        engine.load()
        assert engine._pipes["txt2img"].scheduler.config.prediction_type == "epsilon"
        assert engine._scheduler_config["prediction_type"] == "epsilon"  # every sampler gets it
        engine.unload()
