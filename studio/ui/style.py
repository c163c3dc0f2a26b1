"""Style transfer tab: restyle a photo with a GAN style (pretrained, embedded or trained here) or
with any painting (Magenta's arbitrary network, labelled as not a GAN); train a new style.

Thin: every generation goes through the "style" task (validation, device lock, gallery with
lineage), and "Add to queue" queues the same request as a `style` job; training is a
`studio.tasks.style.TrainingRun` in a background thread, polled by a timer. No torch and no
engine import at module level.
"""
from __future__ import annotations

import base64
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import gradio as gr
from PIL import Image

if TYPE_CHECKING:
    from studio.context import StudioContext

TAB_ID = "style"
TITLE = "Style transfer"
OUTPUT_SIZES = ["Same as input", "256", "512", "1024", "2048"]


def _styles(ctx):
    from engines.style.engine import list_styles

    return list_styles(ctx.config.styles_dir)


def _style_choices(ctx) -> list[tuple[str, str]]:
    return [(f"{s.name} [{s.source}]", s.id) for s in _styles(ctx)]


def _style_cards(ctx) -> tuple[list[tuple[str, str]], list[str]]:
    """Gallery entries (picture, caption) for styles that have a picture, and their ids."""
    cards, ids = [], []
    for s in _styles(ctx):
        own = [p for p in s.thumbnails if p.name.startswith("style_")] or list(s.thumbnails)
        picture = s.preview or (own[0] if own else None)
        if picture is not None:
            cards.append((str(picture), s.name))
            ids.append(s.id)
    return cards, ids


def _describe(ctx, style_id: str):
    """(markdown, training thumbnails, style-image box update) for the chosen style."""
    style = next((s for s in _styles(ctx) if s.id == style_id), None)
    if style is None:
        return "*Unknown style.*", [], gr.update(visible=False)
    lines = [f"**{style.name}** · {'GAN' if style.kind == 'gan' else 'not a GAN'} · "
             f"{style.source}", style.description]
    generator = style.settings.get("generator")
    if generator:
        lines.append(f"Generator: ResNet, {generator['n_blocks']} blocks, {generator['ngf']} "
                     "base channels")
    training = style.settings.get("training")
    if training:
        lines.append(f"Trained {training.get('iterations_done')} iterations at "
                     f"{training.get('size')} px in {training.get('seconds', 0) / 60:.0f} min "
                     f"from {training.get('style_images')} style and "
                     f"{training.get('content_images')} content images")
    thumbs = [str(p) for p in style.thumbnails]
    return "\n\n".join(lines), thumbs, gr.update(visible=style.kind == "arbitrary")


def _gallery_item_for(ctx, path: str | None) -> int | None:
    """The gallery item whose file this is (gallery files are named by their uid)."""
    item = ctx.gallery.find_by_uid(Path(path).stem) if path else None
    return item.id if item is not None else None


def _settings(style_id, strength_value, size_choice) -> dict:
    return {"style": style_id, "strength": float(strength_value),
            "output_side": None if size_choice == OUTPUT_SIZES[0] else int(size_choice)}


