"""Inpaint & outpaint tab: paint a mask over an image (gr.ImageEditor), repaint it, or grow the
image on chosen sides. Thin: builds task params and runs them as a job through
`studio.ui.widgets` (the runner).

The receiver "image" is a hidden gr.Image that takes a file path (what "send to" buttons give);
on change it loads the editor and remembers which gallery item the image came from, so results
get that item as their parent.
"""
from __future__ import annotations

import hashlib
from functools import partial
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from studio.ui import controlnet_panel
from studio.ui.add_to_queue import add_job
from studio.ui.reuse import diffusion_item, item_values
from studio.ui.widgets import (DEFAULT_MODEL, PRIVATE, wire_cancel, connect_send_buttons,
                               item_for_path, model_defaults, model_dropdown, results_panel,
                               run_strip, sampling_panel, selected_item, stream_images)

TAB_ID = "inpaint"
TITLE = "Inpaint & outpaint"
FILLS = ["original", "fill", "latent noise", "latent nothing"]
SETTINGS = ("source_id", "prompt", "negative", "steps", "cfg", "scheduler", "seed", "strength",
            "mask_blur", "fill", "only_masked", "padding", "batch_size", "model", "sides", "pixels",
            "clip_skip")
# what "Reuse parameters" fills (the editor keeps its image and mask); the item's task param
# names for the tab's own mask and outpaint controls
APPLIED = ("prompt", "negative", "steps", "cfg", "scheduler", "seed", "strength", "model",
           "clip_skip", "mask_blur", "fill", "only_masked", "padding", "sides", "pixels")
MASK_PARAMS = {"mask_blur": "mask_blur", "fill": "inpainting_fill",
               "only_masked": "inpaint_full_res", "padding": "inpaint_full_res_padding",
               "sides": "sides", "pixels": "pixels"}


def _open_upload(path) -> Image.Image:
    """An uploaded file: size checked from its header, five formats only (studio/images.py)."""
    from studio.images import open_user_image

    try:
        return open_user_image(path, name="image")
    except ValueError as error:
        raise gr.Error(str(error)) from None


def editor_image_and_mask(value) -> tuple[Image.Image, Image.Image]:
    """(background RGB, mask L) from the editor: the mask is every painted pixel of any layer."""
    if not value or value.get("background") is None:
        raise gr.Error("Upload an image or send one here first.")
    background = value["background"]
    if not isinstance(background, Image.Image):
        background = _open_upload(background)
    background = background.convert("RGB")
    painted = np.zeros((background.height, background.width), dtype=bool)
    for layer in value.get("layers") or []:
        if not isinstance(layer, Image.Image):
            layer = _open_upload(layer)
        layer = layer.convert("RGBA")
        if layer.size != background.size:
            layer = layer.resize(background.size, Image.NEAREST)
        painted |= np.asarray(layer.getchannel("A")) > 0
    return background, Image.fromarray(painted.astype(np.uint8) * 255)


def pixel_digest(image: Image.Image) -> str:
    rgb = image.convert("RGB")
    return hashlib.sha256(f"{rgb.size}".encode() + rgb.tobytes()).hexdigest()


def _params(action, value, source, prompt, negative, steps, cfg, scheduler, seed, strength,
            mask_blur, fill, only_masked, padding, batch_size, model, sides, pixels, clip_skip=1):
    image, mask = editor_image_and_mask(value)
    params: dict[str, Any] = {
        "prompt": prompt or "", "negative_prompt": negative or "", "steps": int(steps),
        "guidance_scale": float(cfg), "scheduler": scheduler,
        "seed": int(seed if seed is not None else -1), "strength": float(strength),
        "mask_blur": int(mask_blur), "inpainting_fill": fill, "batch_size": int(batch_size)}
    if model and model != DEFAULT_MODEL:
        params["model"] = model
    if int(clip_skip or 1) > 1:  # A1111's "Clip skip", as the txt2img tab sends it
        params["clip_skip"] = int(clip_skip)
    # The editor's background is the gallery item it came from only if its pixels still match
    # (a later upload replaces the background without telling us).
    if source and source.get("digest") == pixel_digest(image):
        params["init_image_id"] = int(source["id"])
    else:  # stored once, as a gallery upload the job refers to (studio/uploads.py)
        params["init_image"] = image  # (the mask too, outside the gallery: studio/uploads.py)
    if action == "outpaint":
        if not sides:
            raise gr.Error("Choose at least one side to extend.")
        # New border pixels have no "original" content to start from: fill them instead.
        if params["inpainting_fill"] == "original":
            params["inpainting_fill"] = "fill"
        params.update(sides=list(sides), pixels=int(pixels))
        return "outpaint", params
    if not np.asarray(mask).any():
        raise gr.Error("Paint the area to repaint first (the mask is empty).")
    params.update(mask=mask, inpaint_full_res=bool(only_masked),
                  inpaint_full_res_padding=int(padding))
    return "inpaint", params


# ------------------------------------------------------------------ handlers
def _task(ctx, action: str, value, values) -> tuple[str, dict]:
    """The tab's controls, then the ControlNet units (controlnet_panel.py, last inputs)."""
    settings, units = controlnet_panel.split(values)
    return controlnet_panel.add_units(ctx, *_params(action, value, *settings), units)


def generate(ctx, action: str, value, *values):
    yield from stream_images(ctx, *_task(ctx, action, value, values))


def add_to_queue(ctx, value, *values) -> str:
    return add_job(ctx, *_task(ctx, "inpaint", value, values))


def arrived(ctx, path):
    """A file sent here: load the editor and remember its gallery item (with its pixels)."""
    if not path:
        return gr.skip(), gr.skip()
    item_id = item_for_path(ctx, path)
    with Image.open(path) as image:
        source = {"id": item_id, "digest": pixel_digest(image)} if item_id else None
    return path, source


