"""Single-file `.safetensors` checkpoints load offline, with the shipped family configs.

The end-to-end test writes an SD 1.5-architecture checkpoint (random weights) in the LDM layout
that A1111/ComfyUI files use, loads it through the engine with the hub switched off, checks the
weights arrived where they belong and generates with it.
"""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from engines.base import EngineError
from engines.diffusion_single_file import CONFIGS, SUPPORTED, checkpoint_family, config_folder

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
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    folder = config_folder(family)
    sizes = {}
    with torch.device("meta"):  # shapes only: SDXL would need 10 GB of real weights
        sizes["unet"] = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
        sizes["vae"] = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
        for name in ("text_encoder", "text_encoder_2"):
            if (folder / name).exists():
                cls = CLIPTextModelWithProjection if name.endswith("2") else CLIPTextModel
                sizes[name] = cls(CLIPTextConfig.from_pretrained(folder / name))
    counts = {name: sum(p.numel() for p in model.parameters()) for name, model in sizes.items()}
    assert counts == PUBLIC_SIZES[family]


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


@pytest.mark.slow
def test_sd15_ldm_single_file_loads_offline_and_generates(tmp_path):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from engines.diffusion import DiffusionEngine
    from engines.diffusion_params import Txt2ImgParams
    from engines.diffusion_random import ARCHITECTURES
    from ldm_checkpoint import sd1_ldm_state_dict

    # 1. An SD 1.5-architecture model with random weights, written as one LDM-layout fp16 file.
    torch.manual_seed(0)
    spec = ARCHITECTURES["sd15"]

    class Parts:  # what sd1_ldm_state_dict reads from a pipeline
        unet = UNet2DConditionModel(**spec["unet"])
        vae = AutoencoderKL(**spec["vae"])
        text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=49408, **spec["text"]))

    checkpoint = tmp_path / "my-sd15-finetune.safetensors"
    ldm = sd1_ldm_state_dict(Parts, dtype=torch.float16)
    # names every SD 1.5 file from A1111/civitai carries, so the layout is the real one
    assert {"model.diffusion_model.time_embed.0.weight", "model.diffusion_model.out.2.weight",
            "model.diffusion_model.input_blocks.3.0.op.weight",
            "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight",
            "model.diffusion_model.middle_block.1.proj_in.weight",
            "model.diffusion_model.output_blocks.11.0.skip_connection.weight",
            "model.diffusion_model.output_blocks.2.1.conv.weight",
            "first_stage_model.encoder.down.0.block.0.norm1.weight",
            "first_stage_model.decoder.up.3.block.2.conv2.weight",
            "first_stage_model.decoder.mid.attn_1.q.weight",
            "cond_stage_model.transformer.text_model.final_layer_norm.weight"} <= set(ldm)
    save_file(ldm, str(checkpoint))
    del ldm
    reference = {k: v.half().float() for k, v in Parts.unet.state_dict().items()
                 if k.startswith(("conv_in", "down_blocks.1.attentions.0", "up_blocks.3.resnets.2"))}
    vae_attention = Parts.vae.state_dict()["decoder.mid_block.attentions.0.to_q.weight"].half().float()
    text_weights = {k: v.half().float() for k, v in Parts.text_encoder.state_dict().items()}
    del Parts

    # 2. Load it as a user would, with no hub: the engine detects SD 1.x and uses shipped configs.
    assert checkpoint_family(checkpoint) == "v1"
    engine = DiffusionEngine(str(checkpoint), device="cpu")
    engine.load()
    pipe = engine._pipes["txt2img"]
    loaded = pipe.unet.state_dict()
    for key, value in reference.items():
        assert torch.equal(loaded[key], value), key
    assert torch.equal(pipe.vae.state_dict()["decoder.mid_block.attentions.0.to_q.weight"],
                       vae_attention)
    loaded_text = pipe.text_encoder.state_dict()
    assert set(loaded_text) == set(text_weights)
    for key, value in text_weights.items():
        assert torch.equal(loaded_text[key], value), key
    assert pipe.tokenizer("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]

    # 3. It generates, and the result names the checkpoint and its A1111 hash.
    result = engine.generate(Txt2ImgParams(prompt="a red circle", steps=2, width=64, height=64,
                                           seed=1, guidance_scale=3.0))
    assert result.images[0].size == (64, 64)
    assert result.info["model"] == "my-sd15-finetune"
    assert result.info["model_hash"] is not None and len(result.info["model_hash"]) == 10
    engine.unload()
