"""Gallery tab: every output, text and image — search, filters, pages, details, lineage, actions.

The grid shows one page of thumbnails at a time (the store pages with LIMIT/OFFSET over indexed
columns), so it stays fast with 100,000 items. Text outputs get a small rendered card as their
thumbnail, cached under <data_dir>/cache/textcards.
"""
from __future__ import annotations

import textwrap
from datetime import datetime, timedelta
from pathlib import Path

import gradio as gr
from PIL import Image, ImageDraw

from studio.gallery.store import GalleryQuery, ItemView

TAB_ID = "gallery"
TITLE = "Gallery"
PAGE_SIZE = 48
ALL = "all"

# (target tab, receiver name, button label); a button shows only if that tab has the receiver.
IMAGE_TARGETS = (("txt2img", "init_image", "Send to img2img"), ("inpaint", "image", "Send to inpaint"),
                 ("style", "image", "Send to style transfer"))
TEXT_TARGETS = (("chat", "message", "Send to chat"), ("code", "code", "Send to code"))
PROMPT_TARGETS = (("txt2img", "prompt", "Reuse prompt"), ("queue", "prompt", "Send prompt to queue"))


def _parse_day(value: str, field: str) -> datetime | None:
    value = (value or "").strip()
    if not value:
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%d")
    except ValueError:
        raise gr.Error(f"{field} must be a date like 2026-11-28, got {value!r}")


def _text_card(ctx, item: ItemView) -> str:
    """A thumbnail for a text output: its first lines on a plain card."""
    path = ctx.config.data_dir / "cache" / "textcards" / f"{item.uid}.png"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        card = Image.new("RGB", (256, 256), (245, 245, 240))
        draw = ImageDraw.Draw(card)
        draw.text((10, 8), f"{item.task} · {item.model}"[:40], fill=(110, 110, 110))
        body = "\n".join(textwrap.wrap((item.text or "").replace("\n", " ⏎ "), 38)[:14])
        draw.text((10, 30), body, fill=(20, 20, 20))
        card.save(path)
    return str(path)


def _caption(item: ItemView) -> str:
    prompt = (item.prompt or item.text or "").replace("\n", " ")
    return f"#{item.id} {'★ ' if item.favourite else ''}{prompt[:60]}"


def _describe(ctx, item: ItemView) -> str:
    lines = [f"### #{item.id} · {item.kind} · {item.task}",
             f"**Engine** {item.engine} · **Model** {item.model or '—'} · **Seed** {item.seed if item.seed is not None else '—'}"
             + (f" · **Size** {item.width}×{item.height}" if item.width else "")
             + (f" · **Time** {item.duration_s:.2f} s" if item.duration_s else ""),
             f"**Created** {item.created_at:%Y-%m-%d %H:%M:%S} UTC"
             + (f" · **Tags** {', '.join(item.tags)}" if item.tags else ""),
             f"**Prompt** {item.prompt or '—'}"]
    if item.negative_prompt:
        lines.append(f"**Negative prompt** {item.negative_prompt}")
    chain = ctx.gallery.lineage(item.id)
    if len(chain) > 1:
        lines.append("**Lineage** " + " → ".join(f"#{a.id} ({a.task})" for a in chain))
    children = ctx.gallery.children(item.id)
    if children:
        lines.append("**Derived** " + ", ".join(f"#{c.id} ({c.task})" for c in children))
    return "\n\n".join(lines)


