"""The Upscale / Extras tab's handlers on the real runner and worker (no browser): an upload is
saved as the parent, a gallery image or a batch goes by id, bad input is a clear gr.Error, and
the tab builds inside the studio's Blocks."""
from __future__ import annotations

import gradio as gr
import pytest
from PIL import Image

from studio.ui import upscale as tab


@pytest.fixture
def ctx(studio):
    """The app's own wiring and worker (tests/wiring.py), under the name the handlers use."""
    return studio


def values(mode="Single image", path=None, parent=None, batch=None, upscaler="Lanczos",
           resize_by="Scale by", scale=2, width=64, height=32):
    return [mode, path, parent, batch, upscaler, "None", 0, resize_by, scale, width, height,
            True, 192]


def test_single_upload_is_saved_as_parent_and_upscaled(ctx, tmp_path):
    path = tmp_path / "photo.png"
    Image.new("RGB", (20, 30), (200, 40, 40)).save(path)
    updates = list(tab.run_upscale(ctx, *values(path=str(path), upscaler="R-ESRGAN AnimeVideo")))
    job, slider, results, status = updates[-1]
    assert job is None and "Saved 1 image(s)" in status
    item = ctx.gallery.get(int(results[0][1].lstrip("#")))
    assert (item.width, item.height) == (40, 60)
    assert ctx.gallery.get(item.parent_id).task == "upload" and slider[0].endswith(".png")


def test_batch_from_gallery_to_a_size(ctx):
    ids = [ctx.gallery.add_image(Image.new("RGB", (16, 16), c), task="txt2img", engine="x").id
           for c in ((0, 0, 0), (255, 255, 255))]
    params, saved = tab.request(ctx, *values(mode="Batch from gallery", batch=ids,
                                             resize_by="Scale to"))
    assert saved is None and params["image_ids"] == ids and params["width"] == 64
    *_, (_, _, results, status) = tab.run_upscale(ctx, *values(mode="Batch from gallery",
                                                               batch=ids, resize_by="Scale to"))
    items = [ctx.gallery.get(int(r[1].lstrip("#"))) for r in results]
    assert [(i.width, i.height, i.parent_id) for i in items] == [(64, 32, ids[0]), (64, 32, ids[1])]


def test_bad_input_is_a_clear_error_and_saves_nothing(ctx, tmp_path):
    with pytest.raises(gr.Error, match="Upload an image first"):
        next(tab.run_upscale(ctx, *values()))
    with pytest.raises(gr.Error, match="Choose one or more gallery images"):
        next(tab.run_upscale(ctx, *values(mode="Batch from gallery")))
    path = tmp_path / "tiny.png"
    Image.new("RGB", (4, 4)).save(path)
    with pytest.raises(gr.Error, match="at least 8x8"):
        next(tab.run_upscale(ctx, *values(path=str(path))))
    with pytest.raises(gr.Error, match="unknown `upscaler` 'Bogus'"):
        next(tab.run_upscale(ctx, *values(path=str(path), upscaler="Bogus")))
    assert ctx.gallery.query().total == 0


def test_tab_builds_in_the_studio_and_hires_panel_maps_to_the_task(ctx):
    from studio.app import build_ui

    demo = build_ui(ctx)
    assert any(getattr(b, "label", None) == tab.TITLE for b in demo.blocks.values())
    assert tab.hires_params({"prompt": "x"}, False, "Latent", 2, 0, 0.7, 0, 0) == \
        ("txt2img", {"prompt": "x"})
    task, params = tab.hires_params({"prompt": "x"}, True, "R-ESRGAN 4x+", 1.5, 4, 0.5, 0, 0)
    assert task == "hires" and params["hr_upscaler"] == "R-ESRGAN 4x+" and params["hr_scale"] == 1.5
    from studio.tasks import validate_task

    validate_task(ctx, task, params)