def queue_style(ctx, path, parent, style_id, strength_value, size_choice, painting):
    """"Add to queue": a `style` job; returns (status, the photo's gallery item or gr.skip()).

    The photo goes by gallery id, never embedded: one sent from the gallery is its item; an
    upload is saved to the gallery first, as Apply style saves it (the result's parent), and its
    id is kept so queueing it again reuses it. A painting for the arbitrary style that is not a
    gallery item goes as base64 (the task never stores it)."""
    from studio.tasks import validate_task
    from studio.ui.add_to_queue import refuse, try_enqueue

    lands = "The result will be saved to the gallery with the photo as its parent."
    if not path:
        return refuse("Upload a photo first (or send one from the gallery): nothing was "
                      "queued."), gr.skip()
    if ctx.queue is None:  # before an upload is saved for nothing
        return refuse("The queue is not running in this studio: nothing was queued."), gr.skip()
    params = _settings(style_id, strength_value, size_choice)
    style = next((s for s in _styles(ctx) if s.id == style_id), None)
    if painting and style is not None and style.kind == "arbitrary":
        painting_id = _gallery_item_for(ctx, painting)
        if painting_id is not None:
            params["style_image_id"] = painting_id
        else:
            params["style_image"] = base64.b64encode(Path(painting).read_bytes()).decode("ascii")
    if parent is not None:
        return try_enqueue(ctx, "style", {**params, "image_id": int(parent)}, lands)[1], gr.skip()
    try:  # check everything against the file before saving it
        validate_task(ctx, "style", {**params, "image": Path(path)})
    except ValueError as error:
        return refuse(f"Not queued: {error}"), gr.skip()
    from engines.style.engine import open_image

    saved = ctx.gallery.add_image(open_image(path, "image"), task="upload", engine="",
                                  prompt="uploaded photo", params={"source": "style tab"})
    job_id, status = try_enqueue(ctx, "style", {**params, "image_id": saved.id}, lands)
    if job_id is None:
        ctx.gallery.delete(saved.id)
        return status, gr.skip()
    return status, saved.id


