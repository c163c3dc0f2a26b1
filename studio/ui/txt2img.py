"""Text to image tab, with an img2img mode: prompt, settings, Generate / Cancel / Add to queue,
a progress bar with previews, a results strip, reuse parameters, send to other tabs, open from
gallery. Thin: it turns the controls into task params and runs them as a job through
`studio.ui.widgets` (the runner); no torch here.
"""
from __future__ import annotations

from functools import partial
from typing import Any

import gradio as gr

from studio.ui import controlnet_panel
from studio.ui.add_to_queue import add_job
from studio.ui.reuse import diffusion_item, item_values
from studio.ui.upscale import HIRES_FIELDS, hires_controls, hires_params
from studio.ui.family_controls import wire_family_controls
from studio.ui.variations import variations_for_results
from studio.ui.widgets import (DEFAULT_MODEL, PRIVATE, wire_cancel, connect_send_buttons,
                               item_for_path, model_defaults, model_dropdown, results_panel,
                               run_strip, sampling_panel, selected_item, stream_images)

TAB_ID = "txt2img"
TITLE = "Text to image"
# the controls "Reuse parameters" and "Open from gallery" fill, in apply_item's order
APPLIED = ("prompt", "negative", "steps", "cfg", "scheduler", "width", "height", "seed", "model",
           "strength", "clip_skip")


def _params(mode, prompt, negative, steps, cfg, scheduler, width, height, seed, batch_size,
            batch_count, candidates, keep, model, init_path, strength, source_id,
            token_merging, step_cache, clip_skip, *hires) -> tuple[str, dict]:
    """The tab's controls as (task name, task params); the task checks the values."""
    params = {"prompt": prompt or "", "negative_prompt": negative or "", "steps": int(steps),
              "guidance_scale": float(cfg), "scheduler": scheduler, "width": int(width),
              "height": int(height), "seed": int(seed if seed is not None else -1),
              "batch_size": int(batch_size), "batch_count": int(batch_count)}
    if model and model != DEFAULT_MODEL:
        params["model"] = model
    if token_merging:
        params["token_merging"] = float(token_merging)
    if int(step_cache or 0) > 1:
        params["step_cache"] = int(step_cache)
    if int(clip_skip or 1) > 1:
        params["clip_skip"] = int(clip_skip)
    if mode == "img2img":
        if not init_path:
            raise gr.Error("Image to image needs an image: upload one or send one here.")
        params["strength"] = float(strength)
        if source_id:
            params["init_image_id"] = int(source_id)
        else:  # an upload: checked from its header, stored once as a gallery item (queue check)
            params["init_image"] = _open_upload(init_path)
        return "img2img", params
    if candidates:
        params.update(candidates=int(candidates), keep=int(min(keep, candidates)))
    return hires_params(params, *hires)  # "hires" when the hires fix is on, else "txt2img"


def _open_upload(path) -> Any:
    from studio.images import open_user_image

    try:
        return open_user_image(path, name="init image")
    except ValueError as error:
        raise gr.Error(str(error)) from None


# ------------------------------------------------------------------ handlers
def _task(ctx, values) -> tuple[str, dict]:
    """The tab's controls, then the ControlNet units (controlnet_panel.py, last inputs)."""
    own, units = controlnet_panel.split(values)
    return controlnet_panel.add_units(ctx, *_params(*own), units)


def generate(ctx, *values):
    """Generate: the job's progress, previews, then the saved results."""
    yield from stream_images(ctx, *_task(ctx, values))


def add_to_queue(ctx, *values) -> str:
    """Add to queue: a batch job with the same params."""
    return add_job(ctx, *_task(ctx, values))


def image_arrived(ctx, path):
    """An image arriving (upload or "send to") switches to img2img and remembers its item."""
    if not path:
        return gr.skip(), None, gr.skip()
    return "img2img", item_for_path(ctx, path), gr.Accordion(open=True)


def model_picked(name):
    """A model picked by hand (`input`, so "reuse parameters" keeps the item's own values)
    moves CFG and size to what that model works best with."""
    guidance, side = model_defaults(name)
    return guidance, side, side


def apply_item(ctx, item_id) -> tuple:
    """Every control from a gallery item's saved params (reuse / open from gallery)."""
    values = item_values(diffusion_item(ctx, item_id))
    return tuple(values[name] for name in APPLIED)


def reuse(ctx, ids, chosen):
    return apply_item(ctx, selected_item(ids, chosen))


def open_item(ctx, item_id):
    values = apply_item(ctx, item_id)
    item = ctx.gallery.get(int(item_id))
    return (*values, str(item.file_path) if item.file_path else None)


