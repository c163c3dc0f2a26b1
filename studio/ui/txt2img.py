"""Text to image tab, with an img2img mode: prompt, settings, Generate / Cancel / Add to queue,
a progress bar with previews, a results strip, reuse parameters, send to other tabs, open from
gallery. Thin: it builds task params and calls studio.tasks; no torch here.

The helpers at the top (`stream_task`, `cancel_running`, `item_for_path`...) are shared with the
Inpaint & outpaint tab.
"""
from __future__ import annotations

import base64
import html
import queue as queue_module
import re
import threading
from pathlib import Path
from typing import Any, Iterator

import gradio as gr

from engines.base import Cancelled, CancelToken, EngineError
from engines.diffusion.single_file import native_side
from studio.tasks import run_task, validate_task

TAB_ID = "txt2img"
TITLE = "Text to image"
DEFAULT_MODEL = "genstudio-tiny-sd"
# The engine's scheduler names (engines/diffusion/params.py), listed here so this tab imports
# no engine module at start-up; the task rejects any name the engine does not know.
SCHEDULER_NAMES = ["Euler", "Euler a", "DDIM", "DPM++ 2M", "DPM++ 2M Karras", "UniPC", "LCM"]
_UID = re.compile(r"^[0-9a-f]{32}$")

# One running generation per browser session, so Cancel reaches the right one. Tokens only: no
# model state lives here.
_running: dict[str, CancelToken] = {}


# ------------------------------------------------------------------ shared helpers
def model_defaults(model: str | None) -> tuple[float, int]:
    """(CFG scale, image side) a model works best with: the embedded model was judged at CFG 2
    (higher shifts its colours, docs/sd-tiny.md) and draws 64 px; others get A1111's CFG 7 at
    the side they were trained at (1024 SDXL, 768 SD 2.x, else 512)."""
    if (model or DEFAULT_MODEL) == DEFAULT_MODEL:
        return 2.0, 64
    return 7.0, native_side(model) or 512


def model_choices(ctx) -> list[str]:
    """The embedded model plus diffusers folders and .safetensors files under data/models."""
    choices = [DEFAULT_MODEL]
    folder = Path(ctx.config.models_dir)
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            if path.suffix == ".safetensors" or (path / "model_index.json").exists():
                choices.append(str(path))
    return choices


def item_for_path(ctx, path: str | None) -> int | None:
    """The gallery item an image file came from (files are named by the item's uid, and Gradio
    keeps the name when it caches a copy), or None for an upload."""
    if not path:
        return None
    stem = Path(str(path)).stem
    if not _UID.match(stem):
        return None
    item = ctx.gallery.find_by_uid(stem)
    return item.id if item is not None else None


def file_as_base64(path: str) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode("ascii")


def progress_html(step: int, total: int, message: str) -> str:
    percent = int(100 * step / total) if total else 0
    return (f'<div class="gs-progress"><progress value="{step}" max="{max(total, 1)}" '
            f'style="width:100%"></progress><div class="gs-muted">{html.escape(message)} '
            f'({percent}%)</div></div>')


def stream_task(ctx, task: str, params: dict, request: gr.Request | None) -> Iterator[tuple]:
    """Run a task in a thread and yield (status html, preview, results, item ids) as it goes.
    Bad input becomes gr.Error with the ValueError's message; Cancel saves nothing."""
    try:
        validate_task(ctx, task, params)
    except ValueError as error:
        raise gr.Error(str(error))
    session = getattr(request, "session_hash", None) or "default"
    cancel = CancelToken()
    _running[session] = cancel
    events: queue_module.Queue = queue_module.Queue()
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["result"] = run_task(ctx, task, params, events.put, cancel)
        except BaseException as error:  # reported in the UI thread below
            outcome["error"] = error
        finally:
            events.put(None)

    threading.Thread(target=work, name=f"ui-{task}", daemon=True).start()
    yield progress_html(0, 1, "loading the model / starting…"), None, gr.skip(), gr.skip()
    preview = None
    while (event := events.get()) is not None:
        while not events.empty():  # skip to the newest event; keep the newest preview
            following = events.get()
            if following is None:
                events.put(None)
                break
            if event.preview is not None and following.preview is None:
                following = type(following)(following.step, following.total, following.message,
                                            event.preview)
            event = following
        preview = event.preview if event.preview is not None else preview
        yield progress_html(event.step, event.total, event.message), preview, gr.skip(), gr.skip()
    _running.pop(session, None)
    error = outcome.get("error")
    if isinstance(error, Cancelled):
        gr.Warning("Cancelled: nothing was saved.")
        yield "Cancelled: nothing was saved.", None, gr.skip(), gr.skip()
        return
    if isinstance(error, (ValueError, EngineError)):
        raise gr.Error(str(error))
    if error is not None:
        raise gr.Error(f"Generation failed: {type(error).__name__}: {error}")
    result = outcome["result"]
    items = [ctx.gallery.get(i) for i in result.item_ids]
    gallery_value = [(str(item.file_path), f"#{item.id} seed {item.seed}") for item in items]
    info = result.info
    status = (f"Saved {len(items)} image(s) to the gallery: "
              + ", ".join(f"#{i.id}" for i in items)
              + f" · {info.get('seconds', 0):.2f} s"
              + (f" · {info['seconds_per_step']:.3f} s/step" if info.get("seconds_per_step") else "")
              + "".join(f"<br>⚠ {html.escape(w)}" for w in info.get("warnings", [])))
    yield status, None, gallery_value, [i.id for i in items]