def build(ctx: "StudioContext") -> dict[str, gr.Component]:
    running: dict[str, object] = {}  # session -> CancelToken of its generation
    training: dict[str, object] = {"run": None}  # one training at a time per studio
    card_ids = gr.State([])
    parent_id = gr.State(None)  # set when the photo came from the gallery

    gr.Markdown("Restyle a photo with a **GAN** (CycleGAN generators: the pretrained vintage "
                "photo model, the embedded styles, styles you train below), or use any painting "
                "as the style with Magenta's arbitrary network (**not a GAN**).",
                elem_classes="gs-muted")
    with gr.Row():
        with gr.Column(scale=1):
            source_path = gr.Textbox(visible=False, elem_id="style-source-path")
            image = gr.Image(label="Photo", type="filepath", image_mode=None,
                             sources=["upload", "webcam", "clipboard"], height=300,
                             elem_id="style-input")
            cards = gr.Gallery(label="Styles (click one)", columns=4, height=190,
                               allow_preview=False, object_fit="cover", elem_id="style-cards")
            with gr.Row():
                style = gr.Dropdown(label="Style", choices=[], elem_id="style-choice", scale=4)
                refresh = gr.Button("↻", size="sm", scale=0, min_width=40)
            about = gr.Markdown(elem_id="style-about")
            thumbs = gr.Gallery(label="Training images of this style", columns=6, height=110,
                                allow_preview=False, object_fit="cover")
            style_image = gr.Image(label="Style painting (any picture)", type="filepath",
                                   image_mode=None, visible=False, height=200)
            strength = gr.Slider(0.0, 1.0, value=1.0, step=0.05, label="Strength",
                                 info="0 keeps the photo, 1 is the style's full output")
            output_size = gr.Dropdown(OUTPUT_SIZES, value=OUTPUT_SIZES[0],
                                      label="Output size (long side, px)")
            with gr.Row():
                apply = gr.Button("Apply style", variant="primary", elem_id="style-apply")
                stop = gr.Button("Stop", variant="stop", elem_id="style-stop")
                add_queue = gr.Button("Add to queue", elem_id="style-queue")
        with gr.Column(scale=1):
            result = gr.ImageSlider(label="Before / after", type="filepath", image_mode=None,
                                    elem_id="style-result", max_height=560)
            status = gr.Markdown(elem_id="style-status")

    # ------------------------------------------------------------ train a new style
    with gr.Accordion("Train a new style", open=False, elem_id="style-train"):
        gr.Markdown("Unpaired CycleGAN: give pictures in the style and photos to restyle; no "
                    "pairs needed. At 128 px on one CPU core a rough style shows within ~10 "
                    "minutes (several hundred iterations). Runs in the background; Cancel keeps "
                    "a checkpoint, and starting again with the same name resumes it.",
                    elem_classes="gs-muted")
        with gr.Row():
            with gr.Column():
                train_name = gr.Textbox(label="Style name", placeholder="e.g. My watercolours")
                style_files = gr.File(label="Style images", file_count="multiple",
                                      file_types=["image"])
                content_files = gr.File(label="Content images (photos)", file_count="multiple",
                                        file_types=["image"])
                with gr.Row():
                    content_items = gr.Dropdown(label="…or content images from the gallery",
                                                multiselect=True, choices=[], scale=4)
                    gallery_refresh = gr.Button("↻", size="sm", scale=0, min_width=40)
                train_size = gr.Slider(64, 256, value=128, step=32, label="Image size (px)")
                iterations = gr.Slider(50, 5000, value=600, step=50, label="Iterations")
                with gr.Row():
                    train_start = gr.Button("Start training", variant="primary")
                    train_cancel = gr.Button("Cancel", variant="stop")
            with gr.Column():
                train_status = gr.Markdown("*No training running.*")
                losses_plot = gr.LinePlot(x="iteration", y="loss", color="name", height=260,
                                          label="Losses (mean of 10 iterations)")
                sample = gr.Image(label="Samples: content (top) and restyled (bottom)",
                                  interactive=False, height=260)
    timer = gr.Timer(2.0, active=False)

    # ------------------------------------------------------------ handlers
    def refresh_styles(current):
        choices = _style_choices(ctx)
        ids = [c[1] for c in choices]
        value = current if current in ids else ("vintage" if "vintage" in ids else
                                                (ids[0] if ids else None))
        entries, entry_ids = _style_cards(ctx)
        text, pictures, box = _describe(ctx, value) if value else ("", [], gr.update())
        return gr.update(choices=choices, value=value), entries, entry_ids, text, pictures, box

    def pick_card(ids, event: gr.SelectData):
        return ids[event.index] if 0 <= event.index < len(ids) else gr.skip()

    def from_gallery(path):
        # a "send to" from the gallery: show the picture and remember its item as the parent
        return path or None, _gallery_item_for(ctx, path)

    def on_upload(_):
        return None  # a new upload has no gallery parent yet

    def run_style(path, parent, style_id, strength_value, size_choice, painting,
                  request: gr.Request):
        from engines.base import Cancelled, CancelToken
        from studio.tasks import run_task

        if not path:
            raise gr.Error("Upload a photo first (or send one from the gallery).")
        params = _settings(style_id, strength_value, size_choice)
        if parent is not None:
            params["image_id"] = parent
        else:
            params["image"] = Path(path)
        if painting:
            params["style_image"] = Path(painting)
        cancel = CancelToken()
        running[request.session_hash] = cancel
        progress: dict = {"text": "*loading the style…*"}
        outcome: dict = {}

        def work():
            try:
                outcome["result"] = run_task(ctx, "style", params, on_progress=lambda p: progress.update(
                    text=f"*{p.message} ({p.fraction:.0%})*"), cancel=cancel)
            except BaseException as error:  # handed to the UI thread below
                outcome["error"] = error

        worker = threading.Thread(target=work, daemon=True)
        started = time.perf_counter()
        worker.start()
        while worker.is_alive():
            worker.join(0.3)
            yield gr.skip(), progress["text"]
        running.pop(request.session_hash, None)
        error = outcome.get("error")
        if isinstance(error, Cancelled):
            yield gr.skip(), "Stopped; nothing was saved."
            return
        if isinstance(error, ValueError):
            raise gr.Error(str(error))
        if error is not None:
            raise gr.Error(f"Style transfer failed: {error}")
        res = outcome["result"]
        item = ctx.gallery.get(res.item_ids[0])
        before = ctx.gallery.get(item.parent_id).file_path if item.parent_id else path
        yield ((str(before), str(item.file_path)),
               f"Saved to the gallery as **#{item.id}** (parent #{item.parent_id}) · "
               f"{item.width}×{item.height} · {time.perf_counter() - started:.1f} s")

    def stop_style(request: gr.Request):
        cancel = running.get(request.session_hash)
        if cancel is not None:
            cancel.cancel()

    def gallery_choices():
        from studio.gallery.store import GalleryQuery

        page = ctx.gallery.query(GalleryQuery(kind="image", page_size=100))
        return gr.update(choices=[(f"#{i.id} {i.prompt[:40]}", i.id) for i in page.items])

    def start_training(name, style_uploads, content_uploads, item_ids, size, iters):
        from studio.tasks.style import TrainingRun

        current = training["run"]
        if current is not None and current.running:
            raise gr.Error("A style is already training; cancel it or wait for it to finish.")
        if not name or not name.strip():
            raise gr.Error("Give the new style a name.")
        try:
            from engines.style.engine import open_image

            styles = [open_image(f, "style image").convert("RGB") for f in style_uploads or []]
            contents = [open_image(f, "content image").convert("RGB") for f in content_uploads or []]
            contents += [ctx.gallery.open_image(int(i)).convert("RGB") for i in item_ids or []]
            run = TrainingRun(ctx, name, styles, contents, size=int(size), iterations=int(iters))
        except ValueError as error:
            raise gr.Error(str(error)) from None
        training["run"] = run.start()
        return gr.Timer(active=True), f"*Training **{run.name}**: starting…*"

    def cancel_training():
        run = training["run"]
        if run is not None and run.running:
            run.cancel()
            return "*Cancelling after the current iteration…*"
        return gr.skip()

    def poll(current_style):
        import pandas as pd

        run = training["run"]
        if run is None:
            return (gr.Timer(active=False), gr.skip(), gr.skip(), gr.skip(), gr.skip(),
                    gr.skip(), gr.skip())
        s = run.status
        rows = []
        for start in range(0, len(s.losses) - 9, 10):
            window = s.losses[start:start + 10]
            for name in ("G_gan", "G_cycle", "G_identity", "D_A", "D_B"):
                rows.append({"iteration": window[-1]["iteration"], "name": name,
                             "loss": sum(r[name] for r in window) / len(window)})
        frame = pd.DataFrame(rows, columns=["iteration", "name", "loss"])
        per_it = s.seconds / s.iteration if s.iteration else 0
        text = (f"**{run.name}** · {s.state} · iteration {s.iteration}/{s.total}"
                + (f" · {per_it:.2f} s/iteration" if per_it else "")
                + (f"\n\n{s.message}" if s.state not in ("running", "starting") else ""))
        finished = not run.running
        if finished and s.state == "done":
            dropdown, entries, ids, about_text, pictures, box = refresh_styles(s.style_id)
        else:
            dropdown = entries = ids = gr.skip()
        return (gr.Timer(active=not finished), text, frame,
                s.preview if s.preview is not None else gr.skip(), dropdown, entries, ids)

    # ------------------------------------------------------------ wiring
    style_outputs = [style, cards, card_ids, about, thumbs, style_image]
    refresh.click(refresh_styles, [style], style_outputs)
    cards.select(pick_card, [card_ids], [style])
    style.change(lambda sid: _describe(ctx, sid), [style], [about, thumbs, style_image])
    source_path.change(from_gallery, [source_path], [image, parent_id])
    image.upload(on_upload, [image], [parent_id])
    image.input(on_upload, [image], [parent_id])  # webcam, clipboard
    image.clear(lambda: None, None, [parent_id])
    event = apply.click(run_style, [image, parent_id, style, strength, output_size, style_image],
                        [result, status])
    stop.click(stop_style, None, None, cancels=[event])
    add_queue.click(lambda *values: queue_style(ctx, *values),
                    [image, parent_id, style, strength, output_size, style_image],
                    [status, parent_id])
    gallery_refresh.click(gallery_choices, None, [content_items])
    train_start.click(start_training, [train_name, style_files, content_files, content_items,
                                       train_size, iterations], [timer, train_status])
    train_cancel.click(cancel_training, None, [train_status])
    timer.tick(poll, [style], [timer, train_status, losses_plot, sample, style, cards, card_ids])
    return {"image": source_path, "_refresh": (refresh_styles, [style], style_outputs)}


def on_load(ctx, demo: gr.Blocks, own: dict) -> None:
    handler, inputs, outputs = own["_refresh"]
    demo.load(handler, inputs, outputs)
