"""The "train_lora" task on the embedded model: live loss and sample previews, cancel keeps a
checkpoint that the next run resumes from, the result is a kohya-layout LoRA in models/Lora
that the engine (by tag) and plain diffusers' load_lora_weights both apply."""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from engines.base import CancelToken, Cancelled, ParamError
from studio.tasks import get_task, run_task, validate_task


def _b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def rings(n: int) -> list[Image.Image]:
    out = []
    for i in range(n):
        image = Image.new("RGB", (64, 64), (30, 30, 30))
        draw = ImageDraw.Draw(image)
        x = 18 + 5 * i
        draw.ellipse([x - 14, 18, x + 14, 46], fill=(230, 40, 40))
        draw.ellipse([x - 7, 25, x + 7, 39], fill=(30, 30, 30))
        out.append(image)
    return out


def params(ctx, **extra) -> dict:
    uploaded = [ctx.gallery.add_image(im, task="upload", engine="", prompt="ring").id
                for im in rings(3)]
    return {"name": "ringy", "trigger": "gsring", "image_ids": uploaded,
            "images": [_b64(im) for im in rings(2)], "steps": 8, "rank": 4, "batch": 2,
            "captions": [f"a red gsring {k}" for k in ("one", "two", "three")] + ["a ring", ""],
            "prior_images": 2, "trigger_vectors": 1,
            **extra}


def test_validation_names_the_field(ctx):
    assert get_task("train_lora").lane == "training"
    good = params(ctx)
    for change, field in (({"images": []}, "images"), ({"trigger": " "}, "trigger"),
                          ({"rank": 0}, "rank"), ({"name": "../x"}, "name"),
                          ({"captions": ["a"]}, "captions"), ({"lr": 5.0}, "lr")):
        with pytest.raises(ParamError) as error:
            validate_task(ctx, "train_lora", dict(good, **change))
        assert error.value.field == field


def test_train_cancel_resume_and_use(ctx):
    # 1. Cancel after step 3: the checkpoint stays.
    token, messages, previews = CancelToken(), [], []

    def stop_at_3(progress):
        messages.append(progress.message)
        if progress.step == 3:
            token.cancel()

    with pytest.raises(Cancelled):
        run_task(ctx, "train_lora", params(ctx), stop_at_3, token)
    run_dir = ctx.config.models_dir / "Lora" / ".runs" / "ringy"
    assert (run_dir / "checkpoint.pt").exists()
    assert "loss" in messages[-1]

    # 2. Again: it resumes at step 3, reports loss and sample grids, writes the LoRA.
    def watch(progress):
        messages.append(progress.message)
        if progress.preview is not None:
            previews.append(progress.preview)

    result = run_task(ctx, "train_lora", params(ctx), watch)
    assert result.info["resumed_from"] == 3 and result.info["steps"] == 8
    assert previews and previews[-1].width >= 64
    target = ctx.config.models_dir / "Lora" / "ringy.safetensors"
    assert target.exists() and not run_dir.exists() and result.item_ids
    assert (target.with_suffix(".json")).exists()
    assert (ctx.config.models_dir / "embeddings" / "gsring.safetensors").exists()  # pivotal tuning

    # 3. kohya/A1111 keys, and the engine applies it by tag.
    from safetensors import safe_open

    with safe_open(str(target), "pt") as handle:
        keys = list(handle.keys())
        assert handle.metadata()["modelspec.trigger_phrase"] == "gsring"
    assert keys and all(k.startswith("lora_unet_") for k in keys)
    assert any(k.endswith(".lora_down.weight") for k in keys) and any(k.endswith(".alpha") for k in keys)
    base = dict(prompt="a red gsring", steps=3, seed=1, guidance_scale=2.0)
    plain = np.asarray(run_task(ctx, "txt2img", base).images[0])
    tagged = np.asarray(run_task(ctx, "txt2img", dict(base, prompt="a red gsring <lora:ringy:1>"))
                        .images[0])
    assert not np.array_equal(plain, tagged)
    with pytest.raises(ParamError, match="exists already"):
        validate_task(ctx, "train_lora", params(ctx))

    # 4. Plain diffusers loads the same file.
    import torch
    from diffusers import StableDiffusionPipeline

    from engines.diffusion.loading import ALIASES, DEFAULT_MODEL

    pipe = StableDiffusionPipeline.from_pretrained(ALIASES[DEFAULT_MODEL], safety_checker=None,
                                                   requires_safety_checker=False)
    kwargs = dict(num_inference_steps=2, guidance_scale=2.0, output_type="np")
    before = pipe("a red gsring", generator=torch.Generator().manual_seed(0), **kwargs).images
    pipe.load_lora_weights(str(target))
    after = pipe("a red gsring", generator=torch.Generator().manual_seed(0), **kwargs).images
    assert not np.allclose(before, after)