def model_cfg(name):
    """A model picked by hand moves CFG to what that model works best with."""
    return model_defaults(name)[0]


def open_item(ctx, item_id):
    try:
        item = ctx.gallery.get(int(item_id))
    except (LookupError, TypeError, ValueError):
        raise gr.Error(f"No gallery item #{item_id}.")
    if item.file_path is None:
        raise gr.Error(f"Item #{item.id} is text, not an image.")
    return str(item.file_path)


def reuse(ctx, item_ids, index) -> tuple:
    """"Reuse parameters": the chosen result's prompt, sampling and mask settings. A mask or
    outpaint setting the item lacks (an inpaint has no sides, an outpaint no padding) stays."""
    item = diffusion_item(ctx, selected_item(item_ids, index))
    values = item_values(item)
    for control, name in MASK_PARAMS.items():
        values[control] = item.params.get(name, gr.skip())
    return tuple(values[name] for name in APPLIED)


def edit_result(ctx, item_ids, index):
    return str(ctx.gallery.get(selected_item(item_ids, index)).file_path)


# ------------------------------------------------------------------ layout
def _controls(ctx) -> dict[str, Any]:
    c: dict[str, Any] = {}
    with gr.Row():
        with gr.Column(scale=3):
            c["editor"] = gr.ImageEditor(
                type="pil", image_mode="RGBA", label="Image: paint the area to repaint",
                brush=gr.Brush(colors=["#ffffff"], color_mode="fixed", default_size=8),
                sources=["upload", "clipboard"], height=420, elem_id="inpaint-editor")
            c["prompt"] = gr.Textbox(label="Prompt", lines=2, elem_id="inpaint-prompt")
            c["negative"] = gr.Textbox(label="Negative prompt", lines=1)
        with gr.Column(scale=2):
            c["run"], c["cancel"], c["add_queue"] = run_strip("inpaint", "Inpaint", "inpaint-run")
            c["panel"] = results_panel("inpaint", ("img2img", "style", "queue"),
                                       extra=("Edit this result", "Reuse parameters"))
            with gr.Row():
                c["open_id"] = gr.Number(label="Open gallery item #", precision=0, scale=2)
                c["open"] = gr.Button("Open from gallery", size="sm", scale=1)
    c.update(sampling_panel("inpaint", size=False))
    with gr.Row():
        c["batch_size"] = gr.Slider(1, 8, value=1, step=1, label="Batch size")
        c["strength"] = gr.Slider(0.05, 1.0, value=0.75, step=0.05, label="Denoising strength")
        c["mask_blur"] = gr.Slider(0, 64, value=4, step=1, label="Mask blur (inside the mask)")
    with gr.Row():
        c["fill"] = gr.Radio(FILLS, value="original", label="Masked content")
        c["only_masked"] = gr.Checkbox(label="Only masked (work on the mask's box)", value=False)
        c["padding"] = gr.Slider(0, 256, value=32, step=4, label="Only masked padding")
    c["model"] = model_dropdown(ctx, "inpaint-model")
    c["clip_skip"] = gr.Slider(1, 12, value=1, step=1, elem_id="inpaint-clip-skip",
                               label="Clip skip (A1111: the prompt from CLIP's Nth layer from the "
                                     "end; SD 1.x models)")
    c["controlnet"] = controlnet_panel.build(ctx, "inpaint")
    with gr.Accordion("Outpaint", open=True):
        with gr.Row():
            c["sides"] = gr.CheckboxGroup(["left", "right", "up", "down"], value=["right"],
                                          label="Extend sides")
            c["pixels"] = gr.Slider(8, 512, value=32, step=8, label="Pixels per side")
            c["run_outpaint"] = gr.Button("Outpaint", variant="primary", elem_id="outpaint-run")
    return c


def build(ctx) -> dict[str, Any]:
    receiver = gr.Image(type="filepath", visible=False, elem_id="inpaint-receiver")
    c = _controls(ctx)
    c["source_id"] = gr.State(None)
    panel = c["panel"]
    inputs = [c["editor"]] + [c[name] for name in SETTINGS] + c["controlnet"]
    c["run"].click(partial(generate, ctx, "inpaint"), inputs, panel.outputs,
                   concurrency_limit=None, **PRIVATE)
    c["run_outpaint"].click(partial(generate, ctx, "outpaint"), inputs, panel.outputs,
                            concurrency_limit=None, **PRIVATE)
    wire_cancel(ctx, c["cancel"], panel.job)
    c["add_queue"].click(partial(add_to_queue, ctx), inputs, panel.status, **PRIVATE)
    c["model"].input(model_cfg, c["model"], c["cfg"], **PRIVATE)
    receiver.change(partial(arrived, ctx), receiver, [c["editor"], c["source_id"]], **PRIVATE)
    c["open"].click(partial(open_item, ctx), c["open_id"], receiver, **PRIVATE)
    panel.extra["Edit this result"].click(partial(edit_result, ctx), [panel.ids, panel.chosen],
                                          receiver, **PRIVATE)
    reuse_button = panel.extra["Reuse parameters"]
    reuse_button.click(partial(reuse, ctx), [panel.ids, panel.chosen],
                       [c[name] for name in APPLIED], **PRIVATE)
    # the item's ControlNet units back into the panel, as in Text to image
    controlnet_panel.wire_fill(ctx, reuse_button, [panel.ids, panel.chosen], c["controlnet"])
    return {"image": receiver, "prompt": c["prompt"], "_panel": panel}


def wire(ctx, tabs, handles: dict) -> None:
    connect_send_buttons(ctx, tabs, handles, TAB_ID)