def cancel_running(request: gr.Request | None = None) -> str:
    token = _running.get(getattr(request, "session_hash", None) or "default")
    if token is None:
        return "Nothing is running."
    token.cancel()
    return "Cancelling after the current step…"


def enqueue(ctx, task: str, params: dict) -> str:
    if ctx.queue is None:
        raise gr.Error("The queue is not running in this studio.")
    try:
        validate_task(ctx, task, params)
        job_id = ctx.queue.enqueue(task, params, priority=0)
    except ValueError as error:
        raise gr.Error(str(error))
    gr.Info(f"Queued as job #{job_id}.")
    return f"Queued as job #{job_id}; see the Queue tab."


def selected_item(ids: list[int], index: int | None) -> int:
    if not ids:
        raise gr.Error("Generate something first.")
    return ids[index if index is not None and index < len(ids) else 0]


def on_select(evt: gr.SelectData) -> int:
    return evt.index


# ------------------------------------------------------------------ this tab
def _params(mode, prompt, negative, steps, cfg, scheduler, width, height, seed, batch_size,
            batch_count, candidates, keep, model, init_path, strength, source_id,
            token_merging=0.0, step_cache=0) -> tuple[str, dict]:
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
    if mode == "img2img":
        if not init_path:
            raise gr.Error("Image to image needs an image: upload one or send one here.")
        params["strength"] = float(strength)
        if source_id:
            params["init_image_id"] = int(source_id)
        else:
            params["init_image"] = file_as_base64(init_path)
        return "img2img", params
    if candidates:
        params.update(candidates=int(candidates), keep=int(min(keep, candidates)))
    return "txt2img", params


