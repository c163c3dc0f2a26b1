"""The "train_lora" task on an SDXL-shaped pipeline (two text encoders, pooled text embeddings and
size ids; tests/small_pipelines.py): it trains, the file is in kohya's SDXL layout (`lora_unet_`,
`lora_te1_`, `lora_te2_`), plain diffusers' load_lora_weights and the studio's own loader both
apply it and it changes the image; other families are refused by name."""
from __future__ import annotations

import math

import numpy as np
import pytest

from engines.base import ParamError
from studio.tasks import run_task, validate_task


def _rings(n: int) -> list[str]:
    from test_lora_training import _b64, rings

    return [_b64(image) for image in rings(n)]


@pytest.fixture(scope="module")
def sdxl_folder(tmp_path_factory):
    from small_pipelines import build_sdxl_shaped

    return build_sdxl_shaped(tmp_path_factory.mktemp("sdxl") / "model")


def test_sdxl_lora_trains_and_loads(ctx, sdxl_folder):
    import shutil

    import torch
    from diffusers import StableDiffusionXLPipeline
    from safetensors import safe_open

    sdxl_folder = shutil.copytree(sdxl_folder, ctx.config.models_dir / "Stable-diffusion" / "tinyxl")
    params = {"name": "xlring", "trigger": "gsring", "images": _rings(5), "steps": 4, "rank": 4,
              "batch": 2, "lr": 1e-2, "model": str(sdxl_folder), "train_text_encoder": True,
              "target": "unet"}
    result = run_task(ctx, "train_lora", params, lambda progress: None)
    assert result.info["steps"] == 4 and math.isfinite(result.info["final_loss"])
    target = ctx.config.models_dir / "Lora" / "xlring.safetensors"
    with safe_open(str(target), "pt") as handle:
        keys = list(handle.keys())
        assert handle.metadata()["ss_base_model_version"] == "sdxl_base_v1-0"
    for prefix in ("lora_unet_", "lora_te1_", "lora_te2_"):
        assert any(k.startswith(prefix) for k in keys), f"no {prefix} keys"
    assert any("resnets" in k and k.endswith(".lora_down.weight") for k in keys)  # convs too

    # Plain diffusers loads the file (UNet and both text encoders) and the image changes.
    pipe = StableDiffusionXLPipeline.from_pretrained(sdxl_folder)
    kwargs = dict(num_inference_steps=2, guidance_scale=5.0, output_type="np", height=64, width=64)
    before = pipe("a red gsring", generator=torch.Generator().manual_seed(0), **kwargs).images
    pipe.load_lora_weights(str(target))
    assert all(getattr(pipe, part).peft_config for part in ("unet", "text_encoder", "text_encoder_2"))
    after = pipe("a red gsring", generator=torch.Generator().manual_seed(0), **kwargs).images
    assert np.abs(before - after).mean() > 1e-3

    # The studio's own loader: weight 1 changes the image, weight 0 and no tag give the base.
    base = dict(prompt="a red gsring", steps=2, seed=1, guidance_scale=5.0, model=str(sdxl_folder))
    plain = np.asarray(run_task(ctx, "txt2img", base).images[0]).astype(int)
    tagged = np.asarray(run_task(ctx, "txt2img", dict(base, prompt="a red gsring <lora:xlring:1>"))
                        .images[0]).astype(int)
    off = np.asarray(run_task(ctx, "txt2img", dict(base, prompt="a red gsring <lora:xlring:0>"))
                     .images[0]).astype(int)
    assert np.abs(plain - tagged).mean() > 0.5 and np.array_equal(plain, off)


def test_other_families_are_refused(ctx, tmp_path):
    from family_pipelines import build_pixart, build_sdxl_refiner

    params = {"name": "x", "trigger": "gsring", "images": _rings(5), "steps": 2}
    with pytest.raises(ParamError, match="PixArtAlphaPipeline") as error:
        validate_task(ctx, "train_lora", dict(params, model=str(build_pixart(tmp_path / "p"))))
    assert error.value.field == "model"
    from engines.diffusion.loading import RuntimeOptions, load_pipeline, resolve_model
    from engines.training.lora_text import family

    refiner = load_pipeline(resolve_model(str(build_sdxl_refiner(tmp_path / "r"))), "cpu",
                            RuntimeOptions(half_precision=False))
    with pytest.raises(ParamError, match="an SDXL refiner"):
        family(refiner)
    with pytest.raises(ParamError, match="SDXL refiner|StableDiffusionXLImg2ImgPipeline"):
        validate_task(ctx, "train_lora", dict(params, model=str(tmp_path / "r")))