def build(ctx) -> dict:
    ids = gr.State([])  # item ids of the grid, in display order
    selected = gr.State(None)  # the item id shown in the detail panel
    page = gr.State(1)
    received = gr.State(None)  # receiver `item_id`: another tab puts an item id here to open it

    with gr.Row(equal_height=True):
        search = gr.Textbox(label="Search", placeholder="words from prompts and text outputs",
                            elem_id="gallery-search", scale=3)
        kind = gr.Dropdown([ALL, "image", "text"], value=ALL, label="Kind", scale=1)
        engine = gr.Dropdown([ALL], value=ALL, label="Engine", scale=1, allow_custom_value=True)
        model = gr.Dropdown([ALL], value=ALL, label="Model", scale=1, allow_custom_value=True)
    with gr.Row(equal_height=True):
        favourites = gr.Checkbox(label="Favourites only", scale=1)
        date_from = gr.Textbox(label="From (YYYY-MM-DD)", scale=1)
        date_to = gr.Textbox(label="To (YYYY-MM-DD, inclusive)", scale=1)
        refresh = gr.Button("Search / refresh", variant="primary", scale=1, elem_id="gallery-refresh")
    grid = gr.Gallery(label="Outputs", columns=8, height="auto", allow_preview=False,
                      object_fit="cover", elem_id="gallery-grid", show_label=False)
    with gr.Row(equal_height=True):
        previous = gr.Button("← Previous", size="sm")
        page_info = gr.Markdown(elem_id="gallery-page-info")
        following = gr.Button("Next →", size="sm")

    with gr.Group(visible=False, elem_id="gallery-detail-panel") as detail:
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(type="filepath", interactive=False, show_label=False, height=384)
                text = gr.Code(label="Text output", visible=False, interactive=False)
            with gr.Column(scale=1):
                description = gr.Markdown(elem_id="gallery-detail")
                params = gr.JSON(label="Parameters")
                with gr.Row():
                    favourite = gr.Button("☆ Favourite", size="sm", elem_id="gallery-favourite")
                    download = gr.DownloadButton("Download", size="sm")
                    delete = gr.Button("Delete", variant="stop", size="sm", elem_id="gallery-delete")
                with gr.Row():
                    tags = gr.Textbox(label="Tags (comma-separated)", scale=3)
                    save_tags = gr.Button("Save tags", size="sm", scale=1)
                with gr.Row():
                    open_id = gr.Number(label="Open item #", precision=0, scale=2)
                    open_button = gr.Button("Open", size="sm", scale=1)
                send_buttons = {(tab, name): gr.Button(label, size="sm", visible=True)
                                for tab, name, label in IMAGE_TARGETS + TEXT_TARGETS + PROMPT_TARGETS}

    # ------------------------------------------------------------------ handlers
    def load_page(query_text, kind_value, engine_value, model_value, favs, start, end, page_number):
        day_from, day_to = _parse_day(start, "From"), _parse_day(end, "To")
        query = GalleryQuery(
            search=query_text or "", kind=None if kind_value == ALL else kind_value,
            engine=None if engine_value in (ALL, None) else engine_value,
            model=None if model_value in (ALL, None) else model_value, favourites_only=bool(favs),
            date_from=day_from, date_to=day_to + timedelta(days=1) if day_to else None,
            page=max(1, int(page_number)), page_size=PAGE_SIZE)
        result = ctx.gallery.query(query)
        if result.page > result.pages:  # e.g. the last item of the last page was deleted
            result = ctx.gallery.query(GalleryQuery(**{**query.__dict__, "page": result.pages}))
        entries = [(str(i.thumb_path) if i.kind == "image" else _text_card(ctx, i), _caption(i))
                   for i in result.items]
        facets = ctx.gallery.facets()
        info = (f"Page {result.page} of {result.pages} · {result.total} item"
                f"{'' if result.total == 1 else 's'}" if result.total else "No items match.")
        return (entries, [i.id for i in result.items], result.page, info,
                gr.update(choices=[ALL] + facets["engine"]), gr.update(choices=[ALL] + facets["model"]))

    filters = [search, kind, engine, model, favourites, date_from, date_to]
    page_outputs = [grid, ids, page, page_info, engine, model]

    def first_page(*values):
        return load_page(*values, 1)

    def step_page(delta):
        def handler(*values):
            *rest, current = values
            return load_page(*rest, max(1, current + delta))
        return handler

    def show(item_id):
        if item_id is None:
            return (None, gr.update(visible=False)) + (gr.update(),) * 7
        try:
            item = ctx.gallery.get(int(item_id))
        except LookupError:
            gr.Warning(f"Item #{item_id} no longer exists.")
            return (None, gr.update(visible=False)) + (gr.update(),) * 7
        if item.kind == "image":
            file = str(item.file_path)
        else:
            file = ctx.config.data_dir / "cache" / "downloads" / f"{item.uid}.txt"
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_text(item.text or "")
            file = str(file)
        return (item.id, gr.update(visible=True),
                gr.update(value=file if item.kind == "image" else None, visible=item.kind == "image"),
                gr.update(value=item.text or "", visible=item.kind == "text"),
                _describe(ctx, item), item.params,
                "★ Favourite" if item.favourite else "☆ Favourite", file, ", ".join(item.tags))

    detail_outputs = [selected, detail, image, text, description, params, favourite, download, tags]

    def select(shown_ids, event: gr.SelectData):
        return show(shown_ids[event.index] if event.index < len(shown_ids) else None)

    def toggle_favourite(item_id):
        if item_id is None:
            return gr.update()
        item = ctx.gallery.get(item_id)
        ctx.gallery.set_favourite(item_id, not item.favourite)
        return "☆ Favourite" if item.favourite else "★ Favourite"

    def update_tags(item_id, value):
        if item_id is not None:
            ctx.gallery.set_tags(item_id, [t for t in (value or "").split(",")])
            gr.Info("Tags saved.")

    def remove(item_id):
        if item_id is not None:
            ctx.gallery.delete(item_id)
            gr.Info(f"Deleted item #{item_id} and its files.")
        return None, gr.update(visible=False)

    def open_item(value):
        if value is None:
            raise gr.Error("Type an item number to open.")
        return show(int(value))

    for trigger in (refresh.click, search.submit):
        trigger(first_page, filters, page_outputs)
    previous.click(step_page(-1), filters + [page], page_outputs)
    following.click(step_page(+1), filters + [page], page_outputs)
    grid.select(select, [ids], detail_outputs)
    favourite.click(toggle_favourite, [selected], [favourite]).then(
        load_page, filters + [page], page_outputs)
    save_tags.click(update_tags, [selected, tags], None)
    delete.click(remove, [selected], [selected, detail]).then(load_page, filters + [page], page_outputs)
    open_button.click(open_item, [open_id], detail_outputs)

    def receive(item_id):
        return show(item_id) if item_id is not None else (gr.skip(),) * len(detail_outputs)

    # Emptied after use, so that sending the same item again is a change again.
    received.change(receive, [received], detail_outputs).then(lambda: None, None, received)

    return {"item_id": received, "_refresh": (load_page, filters + [page], page_outputs),
            "_selected": selected, "_send_buttons": send_buttons}


def on_load(ctx, demo, own: dict) -> None:
    handler, inputs, outputs = own["_refresh"]
    demo.load(handler, inputs, outputs)
    own["_tab"].select(handler, inputs, outputs)


def wire(ctx, tabs, handles: dict) -> None:
    """Connect each "send to" button to its tab's receiver; hide buttons with no receiver."""
    own = handles[TAB_ID]
    selected = own["_selected"]
    for (tab_id, name), button in own["_send_buttons"].items():
        receiver = handles.get(tab_id, {}).get(name)
        if receiver is None:
            button.visible = False
            continue

        def send(item_id, tab_id=tab_id, name=name):
            if item_id is None:
                raise gr.Error("Select an item first.")
            item = ctx.gallery.get(item_id)
            if name in ("init_image", "image"):
                if item.kind != "image":
                    raise gr.Error(f"Item #{item.id} is text; pick an image to send there.")
                value = str(item.file_path)
            elif name in ("message", "code"):
                value = item.text or item.prompt
            else:
                value = item.prompt
            return value, gr.Tabs(selected=tab_id)

        button.click(send, [selected], [receiver, tabs])
