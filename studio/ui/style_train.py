"""The "Train a new style" part of the Style transfer tab: a `train_style` job (its own lane on
the queue, studio/tasks/style_training.py) started, watched and canceled from here.

Uploaded pictures enter the gallery first (task "upload") and the job refers to them by id, so
a training survives a restart and resumes from its checkpoint; it is listed in the Queue tab
like any other job. The loss curve is read from the checkpoint folder while the job runs.
"""
from __future__ import annotations

import time
from functools import partial

import gradio as gr

from studio.ui.widgets import PRIVATE, wire_cancel, follow_job

CURVE_EVERY_S = 2.0  # the loss plot is re-read at most this often
LOSS_NAMES = ("G_gan", "G_cycle", "G_identity", "D_A", "D_B")


def loss_frame(ctx, name: str):
    """The logged losses of `name`'s training as rows (iteration, name, loss) for gr.LinePlot."""
    import pandas as pd

    from studio.tasks.style_training import training_curve

    curve = training_curve(ctx, name)
    every, rows = curve.get("log_every", 1), []
    for loss, values in (curve.get("losses") or {}).items():
        rows += [{"iteration": (i + 1) * every, "name": loss, "loss": v} for i, v in enumerate(values)]
    return pd.DataFrame(rows, columns=["iteration", "name", "loss"])


def gallery_choices(ctx):
    from studio.gallery.store import GalleryQuery

    page = ctx.gallery.query(GalleryQuery(kind="image", page_size=100))
    return gr.update(choices=[(f"#{i.id} {i.prompt[:40]}", i.id) for i in page.items])


def _save_uploads(ctx, files, what: str) -> list[int]:
    from engines.style.engine import open_image

    ids = []
    for path in files or []:
        image = open_image(path, what).convert("RGB")
        ids.append(ctx.gallery.add_image(image, task="upload", engine="", prompt=what,
                                         params={"source": "style training"}).id)
    return ids


def start_training(ctx, name, style_uploads, content_uploads, item_ids, size, iterations):
    """Start training: yields (job id, status, loss plot, latest sample) until the job ends."""
    if not (name or "").strip():
        raise gr.Error("Give the new style a name.")
    saved: list[int] = []
    try:  # the pictures enter the gallery once; the job refers to them by id
        styles = _save_uploads(ctx, style_uploads, "style image")
        saved += styles
        contents = _save_uploads(ctx, content_uploads, "content image")
        saved += contents
    except ValueError as error:
        for item_id in saved:
            ctx.gallery.delete(item_id)
        raise gr.Error(str(error)) from None
    params = {"name": name.strip(), "style_image_ids": styles,
              "content_image_ids": contents + [int(i) for i in item_ids or []],
              "size": int(size), "iterations": int(iterations)}
    read_at, update = 0.0, None
    try:
        for update in follow_job(ctx, "train_style", params):
            plot = gr.skip()
            if time.monotonic() - read_at > CURVE_EVERY_S:
                plot, read_at = loss_frame(ctx, params["name"]), time.monotonic()
            running = update.status == "running" and update.total
            text = (f"**{params['name']}** · job #{update.job_id} · "
                    + (f"iteration {update.step}/{update.total}" if running
                       else "waiting / starting…" if not update.finished else update.status))
            yield update.job_id, text, plot, update.preview if update.preview is not None else gr.skip()
    except gr.Error:
        for item_id in saved:  # refused before it was queued: keep nothing
            ctx.gallery.delete(item_id)
        raise
    style_id = ((update.result or {}).get("info") or {}).get("style_id")
    final = {"completed": f"Saved as style **{style_id}**; pick it in the list above.",
             "canceled": "Canceled: the checkpoint is kept; start again with the same name to "
                         "resume.",
             "failed": f"⚠️ {update.error}"}.get(update.status, "")
    yield None, f"**{params['name']}** · {final}", loss_frame(ctx, params["name"]), gr.skip()


def build(ctx):
    """The accordion; returns the Start event, so the tab can refresh its style list after."""
    with gr.Accordion("Train a new style", open=False, elem_id="style-train"):
        gr.Markdown("Unpaired CycleGAN: give pictures in the style and photos to restyle; no "
                    "pairs needed. At 128 px on one CPU core a rough style shows within ~10 "
                    "minutes (several hundred iterations). Runs as a job on its own lane of the "
                    "queue (listed in the Queue tab); Cancel keeps a checkpoint, and starting "
                    "again with the same name resumes it.", elem_classes="gs-muted")
        with gr.Row():
            with gr.Column():
                name = gr.Textbox(label="Style name", placeholder="e.g. My watercolours")
                style_files = gr.File(label="Style images", file_count="multiple",
                                      file_types=["image"])
                content_files = gr.File(label="Content images (photos)", file_count="multiple",
                                        file_types=["image"])
                with gr.Row():
                    content_items = gr.Dropdown(label="…or content images from the gallery",
                                                multiselect=True, choices=[], scale=4)
                    refresh = gr.Button("↻", size="sm", scale=0, min_width=40)
                size = gr.Slider(64, 256, value=128, step=32, label="Image size (px)")
                iterations = gr.Slider(50, 5000, value=600, step=50, label="Iterations")
                with gr.Row():
                    start = gr.Button("Start training", variant="primary", elem_id="style-train-start")
                    cancel = gr.Button("Cancel", variant="stop", elem_id="style-train-cancel")
            with gr.Column():
                status = gr.Markdown("*No training running.*", elem_id="style-train-status")
                plot = gr.LinePlot(x="iteration", y="loss", color="name", height=260,
                                   label="Losses (mean per logging window)")
                sample = gr.Image(label="Samples: content (top) and restyled (bottom)",
                                  interactive=False, height=260)
    job = gr.State(None)
    refresh.click(partial(gallery_choices, ctx), None, [content_items], **PRIVATE)
    wire_cancel(ctx, cancel, job)
    return start.click(partial(start_training, ctx),
                       [name, style_files, content_files, content_items, size, iterations],
                       [job, status, plot, sample], concurrency_limit=None, **PRIVATE)