def build(ctx) -> dict[str, Any]:
    ids = gr.State([])
    chosen = gr.State(None)
    source_id = gr.State(None)
    with gr.Row():
        with gr.Column(scale=3):
            prompt = gr.Textbox(label="Prompt", lines=3, elem_id="txt2img-prompt",
                                placeholder="a small red star at the top left on a blue background")
            negative = gr.Textbox(label="Negative prompt", lines=1)
        with gr.Column(scale=1, min_width=200):
            generate = gr.Button("Generate", variant="primary", elem_id="txt2img-generate")
            with gr.Row():
                cancel = gr.Button("Cancel", variant="stop", size="sm", elem_id="txt2img-cancel")
                add_queue = gr.Button("Add to queue", size="sm", elem_id="txt2img-queue")
            mode = gr.Radio(["txt2img", "img2img"], value="txt2img", label="Mode",
                            elem_id="txt2img-mode")
    with gr.Row():
        with gr.Column(scale=2):
            with gr.Accordion("Image to image", open=False) as img2img_box:
                init_image = gr.Image(type="filepath", label="Init image", height=256,
                                      sources=["upload", "clipboard"], elem_id="txt2img-init")
                strength = gr.Slider(0.05, 1.0, value=0.75, step=0.05,
                                     label="Denoising strength")
            with gr.Row():
                steps = gr.Slider(1, 150, value=20, step=1, label="Steps")
                cfg = gr.Slider(0, 30, value=model_defaults(DEFAULT_MODEL)[0], step=0.5,
                                label="CFG scale")
                scheduler = gr.Dropdown(SCHEDULER_NAMES, value="DPM++ 2M", label="Sampler")
            with gr.Row():
                width = gr.Slider(64, 2048, value=64, step=8, label="Width")
                height = gr.Slider(64, 2048, value=64, step=8, label="Height")
                seed = gr.Number(value=-1, precision=0, label="Seed (-1 = random)",
                                 elem_id="txt2img-seed")
            with gr.Row():
                batch_size = gr.Slider(1, 16, value=1, step=1, label="Batch size",
                                       elem_id="txt2img-batch-size")
                batch_count = gr.Slider(1, 16, value=1, step=1, label="Batch count")
                candidates = gr.Slider(0, 32, value=0, step=1,
                                       label="Best of N (0 = off; keeps K by CLIP score)")
                keep = gr.Slider(1, 16, value=1, step=1, label="Keep K")
            model = gr.Dropdown(model_choices(ctx), value=DEFAULT_MODEL, label="Model",
                                allow_custom_value=True, elem_id="txt2img-model",
                                info="The embedded model makes 64×64 images; others from "
                                     "data/models (diffusers folders or .safetensors).")
            token_merging = gr.Slider(0, 0.75, value=0, step=0.05,
                                      label="Token merging ratio (ToMe: faster large images, "
                                            "slightly different; 0 = exact)")
            step_cache = gr.Slider(0, 5, value=0, step=1,
                                   label="Step cache (DeepCache: whole UNet every N steps, "
                                         "faster, slightly different; 0 = exact)")
        with gr.Column(scale=2):
            status = gr.HTML(elem_id="txt2img-status")
            preview = gr.Image(label="Preview", interactive=False, height=192,
                               elem_id="txt2img-preview")
            results = gr.Gallery(label="Results", columns=4, height=260, allow_preview=True,
                                 elem_id="txt2img-results")
            with gr.Row():
                reuse = gr.Button("Reuse parameters", size="sm")
                to_img2img = gr.Button("Send to img2img", size="sm")
                to_inpaint = gr.Button("Send to inpaint", size="sm")
                to_style = gr.Button("Send to style transfer", size="sm")
                to_queue = gr.Button("Send prompt to queue", size="sm")
            with gr.Row():
                open_id = gr.Number(label="Open gallery item #", precision=0, scale=2)
                open_button = gr.Button("Open from gallery", size="sm", scale=1)

    controls = [mode, prompt, negative, steps, cfg, scheduler, width, height, seed, batch_size,
                batch_count, candidates, keep, model, init_image, strength, source_id,
                token_merging, step_cache]

    def run(request: gr.Request, *values):  # gradio puts the request first, by its type
        task, params = _params(*values)
        yield from stream_task(ctx, task, params, request)

    generate.click(run, controls, [status, preview, results, ids], concurrency_limit=4)
    cancel.click(cancel_running, None, status)
    add_queue.click(lambda *v: enqueue(ctx, *_params(*v)), controls, status)
    results.select(on_select, None, chosen)

    # An image arriving (upload or "send to") switches to img2img and remembers its source item.
    def image_arrived(path):
        if not path:
            return gr.skip(), None, gr.skip()
        return "img2img", item_for_path(ctx, path), gr.Accordion(open=True)

    init_image.change(image_arrived, init_image, [mode, source_id, img2img_box])

    # Picking another model (by hand: `input`, not `change`, so "reuse parameters" keeps the
    # item's own values) moves CFG and size to what that model works best with.
    def model_picked(name):
        guidance, side = model_defaults(name)
        return guidance, side, side

    model.input(model_picked, model, [cfg, width, height])

    def apply_item(item_id):
        """Every control from a gallery item's saved params (reuse / open from gallery)."""
        try:
            item = ctx.gallery.get(int(item_id))
        except (LookupError, TypeError, ValueError):
            raise gr.Error(f"No gallery item #{item_id}.")
        if item.engine != "diffusion":
            raise gr.Error(f"Item #{item.id} was not made by the diffusion engine.")
        p = item.params
        return (item.prompt, item.negative_prompt, p.get("steps", 20),
                p.get("guidance_scale", 7), p.get("scheduler", "DPM++ 2M"),
                p.get("width", item.width or 64), p.get("height", item.height or 64),
                item.seed if item.seed is not None else -1, p.get("model", DEFAULT_MODEL),
                p.get("strength", 0.75))

    applied = [prompt, negative, steps, cfg, scheduler, width, height, seed, model, strength]
    reuse.click(lambda i, c: apply_item(selected_item(i, c)), [ids, chosen], applied)

    def open_item(item_id):
        values = apply_item(item_id)
        item = ctx.gallery.get(int(item_id))
        return (*values, str(item.file_path) if item.file_path else None)

    open_button.click(open_item, open_id, applied + [init_image])
    to_img2img.click(lambda i, c: str(ctx.gallery.get(selected_item(i, c)).file_path),
                     [ids, chosen], init_image)
    return {"prompt": prompt, "negative_prompt": negative, "init_image": init_image,
            "_ids": ids, "_chosen": chosen,
            "_send": {"inpaint": to_inpaint, "style": to_style, "queue": to_queue}}


def wire(ctx, tabs, handles: dict) -> None:
    connect_send_buttons(ctx, tabs, handles, TAB_ID)


def connect_send_buttons(ctx, tabs, handles: dict, own_tab: str) -> None:
    """"Send to" buttons of a tab with a results strip: image receivers get the file path of the
    chosen result (so lineage follows), the queue gets its prompt; missing receivers hide."""
    own = handles[own_tab]
    targets = {"inpaint": ("inpaint", "image"), "style": ("style", "image"),
               "queue": ("queue", "prompt"), "img2img": ("txt2img", "init_image")}
    for key, button in own.get("_send", {}).items():
        tab_id, name = targets[key]
        receiver = handles.get(tab_id, {}).get(name)
        if receiver is None:
            button.visible = False
            continue

        def send(ids, chosen, tab_id=tab_id, name=name):
            item = ctx.gallery.get(selected_item(ids, chosen))
            value = item.prompt if name == "prompt" else str(item.file_path)
            return value, gr.Tabs(selected=tab_id)

        button.click(send, [own["_ids"], own["_chosen"]], [receiver, tabs])
