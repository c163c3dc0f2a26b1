"""Upscale and hires-fix tasks: results land in the gallery as children of their source, hires
fix doubles the size and records itself as A1111 does, bad input gets clear errors."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from engines.base import ParamError
from studio.gallery.pnginfo import parse_infotext, read_png_metadata
from studio.tasks import run_task, validate_task
from studio.tasks.image import encode_image


def photo(side: int = 48) -> Image.Image:
    from skimage import data

    return Image.fromarray(data.astronaut()).resize((side, side), Image.BICUBIC)


@pytest.fixture
def source_item(ctx):
    """A generated-looking gallery item with A1111 parameters."""
    return ctx.gallery.add_image(photo(), task="txt2img", engine="diffusion", prompt="an astronaut",
                                 negative_prompt="blurry", params={"steps": 4}, seed=3,
                                 infotext="an astronaut\nNegative prompt: blurry\nSteps: 4, "
                                          "Sampler: Euler, CFG scale: 2, Seed: 3, Size: 48x48")


def test_upscale_gallery_item_is_a_child_with_postprocess_infotext(ctx, source_item):
    result = run_task(ctx, "upscale", {"image_id": source_item.id, "scale": 2,
                                       "upscaler": "R-ESRGAN AnimeVideo"})
    item = ctx.gallery.get(result.item_ids[0])
    assert item.parent_id == source_item.id and (item.width, item.height) == (96, 96)
    assert item.prompt == "an astronaut" and item.task == "upscale"
    parsed = parse_infotext(read_png_metadata(item.file_path.read_bytes())["parameters"])
    assert parsed["Seed"] == "3" and parsed["Postprocess upscale by"] == "2.0"
    assert parsed["Postprocess upscaler"] == "R-ESRGAN AnimeVideo"
    assert [c.id for c in ctx.gallery.children(source_item.id)] == result.item_ids


def test_batch_of_uploads_saves_each_upload_as_the_parent(ctx):
    uploads = [encode_image(photo(32)), encode_image(photo(40).convert("RGBA"))]
    result = run_task(ctx, "upscale", {"images": uploads, "upscaler": "Lanczos",
                                       "scale": 3, "upscaler_2": "Nearest",
                                       "upscaler_2_visibility": 0.25})
    items = [ctx.gallery.get(i) for i in result.item_ids]
    assert [(i.width, i.height) for i in items] == [(96, 96), (120, 120)]
    parents = [ctx.gallery.get(i.parent_id) for i in items]
    assert all(p.task == "upload" for p in parents)
    assert np.asarray(ctx.gallery.open_image(parents[0].id).convert("RGB")).shape == (32, 32, 3)
    assert items[0].params["upscaler_2"] == "Nearest"


@pytest.mark.parametrize("params,field,message", [
    ({"upscaler": "ESRGAN_9x", "image": "x"}, "image", "base64"),
    ({"upscaler": "ESRGAN_9x"}, "upscaler", "unknown `upscaler` 'ESRGAN_9x'"),
    ({"image_id": 999}, "image_id", "no gallery item with id 999"),
    ({"image": encode_image(Image.new("RGB", (4, 4)))}, "image", "at least 8x8"),
    ({"images": []}, "images", "list of 1 to 64"),
    ({"scale": 20}, "scale", "between 1.0 and 8.0"),
    ({"upscaler_2": "nope"}, "upscaler_2", "unknown `upscaler_2`"),
])
def test_bad_requests_name_the_field(ctx, source_item, params, field, message):
    request = {"image_id": source_item.id, **params} if "image" not in params and \
        "images" not in params and "image_id" not in params else params
    with pytest.raises(ValueError, match=message) as caught:
        validate_task(ctx, "upscale", request)
    if isinstance(caught.value, ParamError):
        assert caught.value.field == field


def test_nothing_is_saved_when_the_upscaler_fails(ctx, tmp_path):
    broken = ctx.config.models_dir / "ESRGAN"
    broken.mkdir(parents=True)
    (broken / "4x_broken.pth").write_bytes(b"not a checkpoint")
    before = ctx.gallery.query().total
    with pytest.raises(Exception, match="cannot read upscaler"):
        run_task(ctx, "upscale", {"image": encode_image(photo(16)), "upscaler": "4x_broken"})
    assert ctx.gallery.query().total == before


@pytest.mark.slow
@pytest.mark.parametrize("upscaler", ["Latent", "R-ESRGAN AnimeVideo"])
def test_hires_fix_doubles_the_size_and_records_itself(ctx, upscaler):
    progress = []
    result = run_task(ctx, "hires", {
        "prompt": "a red star on a blue background", "steps": 6, "seed": 7, "guidance_scale": 2,
        "enable_hr": True, "hr_scale": 2, "hr_upscaler": upscaler, "hr_second_pass_steps": 3,
        "denoising_strength": 0.5}, on_progress=progress.append)
    item = ctx.gallery.get(result.item_ids[0])
    assert (item.width, item.height) == (128, 128) and item.task == "hires"
    text = read_png_metadata(item.file_path.read_bytes())["parameters"]
    parsed = parse_infotext(text)
    assert parsed["Size"] == "64x64"  # the first pass, as A1111 records it
    assert parsed["Hires upscale"] == "2" and parsed["Hires steps"] == "3"
    assert parsed["Hires upscaler"] == upscaler and parsed["Denoising strength"] == "0.5"
    assert text.index("Hires upscaler") < text.index("Version")
    assert progress[-1].step <= progress[-1].total == 3000
    assert any("second pass" in p.message for p in progress)
    # The second pass really re-drew the image: not just the upscaled first pass.
    plain = run_task(ctx, "txt2img", {"prompt": "a red star on a blue background", "steps": 6,
                                      "seed": 7, "guidance_scale": 2}).images[0]
    resized = np.asarray(plain.resize((128, 128), Image.LANCZOS), dtype=np.float64)
    assert np.abs(np.asarray(result.images[0], dtype=np.float64) - resized).mean() > 1


def test_hires_resize_and_validation(ctx):
    from studio.tasks.hires import target_size

    assert target_size(64, 64, 2, 0, 0) == (128, 128, 128, 128)
    assert target_size(64, 32, 2, 200, 0) == (200, 96, 200, 96)
    assert target_size(64, 64, 2, 160, 96) == (160, 160, 160, 96)  # cover, then crop
    with pytest.raises(ValueError, match="unknown `hr_upscaler` 'Bogus'"):
        validate_task(ctx, "hires", {"prompt": "x", "hr_upscaler": "Bogus"})
    with pytest.raises(ParamError) as caught:
        validate_task(ctx, "hires", {"prompt": "x", "hr_scale": 9})
    assert caught.value.field == "hr_scale"
    with pytest.raises(ParamError) as caught:
        validate_task(ctx, "hires", {"prompt": "x", "width": 1024, "height": 1024, "hr_scale": 4})
    assert caught.value.field == "width"  # 4096x4096 is over the engine's pixel budget


def test_cancel_between_tiles_writes_nothing(ctx):
    from engines.base import CancelToken, Cancelled

    token = CancelToken()
    seen = []

    def on_progress(progress):
        seen.append(progress)
        token.cancel()  # after the first tile

    with pytest.raises(Cancelled):
        run_task(ctx, "upscale", {"image": encode_image(photo(96)), "tile": 48,
                                  "upscaler": "R-ESRGAN AnimeVideo"}, on_progress, token)
    assert len(seen) == 1 and "tile 1/" in seen[0].message
    assert ctx.gallery.query().total == 0  # neither the result nor the upload
