"""Inpaint & outpaint tab: paint a mask over an image (gr.ImageEditor), repaint it, or grow the
image on chosen sides. Thin: builds task params and calls studio.tasks through the helpers of
the Text to image tab.

The receiver "image" is a hidden gr.Image that takes a file path (what "send to" buttons give);
on change it loads the editor and remembers which gallery item the image came from, so results
get that item as their parent.
"""
from __future__ import annotations

from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from studio.tasks.image import encode_image
from studio.ui.txt2img import (DEFAULT_MODEL, SCHEDULER_NAMES, cancel_running, connect_send_buttons,
                               enqueue, item_for_path, model_choices, model_defaults, on_select,
                               stream_task)

TAB_ID = "inpaint"
TITLE = "Inpaint & outpaint"
FILLS = ["original", "fill", "latent noise", "latent nothing"]


def editor_image_and_mask(value) -> tuple[Image.Image, Image.Image]:
    """(background RGB, mask L) from the editor: the mask is every painted pixel of any layer."""
    if not value or value.get("background") is None:
        raise gr.Error("Upload an image or send one here first.")
    background = value["background"]
    if not isinstance(background, Image.Image):
        background = Image.open(background)
    background = background.convert("RGB")
    painted = np.zeros((background.height, background.width), dtype=bool)
    for layer in value.get("layers") or []:
        if not isinstance(layer, Image.Image):
            layer = Image.open(layer)
        layer = layer.convert("RGBA")
        if layer.size != background.size:
            layer = layer.resize(background.size, Image.NEAREST)
        painted |= np.asarray(layer.getchannel("A")) > 0
    return background, Image.fromarray(painted.astype(np.uint8) * 255)


def pixel_digest(image: Image.Image) -> str:
    import hashlib

    rgb = image.convert("RGB")
    return hashlib.sha256(f"{rgb.size}".encode() + rgb.tobytes()).hexdigest()


def _params(action, value, source, prompt, negative, steps, cfg, scheduler, seed, strength,
            mask_blur, fill, only_masked, padding, batch_size, model, sides, pixels):
    image, mask = editor_image_and_mask(value)
    params: dict[str, Any] = {
        "prompt": prompt or "", "negative_prompt": negative or "", "steps": int(steps),
        "guidance_scale": float(cfg), "scheduler": scheduler,
        "seed": int(seed if seed is not None else -1), "strength": float(strength),
        "mask_blur": int(mask_blur), "inpainting_fill": fill, "batch_size": int(batch_size)}
    if model and model != DEFAULT_MODEL:
        params["model"] = model
    # The editor's background is the gallery item it came from only if its pixels still match
    # (a later upload replaces the background without telling us).
    if source and source.get("digest") == pixel_digest(image):
        params["init_image_id"] = int(source["id"])
    else:
        params["init_image"] = encode_image(image)
    if action == "outpaint":
        if not sides:
            raise gr.Error("Choose at least one side to extend.")
        params.update(sides=list(sides), pixels=int(pixels))
        return "outpaint", params
    if not np.asarray(mask).any():
        raise gr.Error("Paint the area to repaint first (the mask is empty).")
    params.update(mask=encode_image(mask), inpaint_full_res=bool(only_masked),
                  inpaint_full_res_padding=int(padding))
    return "inpaint", params


