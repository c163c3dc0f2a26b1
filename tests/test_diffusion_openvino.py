"""The UNet on OpenVINO (GENSTUDIO_OPENVINO): same images in f32, close in bf16, and PyTorch for
every call it does not cover. Runs on the embedded model."""
from __future__ import annotations

from dataclasses import asdict, replace

import numpy as np
import pytest

from engines.base import EngineError
from engines.diffusion.engine import DiffusionEngine
from engines.diffusion.loading import RuntimeOptions
from engines.diffusion.params import Txt2ImgParams

PARAMS = Txt2ImgParams(prompt="a small red star at the top left on a blue background", steps=8,
                       seed=11, guidance_scale=2.0, batch_size=2)


def pixels(result) -> list[np.ndarray]:
    return [np.asarray(image).astype(int) for image in result.images]


@pytest.fixture(scope="module")
def torch_images():
    engine = DiffusionEngine(options=RuntimeOptions())
    engine.load()
    images = {"default": pixels(engine.generate(PARAMS)),
              "odd": pixels(engine.generate(replace(PARAMS, width=72))),
              "cache": pixels(engine.generate(replace(PARAMS, step_cache=2)))}
    engine.unload()
    return images


@pytest.fixture(scope="module")
def openvino_engine():
    engine = DiffusionEngine(options=RuntimeOptions(openvino="f32"))
    engine.load()
    yield engine
    engine.unload()


@pytest.mark.slow
def test_f32_gives_the_same_images_as_pytorch(openvino_engine, torch_images):
    runner = openvino_engine._pipes["txt2img"].unet._genstudio_openvino
    before = runner.calls
    result = openvino_engine.generate(PARAMS)
    images = pixels(result)
    # every denoising call went to OpenVINO (8 steps; CFG runs as one batch of 4), and the
    # result says so (the infotext's "UNet backend")
    assert runner.calls - before == PARAMS.steps
    assert result.info["unet_backend"] == "OpenVINO f32"
    for ours, reference in zip(images, torch_images["default"]):
        assert np.abs(ours - reference).max() <= 1  # fp32 sums in another order: 1e-5 apart


@pytest.mark.slow
def test_calls_it_does_not_cover_go_to_pytorch(openvino_engine, torch_images):
    runner = openvino_engine._pipes["txt2img"].unet._genstudio_openvino
    before = runner.calls
    # 72 px: an 18-latent side takes the UNet's odd-size upsampling path, not in the traced graph
    odd = pixels(openvino_engine.generate(replace(PARAMS, width=72)))
    # the step cache hooks PyTorch modules
    cached = pixels(openvino_engine.generate(replace(PARAMS, step_cache=2)))
    assert runner.calls == before
    assert "unet_backend" not in openvino_engine.generate(replace(PARAMS, width=72)).info
    for ours, reference in zip(odd + cached, torch_images["odd"] + torch_images["cache"]):
        assert np.array_equal(ours, reference)
    # and the same engine is back on OpenVINO for the next plain request
    openvino_engine.generate(PARAMS)
    assert runner.calls - before == PARAMS.steps


@pytest.mark.slow
def test_img2img_shares_the_converted_unet(openvino_engine):
    from PIL import Image

    runner = openvino_engine._pipes["txt2img"].unet._genstudio_openvino
    before = runner.calls
    params = openvino_engine.Img2ImgParams(**{**asdict(PARAMS), "batch_size": 1},
                                           init_image=Image.new("RGB", (64, 64), "blue"),
                                           strength=0.5)
    result = openvino_engine.generate(params)
    assert result.images[0].size == (64, 64)
    assert runner.calls - before == 4  # 8 steps at strength 0.5


@pytest.mark.slow
def test_bf16_is_close_to_pytorch(torch_images):
    engine = DiffusionEngine(options=RuntimeOptions(openvino="bf16"))
    engine.load()
    images = pixels(engine.generate(PARAMS))
    assert engine._pipes["txt2img"].unet._genstudio_openvino.calls == PARAMS.steps
    engine.unload()
    for ours, reference in zip(images, torch_images["default"]):
        assert np.abs(ours - reference).mean() < 2.0  # of 255; bf16 keeps 8 bits of mantissa


def test_bad_settings_are_refused_before_loading(monkeypatch):
    monkeypatch.setenv("GENSTUDIO_OPENVINO", "int4")
    assert RuntimeOptions.from_env().openvino == "int4"
    engine = DiffusionEngine(options=RuntimeOptions.from_env())
    with pytest.raises(EngineError, match="GENSTUDIO_OPENVINO must be one of f32, bf16"):
        engine.load()
    engine = DiffusionEngine(options=RuntimeOptions(openvino="f32", compile=True))
    with pytest.raises(EngineError, match="set one or the other"):
        engine.load()
    assert not engine.loaded


def test_infotext_names_the_unet_backend():
    from studio.tasks.image import infotext

    info = {"sampler": "DPM++ 2M", "model": "genstudio-tiny-sd", "unet_backend": "OpenVINO bf16"}
    assert "UNet backend: OpenVINO bf16" in infotext(info, PARAMS, 11, 64, 64, "txt2img")
    del info["unet_backend"]
    assert "UNet backend" not in infotext(info, PARAMS, 11, 64, 64, "txt2img")


def test_sdxl_style_unet_with_pooled_text_and_size_ids():
    """SDXL's UNet also takes pooled text embeddings and 6 size/crop ids: traced as inputs too
    (a small random SDXL-shaped UNet; the real one is 2.6B parameters)."""
    import torch
    from diffusers import UNet2DConditionModel

    from engines.diffusion.openvino import enable_openvino

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=16, block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
        attention_head_dim=(2, 4), use_linear_projection=True, transformer_layers_per_block=(1, 2),
        addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=16 + 6 * 8).eval()
    sample, context = torch.randn(2, 4, 12, 16), torch.randn(2, 77, 32)
    added = {"text_embeds": torch.randn(2, 16), "time_ids": torch.tensor([[64., 64, 0, 0, 64, 64]] * 2)}
    with torch.no_grad():
        expected = unet(sample, 400, encoder_hidden_states=context, added_cond_kwargs=added).sample
        runner = enable_openvino(unet, "f32", 2)
        got = unet(sample, 400, encoder_hidden_states=context, added_cond_kwargs=added).sample
        assert runner.calls == 1
        assert torch.allclose(got, expected, atol=1e-4)
        # without the SDXL inputs the UNet cannot run; the traced graph is not asked to
        assert not runner.covers(sample, context, {})


def test_a_loaded_lora_sends_the_unet_back_to_pytorch(tmp_path):
    """LoRAs are loaded into the PyTorch modules per generation; the traced graph has none."""
    import torch
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    from engines.diffusion.openvino import enable_openvino

    unet = UNet2DConditionModel(
        sample_size=8, block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
        attention_head_dim=4).eval()
    runner = enable_openvino(unet, "f32", 1)
    sample, context = torch.randn(1, 4, 8, 8), torch.randn(1, 7, 32)
    assert runner.covers(sample, context, {})
    unet.add_adapter(LoraConfig(r=2, target_modules=["to_q"]))
    assert not runner.covers(sample, context, {})
