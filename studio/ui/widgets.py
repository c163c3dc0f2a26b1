"""What the tabs share: the run / cancel / add-to-queue strip, the results panel with its "send
to" buttons, the sampling panel of the image tabs, the progress line — and the one way a tab
runs a generation: `follow_job` submits it to the runner (`ctx.runner`) as an interactive job and
turns its updates into what the tab shows.

No tab starts a thread of its own: the job runs on the queue's worker, so it shows in the Queue
tab and `GET /api/queue`, and its result appears only once its gallery rows are committed. The
job id lives in a per-session gr.State, which is what Cancel reads.
"""
from __future__ import annotations

import html
import re
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Iterator

import gradio as gr

PRIVATE = {"api_visibility": "private"}  # internal handlers stay out of "Use via API"
SHOW_EVERY_S = 0.05  # at most ~20 UI updates a second while a job streams
DEFAULT_MODEL = "genstudio-tiny-sd"
# The engine's scheduler names (engines/diffusion/params.py), listed here so no tab imports an
# engine module at start-up; the task rejects any name the engine does not know.
SCHEDULER_NAMES = ["Euler", "Euler a", "DDIM", "DPM++ 2M", "DPM++ 2M Karras", "UniPC", "LCM"]
_UID = re.compile(r"^[0-9a-f]{32}$")


# ------------------------------------------------------------------ running a job
def submit(ctx, task: str, params: dict):
    """Queue `task` as an interactive job (it runs next); bad input becomes gr.Error naming the
    field, before anything runs. An uploaded picture (a PIL image in `params`) is stored by the
    queue's check, once (studio/uploads.py ImageIntake): the job row holds its id."""
    from studio.jobs.runner import INTERACTIVE

    if getattr(ctx, "runner", None) is None:
        raise gr.Error("This studio runs without a job runner.")
    try:
        return ctx.runner.submit(task, params, priority=INTERACTIVE)
    except ValueError as error:
        raise gr.Error(str(error)) from None


def follow_job(ctx, task: str, params: dict) -> Iterator[Any]:
    """Submit, then yield every JobUpdate worth showing (at most every SHOW_EVERY_S, but always
    the first and the final one; a skipped update's preview is carried to the next)."""
    handle = submit(ctx, task, params)
    shown, preview = 0.0, None
    for update in handle.updates():
        preview = update.preview if update.preview is not None else preview
        if update.finished or time.monotonic() - shown >= SHOW_EVERY_S:
            shown = time.monotonic()
            yield update if update.preview is not None or preview is None else \
                _with_preview(update, preview)


def _with_preview(update, preview):
    from dataclasses import replace

    return replace(update, preview=preview)


def cancel_job(ctx, job_id: int | None) -> str:
    """Cancel this session's running job (its id is kept in a gr.State)."""
    if job_id is None or getattr(ctx, "runner", None) is None:
        return "Nothing is running."
    try:
        ctx.runner.handle(int(job_id)).cancel()
    except LookupError:
        return "Nothing is running."
    return "Cancelling after the current step…"


def wire_cancel(ctx, button, job, **events) -> None:
    """Cancel/Stop: the answer is a toast, never the status line, because the job's own stream
    writes its last word there ("Cancelled: nothing was saved.") and a late reply of this click
    must not overwrite it."""
    button.click(lambda job_id: gr.Info(cancel_job(ctx, job_id)), job, None, **events, **PRIVATE)


def progress_html(step: int, total: int, message: str) -> str:
    percent = int(100 * step / total) if total else 0
    return (f'<div class="gs-progress"><progress value="{step}" max="{max(total, 1)}" '
            f'style="width:100%"></progress><div class="gs-muted">{html.escape(message)} '
            f'({percent}%)</div></div>')


