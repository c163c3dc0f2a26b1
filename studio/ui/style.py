"""Style transfer tab: restyle a photo with a GAN style (pretrained, embedded or trained here) or
with any painting (Magenta's arbitrary network, labelled as not a GAN); train a new style (the
accordion at the bottom, studio/ui/style_train.py).

Thin: Apply style runs the "style" task as an interactive job through the runner, Add to queue
queues the same request; the photo enters once, as a gallery item referenced by id. No torch
and no engine import at module level.
"""
from __future__ import annotations

import base64
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import gradio as gr

from studio.ui import style_train
from studio.ui.add_to_queue import refuse, try_enqueue
from studio.ui.widgets import PRIVATE, action_row, before_after, wire_cancel, follow_job

if TYPE_CHECKING:
    from studio.context import StudioContext

TAB_ID = "style"
TITLE = "Style transfer"
OUTPUT_SIZES = ["Same as input", "256", "512", "1024", "2048"]
LANDS = "The result will be saved to the gallery with the photo as its parent."


def _styles(ctx):
    from engines.style.engine import list_styles

    return list_styles(ctx.config.styles_dir)


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


def describe(ctx, style_id: str):
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


def refresh_styles(ctx, current):
    """The style list, cards and description, keeping the current choice when it still exists."""
    styles = _styles(ctx)
    ids = [s.id for s in styles]
    value = current if current in ids else ("vintage" if "vintage" in ids else
                                            (ids[0] if ids else None))
    entries, entry_ids = _style_cards(ctx)
    text, pictures, box = describe(ctx, value) if value else ("", [], gr.update())
    choices = [(f"{s.name} [{s.source}]", s.id) for s in styles]
    return gr.update(choices=choices, value=value), entries, entry_ids, text, pictures, box


def _gallery_item_for(ctx, path: str | None) -> int | None:
    """The gallery item whose file this is (gallery files are named by their uid)."""
    item = ctx.gallery.find_by_uid(Path(path).stem) if path else None
    return item.id if item is not None else None


def photo_params(ctx, path, parent, style_id, strength_value, size_choice,
                 painting) -> tuple[dict, int | None]:
    """The "style" params for the tab's values: (params, id of an upload saved just now).

    The photo goes by gallery id, never embedded: one sent from the gallery is its item; an
    upload is checked, then saved to the gallery (the result's parent). A painting for the
    arbitrary style that is not a gallery item goes as base64 (the task never stores it).
    Raises ValueError naming what is wrong, before anything is saved."""
    from studio.tasks import validate_task

    if not path:
        raise ValueError("Upload a photo first (or send one from the gallery).")
    params = {"style": style_id, "strength": float(strength_value),
              "output_side": None if size_choice == OUTPUT_SIZES[0] else int(size_choice)}
    style = next((s for s in _styles(ctx) if s.id == style_id), None)
    if painting and style is not None and style.kind == "arbitrary":
        painting_id = _gallery_item_for(ctx, painting)
        if painting_id is not None:
            params["style_image_id"] = painting_id
        else:
            params["style_image"] = base64.b64encode(Path(painting).read_bytes()).decode("ascii")
    if parent is not None:
        return {**params, "image_id": int(parent)}, None
    validate_task(ctx, "style", {**params, "image": Path(path)})  # before saving the upload
    from engines.style.engine import open_image

    saved = ctx.gallery.add_image(open_image(path, "image"), task="upload", engine="",
                                  prompt="uploaded photo", params={"source": "style tab"})
    return {**params, "image_id": saved.id}, saved.id


def queue_style(ctx, path, parent, style_id, strength_value, size_choice, painting):
    """"Add to queue": a `style` job; returns (status, the photo's gallery item or gr.skip()),
    so queueing the same upload again reuses its item."""
    if not path:
        return refuse("Upload a photo first (or send one from the gallery): nothing was "
                      "queued."), gr.skip()
    if ctx.queue is None:  # before an upload is saved for nothing
        return refuse("The queue is not running in this studio: nothing was queued."), gr.skip()
    try:
        params, saved = photo_params(ctx, path, parent, style_id, strength_value, size_choice,
                                     painting)
    except ValueError as error:
        return refuse(f"Not queued: {error}"), gr.skip()
    job_id, status = try_enqueue(ctx, "style", params, LANDS)
    if job_id is None and saved is not None:
        ctx.gallery.delete(saved)
    return status, (saved if job_id is not None and saved is not None else gr.skip())