# ------------------------------------------------------------------ layout
def _controls(ctx) -> dict[str, Any]:
    c: dict[str, Any] = {}
    with gr.Row():
        with gr.Column(scale=3):
            c["prompt"] = gr.Textbox(label="Prompt", lines=3, elem_id="txt2img-prompt",
                                     placeholder="a small red star at the top left on a blue background")
            c["negative"] = gr.Textbox(label="Negative prompt", lines=1)
            from studio.ui import lora_picker  # LoRA list and "Train a LoRA"

            c["lora"] = lora_picker.build(ctx, c["prompt"])
        with gr.Column(scale=1, min_width=200):
            c["run"], c["cancel"], c["add_queue"] = run_strip("txt2img")
            c["mode"] = gr.Radio(["txt2img", "img2img"], value="txt2img", label="Mode",
                                 elem_id="txt2img-mode")
    with gr.Row():
        with gr.Column(scale=2):
            with gr.Accordion("Image to image", open=False) as c["img2img_box"]:
                c["init_image"] = gr.Image(type="filepath", label="Init image", height=256,
                                           sources=["upload", "clipboard"], elem_id="txt2img-init")
                c["strength"] = gr.Slider(0.05, 1.0, value=0.75, step=0.05, label="Denoising strength")
            c.update(sampling_panel("txt2img", size=True))
            with gr.Row():
                c["batch_size"] = gr.Slider(1, 16, value=1, step=1, label="Batch size",
                                            elem_id="txt2img-batch-size")
                c["batch_count"] = gr.Slider(1, 16, value=1, step=1, label="Batch count")
                c["candidates"] = gr.Slider(0, 32, value=0, step=1,
                                            label="Best of N (0 = off; keeps K by CLIP score)")
                c["keep"] = gr.Slider(1, 16, value=1, step=1, label="Keep K")
            c["model"] = model_dropdown(ctx, "txt2img-model",
                                        "The embedded model makes 64×64 images; others from "
                                        "data/models (diffusers folders or .safetensors).")
            c["token_merging"] = gr.Slider(0, 0.75, value=0, step=0.05,
                                           label="Token merging ratio (ToMe: faster large images, "
                                                 "slightly different; 0 = exact)")
            c["step_cache"] = gr.Slider(0, 5, value=0, step=1,
                                        label="Step cache (DeepCache: whole UNet every N steps, "
                                              "faster, slightly different; 0 = exact)")
            c["clip_skip"] = gr.Slider(1, 12, value=1, step=1, elem_id="txt2img-clip-skip",
                                       label="Clip skip (A1111: the prompt from CLIP's Nth layer "
                                             "from the end; SD 1.x models)")
            c.update(hires_controls(ctx))
            c["controlnet"] = controlnet_panel.build(ctx, "txt2img")
        with gr.Column(scale=2):
            c["panel"] = results_panel("txt2img", ("img2img", "inpaint", "style", "queue"),
                                       extra=("Reuse parameters",))
            variations_for_results(ctx, c["panel"], "txt2img")  # DALL·E 2 variations of a result
            with gr.Row():
                c["open_id"] = gr.Number(label="Open gallery item #", precision=0, scale=2)
                c["open"] = gr.Button("Open from gallery", size="sm", scale=1)
    return c


def build(ctx) -> dict[str, Any]:
    c = _controls(ctx)
    panel = c["panel"]
    source_id = gr.State(None)  # the gallery item the init image came from (lineage)
    inputs = [c[n] for n in ("mode", "prompt", "negative", "steps", "cfg", "scheduler", "width",
                             "height", "seed", "batch_size", "batch_count", "candidates", "keep",
                             "model", "init_image", "strength")] + [source_id] \
        + [c["token_merging"], c["step_cache"], c["clip_skip"]] + [c[n] for n in HIRES_FIELDS] \
        + c["controlnet"]
    c["run"].click(partial(generate, ctx), inputs, panel.outputs, concurrency_limit=None, **PRIVATE)
    wire_cancel(ctx, c["cancel"], panel.job)
    c["add_queue"].click(partial(add_to_queue, ctx), inputs, panel.status, **PRIVATE)
    c["init_image"].change(partial(image_arrived, ctx), c["init_image"],
                           [c["mode"], source_id, c["img2img_box"]], **PRIVATE)
    c["model"].input(model_picked, c["model"], [c["cfg"], c["width"], c["height"]], **PRIVATE)
    wire_family_controls(c["model"], c)  # controls the model's family lacks: disabled
    applied = [c[n] for n in APPLIED]
    panel.extra["Reuse parameters"].click(partial(reuse, ctx), [panel.ids, panel.chosen],
                                          applied, **PRIVATE)
    c["open"].click(partial(open_item, ctx), c["open_id"], applied + [c["init_image"]], **PRIVATE)
    # the item's ControlNet units back into the panel (controlnet_panel.py), on both buttons
    controlnet_panel.wire_fill(ctx, panel.extra["Reuse parameters"], [panel.ids, panel.chosen],
                               c["controlnet"])
    controlnet_panel.wire_fill(ctx, c["open"], [c["open_id"]], c["controlnet"])
    return {"prompt": c["prompt"], "negative_prompt": c["negative"],
            "init_image": c["init_image"], "_panel": panel}


def wire(ctx, tabs, handles: dict) -> None:
    connect_send_buttons(ctx, tabs, handles, TAB_ID)