def update_status(update) -> str:
    """The progress line of a pending or running job."""
    if update.status == "pending":
        ahead = update.queue_position
        where = "starts next" if not ahead else f"{ahead} job{'s' if ahead != 1 else ''} ahead"
        return progress_html(0, 1, f"Job #{update.job_id} queued: {where}…")
    return progress_html(update.step, update.total,
                         update.message or f"Job #{update.job_id}: loading the model / starting…")


def image_results(ctx, update) -> tuple[str, list, list[int]]:
    """(status line, results gallery value, item ids) of a completed image job."""
    items = [ctx.gallery.get(i) for i in update.result["item_ids"]]
    info = update.result.get("info") or {}
    status = (f"Saved {len(items)} image(s) to the gallery: "
              + ", ".join(f"#{i.id}" for i in items)
              + f" · {info.get('seconds', 0):.2f} s"
              + (f" · {info['seconds_per_step']:.3f} s/step" if info.get("seconds_per_step") else "")
              + "".join(f"<br>⚠ {html.escape(w)}" for w in info.get("warnings", [])))
    return status, [(str(i.file_path), f"#{i.id} seed {i.seed}") for i in items], [i.id for i in items]


def stream_images(ctx, task: str, params: dict) -> Iterator[tuple]:
    """An image tab's Generate: yields (job id, status, preview, results, item ids)."""
    for update in follow_job(ctx, task, params):
        if update.status == "completed":
            status, shown, ids = image_results(ctx, update)
            yield None, status, None, shown, ids
        elif update.status == "canceled":
            gr.Warning("Cancelled: nothing was saved.")
            yield None, "Cancelled: nothing was saved.", None, gr.skip(), gr.skip()
        elif update.status == "failed":
            raise gr.Error(update.error or "The generation failed.")
        else:
            yield (update.job_id, update_status(update),
                   update.preview if update.preview is not None else gr.skip(),
                   gr.skip(), gr.skip())


# ------------------------------------------------------------------ layout pieces
def run_strip(prefix: str, run_label: str = "Generate",
              run_id: str | None = None) -> tuple[gr.Button, gr.Button, gr.Button]:
    """Generate (primary), Cancel and Add to queue, with elem ids `<prefix>-generate|cancel|queue`."""
    run = gr.Button(run_label, variant="primary", elem_id=run_id or f"{prefix}-generate")
    with gr.Row():
        cancel = gr.Button("Cancel", variant="stop", size="sm", elem_id=f"{prefix}-cancel")
        add_queue = gr.Button("Add to queue", size="sm", elem_id=f"{prefix}-queue")
    return run, cancel, add_queue


def action_row(prefix: str, run_label: str, run_key: str) -> tuple[gr.Button, gr.Button, gr.Button]:
    """One row: the action (primary), Stop and Add to queue; elem ids `<prefix>-<run_key>`,
    `<prefix>-stop`, `<prefix>-queue`."""
    with gr.Row():
        run = gr.Button(run_label, variant="primary", elem_id=f"{prefix}-{run_key}")
        stop = gr.Button("Stop", variant="stop", elem_id=f"{prefix}-stop")
        add_queue = gr.Button("Add to queue", elem_id=f"{prefix}-queue")
    return run, stop, add_queue


def before_after(prefix: str, max_height: int) -> gr.ImageSlider:
    """The input and the result side by side under one slider."""
    return gr.ImageSlider(label="Before / after", type="filepath", image_mode=None,
                          elem_id=f"{prefix}-result", max_height=max_height)


SEND_LABELS = {"img2img": "Send to img2img", "inpaint": "Send to inpaint",
               "style": "Send to style transfer", "queue": "Send prompt to queue"}
# key -> (tab id, receiver name) the button fills
SEND_TARGETS = {"inpaint": ("inpaint", "image"), "style": ("style", "image"),
                "queue": ("queue", "prompt"), "img2img": ("txt2img", "init_image")}


