"""The ControlNet accordion's handlers on the real runner and worker (no browser): the preview
shows the preprocessed map, enabled units become the task's `controlnet` list with the image
stored once as an upload, a generation records them, bad input is a clear gr.Error."""
from __future__ import annotations

from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from PIL import Image, ImageDraw

from studio.gallery.pnginfo import read_png_metadata
from studio.ui import controlnet_panel as panel
from studio.ui.widgets import stream_images

from controlnet_files import controlnet_from_unet


@pytest.fixture
def ctx(studio):
    """The app's own wiring (tests/wiring.py) with a ControlNet in models/ControlNet."""
    from diffusers import UNet2DConditionModel

    from engines.diffusion.loading import ALIASES, DEFAULT_MODEL

    unet = UNet2DConditionModel.from_pretrained(ALIASES[DEFAULT_MODEL] / "unet")
    levels = len(unet.config.block_out_channels)
    controlnet_from_unet(unet, conditioning_embedding_out_channels=(16, 32, 96, 256)[:levels]) \
        .save_pretrained(Path(studio.config.models_dir) / "ControlNet" / "tiny-canny")
    return studio


@pytest.fixture
def picture(tmp_path) -> str:
    image = Image.new("RGB", (64, 64))
    ImageDraw.Draw(image).rectangle((10, 10, 40, 40), fill="white")
    path = tmp_path / "control.png"
    image.save(path)
    return str(path)


def unit_values(enabled=True, image=None, module="canny", model="tiny-canny") -> list:
    first = [enabled, image, module, model, 1.0, 0.0, 1.0, "Crop and Resize", True]
    return first + [False, None, "canny", model, 1.0, 0.0, 1.0, "Crop and Resize", True]


def test_panel_builds_with_the_folder_models(ctx):
    with gr.Blocks():
        inputs = panel.build(ctx, "test")
    assert len(inputs) == panel.CONTROL_INPUTS
    assert "tiny-canny" in [c[0] for c in inputs[panel.FIELDS.index("model")].choices]


def test_preview_map_shows_the_edges(picture):
    edges = np.asarray(panel.preview_map(picture, "canny", True))
    assert edges.shape == (64, 64, 3) and edges[20, 25].max() == 0 and edges[8:13, 25].max() == 255
    assert panel.preview_map(picture, "invert", True).getpixel((0, 0)) == (255, 255, 255)
    with pytest.raises(gr.Error, match="Upload a control image"):
        panel.preview_map(None, "canny", True)
    with pytest.raises(gr.Error, match="unknown ControlNet module 'mlsd'"):
        panel.preview_map(picture, "mlsd", True)


def test_units_become_params_and_a_generation_records_them(ctx, picture):
    task, params = panel.add_units(ctx, "txt2img", {"prompt": "a red star", "steps": 3,
                                                    "seed": 4}, unit_values(image=picture))
    unit = params["controlnet"][0]
    assert task == "txt2img" and len(params["controlnet"]) == 1  # the disabled unit is left out
    assert unit["image"].startswith("upload:") and unit["pixel_perfect"] is True
    *_, (job, status, _, shown, ids) = stream_images(ctx, task, params)
    assert job is None and "Saved 1 image(s)" in status
    item = ctx.gallery.get(ids[0])
    parsed = read_png_metadata(str(item.file_path))["parsed"]
    assert parsed["ControlNet 0"].startswith("Module: canny, Model: tiny-canny [")
    assert "Pixel Perfect: True" in parsed["ControlNet 0"]
    assert item.params["controlnet"][0]["image"] == unit["image"]  # the upload id, no pixels
    assert panel.add_units(ctx, "txt2img", {"prompt": "x"}, unit_values(enabled=False)) == (
        "txt2img", {"prompt": "x"})


def test_missing_image_or_model_is_a_clear_error(ctx, picture):
    with pytest.raises(gr.Error, match="ControlNet unit 0: upload a control image"):
        panel.add_units(ctx, "txt2img", {"prompt": "x"}, unit_values())
    with pytest.raises(gr.Error, match="choose a model"):
        panel.add_units(ctx, "txt2img", {"prompt": "x"}, unit_values(image=picture, model=None))
    task, params = panel.add_units(ctx, "txt2img", {"prompt": "x"},
                                   unit_values(image=picture, module="hed"))
    with pytest.raises(gr.Error, match="unknown ControlNet module 'hed'"):
        next(stream_images(ctx, task, params))
