"""Upscale / Extras tab: one image (uploaded, or sent from the gallery) or a batch of gallery
images through an upscaler (Real-ESRGAN, ESRGAN-family files, Lanczos...), as A1111's Extras
tab. Results land in the gallery as children of their source.

Thin: Upscale runs the "upscale" task as an interactive job through the runner; Add to queue
queues the same request. Pictures go by gallery id (an upload is saved first, as the parent).
No torch and no engine import beyond the catalog of names.

`hires_controls()` / `hires_params()` are the hires-fix panel for the Text to image tab: its
values as the "hires" task's params (A1111's names).
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import gradio as gr

from studio.ui.add_to_queue import refuse, try_enqueue
from studio.ui.widgets import (PRIVATE, action_row, before_after, wire_cancel, follow_job,
                               update_status)

if TYPE_CHECKING:
    from studio.context import StudioContext

TAB_ID = "upscale"
TITLE = "Upscale / Extras"
LANDS = "Results are saved to the gallery as children of their source."
RECENT = 200  # gallery images offered for a batch
HIRES_UPSCALERS = ["Latent", "Latent (antialiased)", "Latent (bicubic)",
                   "Latent (bicubic antialiased)", "Latent (nearest)", "Latent (nearest-exact)"]


def upscaler_names(ctx) -> list[str]:
    from engines.upscale.catalog import list_upscalers

    return [u.name for u in list_upscalers((ctx.config.models_dir,
                                            *ctx.config.extra_models_dirs))]


def recent_images(ctx) -> list[tuple[str, int]]:
    from studio.gallery.store import GalleryQuery

    page = ctx.gallery.query(GalleryQuery(kind="image", page_size=RECENT))
    return [(f"#{i.id} {i.task} {i.width}×{i.height} {i.prompt[:40]}", i.id) for i in page.items]


def refresh(ctx, upscaler, second, chosen):
    names = upscaler_names(ctx)
    keep = upscaler if upscaler in names else "R-ESRGAN AnimeVideo"
    ids = {value for _, value in recent_images(ctx)}
    return (gr.update(choices=names, value=keep),
            gr.update(choices=["None", *names], value=second if second in names else "None"),
            gr.update(choices=recent_images(ctx), value=[c for c in chosen or [] if c in ids]))


def item_for_path(ctx, path: str | None) -> int | None:
    """The gallery item whose file this is (gallery files are named by their uid)."""
    item = ctx.gallery.find_by_uid(Path(path).stem) if path else None
    return item.id if item is not None else None


def request(ctx, mode, path, parent, batch, upscaler, second, visibility, resize_by, scale,
            width, height, crop, tile) -> tuple[dict, int | None]:
    """The "upscale" params for the tab's values: (params, id of an upload saved just now).
    Raises ValueError naming what is wrong, before anything is saved."""
    from studio.tasks import validate_task

    params: dict = {"upscaler": upscaler, "tile": int(tile)}
    if resize_by == "Scale to":
        params.update(width=int(width), height=int(height), crop=bool(crop))
    else:
        params["scale"] = float(scale)
    if second and second != "None" and visibility > 0:
        params.update(upscaler_2=second, upscaler_2_visibility=float(visibility))
    if mode == "Batch from gallery":
        if not batch:
            raise ValueError("Choose one or more gallery images for the batch.")
        return {**params, "image_ids": [int(i) for i in batch]}, None
    if not path:
        raise ValueError("Upload an image first (or send one from the gallery).")
    parent = parent if parent is not None else item_for_path(ctx, path)
    if parent is not None:
        return {**params, "image_id": int(parent)}, None
    from studio.images import open_user_image

    image = open_user_image(path, name="image")  # size from the header; five formats only
    validate_task(ctx, "upscale", {**params, "image": image})  # before saving the upload
    saved = ctx.gallery.add_image(image, task="upload", engine="", prompt="uploaded image",
                                  params={"source": "upscale tab"})
    return {**params, "image_id": saved.id}, saved.id


def run_upscale(ctx, *values):
    """Upscale: yields (job id, before/after, results, status) as the job runs."""
    try:
        params, _ = request(ctx, *values)
    except ValueError as error:
        raise gr.Error(str(error)) from None
    update = None
    for update in follow_job(ctx, "upscale", params):
        if not update.finished:
            yield update.job_id, gr.skip(), gr.skip(), update_status(update)
    if update.status != "completed":
        yield None, gr.skip(), gr.skip(), ("Stopped; nothing was saved."
                                           if update.status == "canceled"
                                           else f"⚠️ {update.error or 'Upscaling failed.'}")
        return
    items = [ctx.gallery.get(i) for i in update.result["item_ids"]]
    first = items[0]
    before = ctx.gallery.get(first.parent_id).file_path if first.parent_id else first.file_path
    seconds = (update.result.get("info") or {}).get("seconds_per_image")
    status = (f"Saved {len(items)} image(s) to the gallery: "
              + ", ".join(f"#{i.id} ({i.width}×{i.height}, parent #{i.parent_id})" for i in items)
              + (f" · {seconds:.2f} s per image" if seconds else ""))
    yield (None, (str(before), str(first.file_path)),
           [(str(i.file_path), f"#{i.id}") for i in items], status)


def queue_upscale(ctx, *values) -> str:
    if ctx.queue is None:
        return refuse("The queue is not running in this studio: nothing was queued.")
    try:
        params, saved = request(ctx, *values)
    except ValueError as error:
        return refuse(f"Not queued: {error}")
    job_id, status = try_enqueue(ctx, "upscale", params, LANDS)
    if job_id is None and saved is not None:
        ctx.gallery.delete(saved)
    return status


def from_gallery(ctx, path):
    """A "send to" from another tab: show the picture and remember its item as the parent."""
    return path or None, item_for_path(ctx, path), "Single image"


def _controls(ctx) -> dict:
    c: dict = {}
    gr.Markdown("Upscale with **Real-ESRGAN** (the fast compact network or x4plus, both "
                "embedded), any ESRGAN-family file in `models/ESRGAN` (and A1111's other upscaler "
                "folders), or Lanczos / Nearest. Large images run in overlapping tiles.",
                elem_classes="gs-muted")
    names = upscaler_names(ctx)
    with gr.Row():
        with gr.Column(scale=1):
            c["source_path"] = gr.Textbox(visible=False, elem_id="upscale-source-path")
            c["mode"] = gr.Radio(["Single image", "Batch from gallery"], value="Single image",
                                 label="Input", elem_id="upscale-mode")
            c["image"] = gr.Image(label="Image", type="filepath", image_mode=None, height=260,
                                  elem_id="upscale-input")
            c["batch"] = gr.Dropdown(label="Gallery images (batch)", multiselect=True,
                                     choices=recent_images(ctx), elem_id="upscale-batch")
            with gr.Row():
                c["upscaler"] = gr.Dropdown(names, value="R-ESRGAN AnimeVideo", label="Upscaler",
                                            elem_id="upscale-upscaler", scale=4)
                c["refresh"] = gr.Button("↻", size="sm", scale=0, min_width=40)
            c["resize_by"] = gr.Radio(["Scale by", "Scale to"], value="Scale by", label="Resize")
            c["scale"] = gr.Slider(1, 8, value=2, step=0.05, label="Scale by",
                                   elem_id="upscale-scale")
            with gr.Row():
                c["width"] = gr.Number(512, label="Width", precision=0, minimum=8)
                c["height"] = gr.Number(512, label="Height", precision=0, minimum=8)
                c["crop"] = gr.Checkbox(True, label="Crop to fit")
            with gr.Accordion("More", open=False):
                c["second"] = gr.Dropdown(["None", *names], value="None", label="Upscaler 2")
                c["visibility"] = gr.Slider(0, 1, value=0, step=0.05, label="Upscaler 2 visibility")
                c["tile"] = gr.Slider(0, 512, value=192, step=32, label="Tile size (0 = no tiling)",
                                      info="input pixels per tile; tiles overlap by 16 and blend")
            c["run"], c["stop"], c["add_queue"] = action_row("upscale", "Upscale", "run")
        with gr.Column(scale=1):
            c["result"] = before_after("upscale", 520)
            c["results"] = gr.Gallery(label="Results", columns=4, height=200,
                                      elem_id="upscale-results")
            c["status"] = gr.Markdown(elem_id="upscale-status")
    return c


def build(ctx: "StudioContext") -> dict[str, gr.Component]:
    c = _controls(ctx)
    parent_id, job = gr.State(None), gr.State(None)
    c["refresh"].click(partial(refresh, ctx), [c["upscaler"], c["second"], c["batch"]],
                       [c["upscaler"], c["second"], c["batch"]], **PRIVATE)
    c["source_path"].change(partial(from_gallery, ctx), [c["source_path"]],
                            [c["image"], parent_id, c["mode"]], **PRIVATE)
    for event in (c["image"].upload, c["image"].input, c["image"].clear):
        event(lambda *_: None, None, [parent_id], **PRIVATE)  # a new upload has no item yet
    values = [c["mode"], c["image"], parent_id, c["batch"], c["upscaler"], c["second"],
              c["visibility"], c["resize_by"], c["scale"], c["width"], c["height"], c["crop"],
              c["tile"]]
    c["run"].click(partial(run_upscale, ctx), values,
                   [job, c["result"], c["results"], c["status"]], concurrency_limit=None,
                   **PRIVATE)
    wire_cancel(ctx, c["stop"], job)
    c["add_queue"].click(partial(queue_upscale, ctx), values, [c["status"]], **PRIVATE)
    return {"image": c["source_path"],
            "_refresh": (partial(refresh, ctx), [c["upscaler"], c["second"], c["batch"]],
                         [c["upscaler"], c["second"], c["batch"]])}


def on_load(ctx, demo: gr.Blocks, own: dict) -> None:
    handler, inputs, outputs = own["_refresh"]
    demo.load(handler, inputs, outputs, **PRIVATE)


# ------------------------------------------------------------------ hires fix, for txt2img
def hires_controls(ctx) -> dict:
    """The hires-fix panel (call inside the Text to image tab's layout)."""
    c: dict = {}
    with gr.Accordion("Hires fix", open=False):
        c["enable_hr"] = gr.Checkbox(False, label="Hires fix: generate, upscale, re-draw",
                                     elem_id="hires-enable")
        with gr.Row():
            c["hr_upscaler"] = gr.Dropdown([*HIRES_UPSCALERS, *upscaler_names(ctx)],
                                           value="Latent", label="Upscaler")
            c["hr_scale"] = gr.Slider(1, 4, value=2, step=0.05, label="Upscale by")
        with gr.Row():
            c["hr_second_pass_steps"] = gr.Slider(0, 150, value=0, step=1,
                                                  label="Hires steps (0 = same)")
            c["denoising_strength"] = gr.Slider(0.05, 1, value=0.7, step=0.01,
                                                label="Denoising strength")
        with gr.Row():
            c["hr_resize_x"] = gr.Number(0, label="Resize width to (0 = by scale)", precision=0)
            c["hr_resize_y"] = gr.Number(0, label="Resize height to", precision=0)
    return c


# hires_controls' keys, in the order hires_params takes their values
HIRES_FIELDS = ("enable_hr", "hr_upscaler", "hr_scale", "hr_second_pass_steps",
                "denoising_strength", "hr_resize_x", "hr_resize_y")


def hires_params(params: dict, enable_hr, hr_upscaler, hr_scale, hr_second_pass_steps,
                 denoising_strength, hr_resize_x, hr_resize_y) -> tuple[str, dict]:
    """(task, params): "hires" with A1111's fields added when enabled, else ("txt2img", params)."""
    if not enable_hr:
        return "txt2img", params
    return "hires", dict(params, enable_hr=True, hr_upscaler=hr_upscaler,
                         hr_scale=float(hr_scale), hr_second_pass_steps=int(hr_second_pass_steps),
                         denoising_strength=float(denoising_strength),
                         hr_resize_x=int(hr_resize_x or 0), hr_resize_y=int(hr_resize_y or 0))
