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


def unit_values(enabled=True, image=None, module="canny", model="tiny-canny",
                control_mode="Balanced") -> list:
    first = [enabled, image, module, model, 1.0, 0.0, 1.0, "Crop and Resize", True, control_mode]
    return first + [False, None, "canny", model, 1.0, 0.0, 1.0, "Crop and Resize", True,
                    "Balanced"]


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


def test_reuse_parameters_fills_the_panel_from_the_item(ctx, picture, tmp_path):
    """"Reuse parameters": the panel gets the item's units back (image included), and what it
    then sends is the same unit, so the same seed gives the same pixels."""
    values = unit_values(image=picture, control_mode="My prompt is more important")
    values[4:9] = [0.7, 0.1, 0.8, "Just Resize", False]  # weight, start, end, resize, perfect
    task, params = panel.add_units(ctx, "txt2img", {"prompt": "a red star", "steps": 3,
                                                    "seed": 4}, values)
    *_, (_, status, _, _, ids) = stream_images(ctx, task, params)
    item = ctx.gallery.get(ids[0])
    assert "Control Mode: My prompt is more important" in read_png_metadata(
        str(item.file_path))["parsed"]["ControlNet 0"]
    filled = panel.item_units(ctx, item.id)
    n = len(panel.FIELDS)
    first = dict(zip(panel.FIELDS, filled[:n]))
    assert first["enabled"] is True and first["module"] == "canny"
    assert first["model"] == "tiny-canny" and first["control_mode"] == "My prompt is more important"
    assert [first[f] for f in ("weight", "guidance_start", "guidance_end", "resize_mode",
                               "pixel_perfect")] == [0.7, 0.1, 0.8, "Just Resize", False]
    assert np.array_equal(np.asarray(first["image"].convert("RGB")),
                          np.asarray(Image.open(picture).convert("RGB")))
    assert filled[n] is False  # unit 1: the item had one unit
    # The filled panel sends the same unit again (the image as Gradio hands it back: a file).
    first["image"].save(tmp_path / "back.png")
    again = [first[f] for f in panel.FIELDS] + filled[n:]
    again[1] = str(tmp_path / "back.png")
    again[n + 1:] = values[n + 1:]
    _, params_again = panel.add_units(ctx, "txt2img", {"prompt": "a red star", "steps": 3,
                                                       "seed": 4}, again)
    assert params_again["controlnet"] == params["controlnet"]
    # An item without units turns the panel's units off; an unknown item changes nothing.
    plain = ctx.gallery.add_image(Image.open(picture), task="txt2img", engine="diffusion",
                                  prompt="no units", params={"steps": 3})
    assert [panel.item_units(ctx, plain.id)[i * n] for i in range(panel.UNITS)] == [False] * 2
    skipped = panel.item_units(ctx, 99999)
    assert len(skipped) == panel.CONTROL_INPUTS and all(v == gr.skip() for v in skipped)


def test_reuse_button_is_wired_to_the_panel(ctx):
    with gr.Blocks() as demo:
        inputs = panel.build(ctx, "test")
        button, item = gr.Button("Reuse"), gr.Number()
        panel.wire_fill(ctx, button, [item], inputs)
    fills = [d for d in demo.config["dependencies"]
             if d["targets"][0][0] == button._id]
    assert len(fills) == 1 and fills[0]["outputs"] == [c._id for c in inputs]


def test_txt2img_reuse_and_open_fill_the_panel(ctx):
    from studio.app import build_ui

    demo = build_ui(ctx)
    ids = {getattr(b, "elem_id", None): i for i, b in demo.blocks.items()}
    mode = ids["txt2img-cn0-control-mode"]
    buttons = {getattr(demo.blocks[d["targets"][0][0]], "value", None)
               for d in demo.config["dependencies"] if mode in d["outputs"]}
    assert {"Reuse parameters", "Open from gallery"} <= buttons