@dataclass
class ResultsPanel:
    """Status line, live preview, results strip, and what the tab keeps per session."""
    status: gr.HTML
    preview: gr.Image
    results: gr.Gallery
    job: gr.State  # id of this session's running job, for Cancel
    ids: gr.State  # item ids shown in the results strip
    chosen: gr.State  # index of the clicked result
    send: dict[str, gr.Button] = field(default_factory=dict)
    extra: dict[str, gr.Button] = field(default_factory=dict)

    @property
    def outputs(self) -> list:
        """What `stream_images` fills, in its order."""
        return [self.job, self.status, self.preview, self.results, self.ids]


def results_panel(prefix: str, sends: tuple[str, ...], extra: tuple[str, ...] = ()) -> ResultsPanel:
    """The right-hand side of an image tab; `extra` adds plain buttons before the "send to" ones."""
    status = gr.HTML(elem_id=f"{prefix}-status")
    preview = gr.Image(label="Preview", interactive=False, height=192, elem_id=f"{prefix}-preview",
                       elem_classes=["gs-crisp"])
    results = gr.Gallery(label="Results", columns=4, height=260, allow_preview=True,
                         object_fit="contain", fit_columns=False, elem_id=f"{prefix}-results",
                         elem_classes=["gs-crisp"])
    with gr.Row():
        buttons = {name: gr.Button(name, size="sm") for name in extra}
        send = {key: gr.Button(SEND_LABELS[key], size="sm") for key in sends}
    panel = ResultsPanel(status, preview, results, gr.State(None), gr.State([]), gr.State(None),
                         send, buttons)
    results.select(on_select, None, panel.chosen, **PRIVATE)
    return panel


def sampling_panel(prefix: str, size: bool = True) -> dict[str, gr.components.Component]:
    """Steps, CFG, sampler, seed (and width / height) of the image tabs."""
    controls: dict[str, Any] = {}
    with gr.Row():
        controls["steps"] = gr.Slider(1, 150, value=20, step=1, label="Steps",
                                      elem_id=f"{prefix}-steps")
        controls["cfg"] = gr.Slider(0, 30, value=model_defaults(DEFAULT_MODEL)[0], step=0.5,
                                    label="CFG scale")
        controls["scheduler"] = gr.Dropdown(SCHEDULER_NAMES, value="DPM++ 2M", label="Sampler")
        if not size:
            controls["seed"] = gr.Number(value=-1, precision=0, label="Seed (-1 = random)",
                                         elem_id=f"{prefix}-seed")
    if size:
        with gr.Row():
            controls["width"] = gr.Slider(64, 2048, value=64, step=8, label="Width",
                                          elem_id=f"{prefix}-width")
            controls["height"] = gr.Slider(64, 2048, value=64, step=8, label="Height",
                                           elem_id=f"{prefix}-height")
            controls["seed"] = gr.Number(value=-1, precision=0, label="Seed (-1 = random)",
                                         elem_id=f"{prefix}-seed")
    return controls


def llm_sampling_panel(temperature: float, top_p: float,
                       repetition_penalty: float) -> dict[str, gr.components.Component]:
    """Temperature, top-p, top-k, repetition penalty, max new tokens and seed of the text tabs
    (each tab passes the defaults that suit it)."""
    controls: dict[str, Any] = {}
    with gr.Row():
        controls["temperature"] = gr.Slider(0, 2, value=temperature, step=0.05,
                                            label="Temperature")
        controls["top_p"] = gr.Slider(0.01, 1, value=top_p, step=0.01, label="Top-p")
        controls["top_k"] = gr.Slider(0, 200, value=40, step=1, label="Top-k")
    with gr.Row():
        controls["repetition_penalty"] = gr.Slider(1, 2, value=repetition_penalty, step=0.01,
                                                   label="Repetition penalty")
        controls["max_new_tokens"] = gr.Slider(1, 4096, value=512, step=1, label="Max new tokens")
        controls["seed"] = gr.Number(value=-1, precision=0, label="Seed (-1 = random)")
    return controls