def apply_style(ctx, path, parent, style_id, strength_value, size_choice, painting):
    """Apply style: yields (job id, before/after, status, photo's item) as the job runs."""
    try:
        params, saved = photo_params(ctx, path, parent, style_id, strength_value, size_choice,
                                     painting)
    except ValueError as error:
        raise gr.Error(str(error)) from None
    keep = saved if saved is not None else gr.skip()
    update = None
    for update in follow_job(ctx, "style", params):
        if not update.finished:
            yield update.job_id, gr.skip(), f"*{update.message or 'loading the style…'}*", keep
    if update.status != "completed":  # the upload stays: it is the user's photo, and the parent
        yield None, gr.skip(), ("Stopped; nothing was saved." if update.status == "canceled"
                                else f"⚠️ {update.error or 'Style transfer failed.'}"), keep
        return
    item = ctx.gallery.get(update.result["item_ids"][0])
    before = ctx.gallery.get(item.parent_id).file_path if item.parent_id else path
    seconds = (update.result.get("info") or {}).get("seconds")
    yield (None, (str(before), str(item.file_path)),
           f"Saved to the gallery as **#{item.id}** (parent #{item.parent_id}) · "
           f"{item.width}×{item.height}" + (f" · {seconds:.1f} s" if seconds else ""), keep)


def pick_card(ids, event: gr.SelectData):
    return ids[event.index] if 0 <= event.index < len(ids) else gr.skip()


def from_gallery(ctx, path):
    """A "send to" from the gallery: show the picture and remember its item as the parent."""
    return path or None, _gallery_item_for(ctx, path)


def no_parent(*_):
    return None  # a new upload has no gallery item yet


def _controls() -> dict:
    c: dict = {}
    gr.Markdown("Restyle a photo with a **GAN** (CycleGAN generators: the pretrained vintage "
                "photo model, the embedded styles, styles you train below), or use any painting "
                "as the style with Magenta's arbitrary network (**not a GAN**).",
                elem_classes="gs-muted")
    with gr.Row():
        with gr.Column(scale=1):
            c["source_path"] = gr.Textbox(visible=False, elem_id="style-source-path")
            c["image"] = gr.Image(label="Photo", type="filepath", image_mode=None, height=300,
                                  sources=["upload", "webcam", "clipboard"], elem_id="style-input")
            c["cards"] = gr.Gallery(label="Styles (click one)", columns=4, height=190,
                                    allow_preview=False, object_fit="cover", elem_id="style-cards")
            with gr.Row():
                c["style"] = gr.Dropdown(label="Style", choices=[], elem_id="style-choice", scale=4)
                c["refresh"] = gr.Button("↻", size="sm", scale=0, min_width=40)
            c["about"] = gr.Markdown(elem_id="style-about")
            c["thumbs"] = gr.Gallery(label="Training images of this style", columns=6, height=110,
                                     allow_preview=False, object_fit="cover")
            c["style_image"] = gr.Image(label="Style painting (any picture)", type="filepath",
                                        image_mode=None, visible=False, height=200)
            c["strength"] = gr.Slider(0.0, 1.0, value=1.0, step=0.05, label="Strength",
                                      info="0 keeps the photo, 1 is the style's full output")
            c["output_size"] = gr.Dropdown(OUTPUT_SIZES, value=OUTPUT_SIZES[0],
                                           label="Output size (long side, px)")
            c["apply"], c["stop"], c["add_queue"] = action_row("style", "Apply style", "apply")
        with gr.Column(scale=1):
            c["result"] = before_after("style", 560)
            c["status"] = gr.Markdown(elem_id="style-status")
    return c


def build(ctx: "StudioContext") -> dict[str, gr.Component]:
    c = _controls()
    card_ids, parent_id, job = gr.State([]), gr.State(None), gr.State(None)
    style_outputs = [c["style"], c["cards"], card_ids, c["about"], c["thumbs"], c["style_image"]]
    c["refresh"].click(partial(refresh_styles, ctx), [c["style"]], style_outputs, **PRIVATE)
    c["cards"].select(pick_card, [card_ids], [c["style"]], **PRIVATE)
    c["style"].change(partial(describe, ctx), [c["style"]],
                      [c["about"], c["thumbs"], c["style_image"]], **PRIVATE)
    c["source_path"].change(partial(from_gallery, ctx), [c["source_path"]],
                            [c["image"], parent_id], **PRIVATE)
    for event in (c["image"].upload, c["image"].input, c["image"].clear):  # webcam, clipboard too
        event(no_parent, None, [parent_id], **PRIVATE)
    values = [c["image"], parent_id, c["style"], c["strength"], c["output_size"], c["style_image"]]
    c["apply"].click(partial(apply_style, ctx), values, [job, c["result"], c["status"], parent_id],
                     concurrency_limit=None, **PRIVATE)
    wire_cancel(ctx, c["stop"], job)
    c["add_queue"].click(partial(queue_style, ctx), values, [c["status"], parent_id], **PRIVATE)
    trained = style_train.build(ctx)
    trained.then(partial(refresh_styles, ctx), [c["style"]], style_outputs, **PRIVATE)
    return {"image": c["source_path"], "_refresh": (partial(refresh_styles, ctx), [c["style"]],
                                                    style_outputs)}


def on_load(ctx, demo: gr.Blocks, own: dict) -> None:
    handler, inputs, outputs = own["_refresh"]
    demo.load(handler, inputs, outputs, **PRIVATE)
