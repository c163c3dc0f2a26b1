"""LoRA files on the diffusion engine: kohya/A1111 and diffusers/peft layouts, built from each
model's own module names, on the embedded model, an SD 1.5-shaped and an SDXL-shaped UNet.

For each: weight 1 changes the picture, weight 0 gives the base picture, and the next job
without the tag gives exactly the base pixels again (nothing leaks between jobs)."""
from __future__ import annotations

import numpy as np
import pytest

from engines.base import ParamError
from engines.diffusion.engine import DiffusionEngine, Txt2ImgParams
from lora_files import make_lora

PROMPT = "a red circle on a blue background"


def pixels(engine, prompt: str, folder) -> np.ndarray:
    params = Txt2ImgParams(prompt=prompt, seed=3, steps=3, guidance_scale=2.0,
                           lora_dirs=(str(folder),))
    return np.asarray(engine.generate(params).images[0]).astype(int)


def check_layouts(engine, folder):
    pipe = engine._pipes["txt2img"]
    make_lora(pipe, folder / "style_kohya.safetensors", "kohya", seed=1)
    make_lora(pipe, folder / "nested" / "style_diffusers.safetensors", "diffusers", seed=2)
    base = pixels(engine, PROMPT, folder)
    for name in ("style_kohya", "style_diffusers"):
        on = pixels(engine, f"{PROMPT} <lora:{name}:1>", folder)
        assert np.abs(on - base).mean() > 2, f"{name} at weight 1 changed nothing"
        assert np.array_equal(pixels(engine, f"<lora:{name}:0>{PROMPT}", folder), base)
        assert np.array_equal(pixels(engine, PROMPT, folder), base), f"{name} leaked"
    both = pixels(engine, f"<lora:style_kohya:1> {PROMPT} <lora:style_diffusers:0.7>", folder)
    assert not np.array_equal(both, pixels(engine, f"{PROMPT} <lora:style_kohya:1>", folder))
    assert np.array_equal(pixels(engine, PROMPT, folder), base)


@pytest.fixture(scope="module")
def tiny(tiny_engine):  # tests/wiring.py
    return tiny_engine


def test_both_layouts_on_the_embedded_model(tiny, tmp_path):
    check_layouts(tiny, tmp_path)


def test_text_encoder_and_unet_weights_apart(tiny, tmp_path):
    make_lora(tiny._pipes["txt2img"], tmp_path / "s.safetensors", "kohya")
    base = pixels(tiny, PROMPT, tmp_path)
    te_only = pixels(tiny, f"{PROMPT} <lora:s:1:0>", tmp_path)
    unet_only = pixels(tiny, f"{PROMPT} <lora:s:te=0:unet=1>", tmp_path)
    assert not np.array_equal(te_only, base) and not np.array_equal(unet_only, base)
    assert not np.array_equal(te_only, unet_only)
    result = tiny.generate(Txt2ImgParams(prompt=f"{PROMPT} <lora:s:0.5>", seed=3, steps=2,
                                         lora_dirs=(str(tmp_path),)))
    from engines.diffusion.lora import addnet_hash

    assert result.info["loras"] == [{"name": "s", "hash": addnet_hash(tmp_path / "s.safetensors"),
                                     "te_weight": 0.5, "unet_weight": 0.5}]


def test_clear_errors_name_the_lora(tiny, tmp_path):
    with pytest.raises(ParamError, match="unknown LoRA 'nope'") as error:
        Txt2ImgParams(prompt="x <lora:nope:1>", lora_dirs=(str(tmp_path),))
    assert error.value.field == "prompt"
    (tmp_path / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ParamError, match="broken.safetensors is not a readable"):
        Txt2ImgParams(prompt="x <lora:broken>", lora_dirs=(str(tmp_path),))
    from safetensors.torch import save_file
    import torch

    save_file({"model.weight": torch.zeros(2, 2)}, str(tmp_path / "notlora.safetensors"))
    with pytest.raises(ParamError, match="'notlora'.*not a LoRA"):
        Txt2ImgParams(prompt="x <lora:notlora>", lora_dirs=(str(tmp_path),))
    with pytest.raises(ParamError, match="weight 'abc' is not a number"):
        Txt2ImgParams(prompt="x <lora:notlora:abc>", lora_dirs=(str(tmp_path),))
    # a LoRA made for SD 1.x (768-wide cross-attention) on the embedded model
    save_file({"lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight":
               torch.zeros(4, 768), "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"
               ".lora_up.weight": torch.zeros(320, 4)}, str(tmp_path / "sd15.safetensors"))
    params = Txt2ImgParams(prompt="x <lora:sd15>", steps=1, lora_dirs=(str(tmp_path),))
    with pytest.raises(ParamError, match="LoRA 'sd15' was made for SD 1.x"):
        tiny.generate(params)
    assert getattr(tiny._pipes["txt2img"].unet, "peft_config", None) is None


def test_tags_are_parsed_as_a1111():
    from engines.diffusion.lora import LoraTag, parse_tags

    text, tags = parse_tags("a <lora:a:0.5> cat <lora:b> <hypernet:h:1> <lora:c:1:0.25> <lyco:d:te=0:unet=2>")
    assert text == "a  cat  <hypernet:h:1>  "
    assert tags == [LoraTag("a", 0.5, 0.5), LoraTag("b", 1.0, 1.0), LoraTag("c", 1.0, 0.25),
                    LoraTag("d", 0.0, 2.0)]


@pytest.mark.parametrize("shape", ["sd15", "sdxl"])
def test_both_layouts_on_family_shaped_models(shape, tmp_path):
    """SD 1.5's UNet layout (reduced widths, 768-wide text) and SDXL's (two text encoders,
    kohya's sgm key names) load both layouts the same way."""
    from small_pipelines import build_sd15_shaped, build_sdxl_shaped

    build = build_sd15_shaped if shape == "sd15" else build_sdxl_shaped
    engine = DiffusionEngine(str(build(tmp_path / "model")), device="cpu")
    engine.load()
    if shape == "sdxl":
        assert engine._pipes["txt2img"].text_encoder_2 is not None
    check_layouts(engine, tmp_path / "Lora")
    engine.unload()