def model_dropdown(ctx, elem_id: str, info: str | None = None) -> gr.Dropdown:
    return gr.Dropdown(model_choices(ctx), value=DEFAULT_MODEL, label="Model",
                       allow_custom_value=True, elem_id=elem_id, info=info)


# ------------------------------------------------------------------ image helpers
def model_defaults(model: str | None) -> tuple[float, int]:
    """(CFG scale, image side) a model works best with: the embedded model was judged at CFG 2
    (higher shifts its colours, docs/sd-tiny.md) and draws 64 px; others get A1111's CFG 7 at
    the side they were trained at (1024 SDXL, 768 SD 2.x, else 512)."""
    from engines.diffusion.single_file import native_side

    if (model or DEFAULT_MODEL) == DEFAULT_MODEL:
        return 2.0, 64
    return 7.0, native_side(model) or 512


def model_choices(ctx) -> list[str]:
    """The embedded model plus diffusers folders and .safetensors files of the models folders
    (data/models, its A1111 Stable-diffusion/ folder where imports go, --models-dir extras)."""
    from studio.models import diffusion_roots

    choices = [DEFAULT_MODEL]
    for folder in diffusion_roots(ctx):
        if folder.is_dir():
            for path in sorted(folder.iterdir()):
                if path.suffix == ".safetensors" or (path / "model_index.json").exists():
                    choices.append(str(path))
    return choices


def item_for_path(ctx, path: str | None) -> int | None:
    """The gallery item an image file came from (files are named by the item's uid, and Gradio
    keeps the name when it caches a copy), or None for an upload."""
    stem = Path(str(path)).stem if path else ""
    if not _UID.match(stem):
        return None
    item = ctx.gallery.find_by_uid(stem)
    return item.id if item is not None else None


def selected_item(ids: list[int], index: int | None) -> int:
    if not ids:
        raise gr.Error("Generate something first.")
    return ids[index if index is not None and index < len(ids) else 0]


def on_select(evt: gr.SelectData) -> int:
    return evt.index


def send_result(ctx, tab_id: str, name: str, ids: list[int], chosen: int | None):
    """A "send to" button: the chosen result's file (image receivers, so lineage follows) or its
    prompt (the queue), and the switch to that tab."""
    item = ctx.gallery.get(selected_item(ids, chosen))
    value = item.prompt if name == "prompt" else str(item.file_path)
    return value, gr.Tabs(selected=tab_id)


def connect_send_buttons(ctx, tabs, handles: dict, own_tab: str) -> None:
    """Wire a results panel's "send to" buttons to the other tabs' receivers (after every tab is
    built); a button whose receiver is missing hides."""
    panel: ResultsPanel = handles[own_tab]["_panel"]
    for key, button in panel.send.items():
        tab_id, name = SEND_TARGETS[key]
        receiver = handles.get(tab_id, {}).get(name)
        if receiver is None:
            button.visible = False
            continue
        button.click(partial(send_result, ctx, tab_id, name), [panel.ids, panel.chosen],
                     [receiver, tabs], **PRIVATE)


# ------------------------------------------------------------------ page-wide
# Small images (the embedded model draws 64 px) are drawn with nearest-neighbour scaling where a
# panel enlarges them, so they stay crisp; larger ones (and the gallery's 256 px thumbnails of
# large images, which cells shrink) keep smooth scaling. A capturing `load` listener marks each
# <img> inside a `gs-crisp` component once its natural size is known.
SMALL_IMAGE_PX = 128
HEAD = f"""<script>
document.addEventListener("load", (event) => {{
  const img = event.target;
  if (img.tagName === "IMG" && img.closest(".gs-crisp")) {{
    img.classList.toggle("gs-small", img.naturalWidth <= {SMALL_IMAGE_PX}
                                     && img.naturalHeight <= {SMALL_IMAGE_PX});
  }}
}}, true);
</script>"""
CSS = ".gs-crisp img.gs-small { image-rendering: pixelated; }\n"