def build(ctx) -> dict[str, Any]:
    ids = gr.State([])
    chosen = gr.State(None)
    source_id = gr.State(None)
    receiver = gr.Image(type="filepath", visible=False, elem_id="inpaint-receiver")
    with gr.Row():
        with gr.Column(scale=3):
            editor = gr.ImageEditor(
                type="pil", image_mode="RGBA", label="Image: paint the area to repaint",
                brush=gr.Brush(colors=["#ffffff"], color_mode="fixed", default_size=8),
                sources=["upload", "clipboard"], height=420, elem_id="inpaint-editor")
            prompt = gr.Textbox(label="Prompt", lines=2, elem_id="inpaint-prompt")
            negative = gr.Textbox(label="Negative prompt", lines=1)
        with gr.Column(scale=2):
            with gr.Row():
                run_inpaint = gr.Button("Inpaint", variant="primary", elem_id="inpaint-run")
                cancel = gr.Button("Cancel", variant="stop", elem_id="inpaint-cancel")
                add_queue = gr.Button("Add to queue", elem_id="inpaint-queue")
            status = gr.HTML(elem_id="inpaint-status")
            preview = gr.Image(label="Preview", interactive=False, height=160)
            results = gr.Gallery(label="Results", columns=4, height=220, elem_id="inpaint-results")
            with gr.Row():
                again = gr.Button("Edit this result", size="sm")
                to_img2img = gr.Button("Send to img2img", size="sm")
                to_style = gr.Button("Send to style transfer", size="sm")
                to_queue = gr.Button("Send prompt to queue", size="sm")
            with gr.Row():
                open_id = gr.Number(label="Open gallery item #", precision=0, scale=2)
                open_button = gr.Button("Open from gallery", size="sm", scale=1)
    with gr.Row():
        steps = gr.Slider(1, 150, value=20, step=1, label="Steps")
        cfg = gr.Slider(0, 30, value=model_defaults(DEFAULT_MODEL)[0], step=0.5, label="CFG scale")
        scheduler = gr.Dropdown(SCHEDULER_NAMES, value="DPM++ 2M", label="Sampler")
        seed = gr.Number(value=-1, precision=0, label="Seed (-1 = random)")
        batch_size = gr.Slider(1, 8, value=1, step=1, label="Batch size")
    with gr.Row():
        strength = gr.Slider(0.05, 1.0, value=0.75, step=0.05, label="Denoising strength")
        mask_blur = gr.Slider(0, 64, value=4, step=1, label="Mask blur (inside the mask)")
        fill = gr.Radio(FILLS, value="original", label="Masked content")
        only_masked = gr.Checkbox(label="Only masked (work on the mask's box)", value=False)
        padding = gr.Slider(0, 256, value=32, step=4, label="Only masked padding")
    model = gr.Dropdown(model_choices(ctx), value=DEFAULT_MODEL, label="Model",
                        allow_custom_value=True, elem_id="inpaint-model")
    with gr.Accordion("Outpaint", open=True):
        with gr.Row():
            sides = gr.CheckboxGroup(["left", "right", "up", "down"], value=["right"],
                                     label="Extend sides")
            pixels = gr.Slider(8, 512, value=32, step=8, label="Pixels per side")
            run_outpaint = gr.Button("Outpaint", variant="primary", elem_id="outpaint-run")

    model.input(lambda name: model_defaults(name)[0], model, cfg)

    settings = [source_id, prompt, negative, steps, cfg, scheduler, seed, strength, mask_blur,
                fill, only_masked, padding, batch_size, model, sides, pixels]

    def runner(action):
        def run(request: gr.Request, value, *values):  # the request goes first, by type
            task, params = _params(action, value, *values)
            if action == "outpaint":
                params["inpainting_fill"] = "fill" if params["inpainting_fill"] == "original" \
                    else params["inpainting_fill"]
            yield from stream_task(ctx, task, params, request)
        return run

    outputs = [status, preview, results, ids]
    run_inpaint.click(runner("inpaint"), [editor] + settings, outputs, concurrency_limit=4)
    run_outpaint.click(runner("outpaint"), [editor] + settings, outputs, concurrency_limit=4)
    cancel.click(cancel_running, None, status)
    add_queue.click(lambda v, *s: enqueue(ctx, *_params("inpaint", v, *s)),
                    [editor] + settings, status)
    results.select(on_select, None, chosen)

    def arrived(path):
        if not path:
            return gr.skip(), gr.skip()
        item_id = item_for_path(ctx, path)
        with Image.open(path) as image:
            source = {"id": item_id, "digest": pixel_digest(image)} if item_id else None
        return path, source

    receiver.change(arrived, receiver, [editor, source_id])

    def open_item(item_id):
        try:
            item = ctx.gallery.get(int(item_id))
        except (LookupError, TypeError, ValueError):
            raise gr.Error(f"No gallery item #{item_id}.")
        if item.file_path is None:
            raise gr.Error(f"Item #{item.id} is text, not an image.")
        return str(item.file_path)

    open_button.click(open_item, open_id, receiver)

    def edit_result(item_ids, index):
        from studio.ui.txt2img import selected_item

        return str(ctx.gallery.get(selected_item(item_ids, index)).file_path)

    again.click(edit_result, [ids, chosen], receiver)
    return {"image": receiver, "prompt": prompt, "_ids": ids, "_chosen": chosen,
            "_send": {"img2img": to_img2img, "style": to_style, "queue": to_queue}}


def wire(ctx, tabs, handles: dict) -> None:
    connect_send_buttons(ctx, tabs, handles, TAB_ID)
