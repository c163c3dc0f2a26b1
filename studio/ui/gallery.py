"""Gallery tab: every output, text and image — search, filters, pages, details, lineage, actions.

The grid shows one page of thumbnails at a time (the store pages with LIMIT/OFFSET over indexed
columns), so it stays fast with 100,000 items. Text outputs get a small rendered card as their
thumbnail, cached under <data_dir>/cache/textcards. Search matches words, or meaning
(studio/gallery/semantic.py: most similar first).
"""
from __future__ import annotations

import textwrap
from datetime import datetime, timedelta
from functools import partial

import gradio as gr
from PIL import Image, ImageDraw

from studio.gallery import semantic
from studio.gallery.store import GalleryQuery, ItemView
from studio.ui.variations import variations_row
from studio.ui.widgets import PRIVATE

TAB_ID = "gallery"
TITLE = "Gallery"
PAGE_SIZE = 48
ALL = "all"
SEARCH_MODES = [("Words", "words"), ("Meaning", "semantic")]
CHECK_EVERY_S = 2.0  # how often an open page looks for new items (one indexed query)

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


# ------------------------------------------------------------------ handlers
def _run(ctx, query: GalleryQuery, mode: str):
    """(page, items not indexed yet): by words, or by meaning when asked and there is a search."""
    if mode == "semantic" and query.search.strip():
        return semantic.search(ctx, query)
    return ctx.gallery.query(query), 0


def load_page(ctx, query_text, kind_value, engine_value, model_value, favs, start, end, mode,
              page_number):
    """One page of thumbnails for the filters: (grid, ids, page, page info, engine and model
    choices)."""
    day_from, day_to = _parse_day(start, "From"), _parse_day(end, "To")
    query = GalleryQuery(
        search=query_text or "", kind=None if kind_value == ALL else kind_value,
        engine=None if engine_value in (ALL, None) else engine_value,
        model=None if model_value in (ALL, None) else model_value, favourites_only=bool(favs),
        date_from=day_from, date_to=day_to + timedelta(days=1) if day_to else None,
        page=max(1, int(page_number)), page_size=PAGE_SIZE)
    result, waiting = _run(ctx, query, mode)
    if result.page > result.pages:  # e.g. the last item of the last page was deleted
        result, waiting = _run(ctx, GalleryQuery(**{**query.__dict__, "page": result.pages}), mode)
    entries = [(str(i.thumb_path) if i.kind == "image" else _text_card(ctx, i), _caption(i))
               for i in result.items]
    facets = ctx.gallery.facets()
    info = (f"Page {result.page} of {result.pages} · {result.total} item"
            f"{'' if result.total == 1 else 's'}" if result.total else "No items match.")
    if waiting:
        info += f" · {waiting} items are still being indexed for search by meaning"
    return (entries, [i.id for i in result.items], result.page, info,
            gr.update(choices=[ALL] + facets["engine"]), gr.update(choices=[ALL] + facets["model"]))


def first_page(ctx, *filters):
    return load_page(ctx, *filters, 1)


def step_page(ctx, delta: int, *values):
    *filters, current = values
    return load_page(ctx, *filters, max(1, current + delta))


def newest_mark(ctx) -> list:
    """(item count, newest id): changes whenever an item lands or goes."""
    page = ctx.gallery.query(GalleryQuery(page_size=1))
    return [page.total, page.items[0].id if page.items else None]


def check_new(ctx, seen, *values):
    """The timer: reload the page only when items landed or went since it was drawn, so results
    show here as soon as their rows are committed, without a manual refresh."""
    mark = newest_mark(ctx)
    if mark == seen:
        return (gr.skip(),) * 7
    return (mark, *load_page(ctx, *values))


def show(ctx, item_id):
    """The detail panel's values for one item (hidden for None or a deleted item)."""
    hidden = (None, gr.update(visible=False)) + (gr.update(),) * 7
    if item_id is None:
        return hidden
    try:
        item = ctx.gallery.get(int(item_id))
    except LookupError:
        gr.Warning(f"Item #{item_id} no longer exists.")
        return hidden
    if item.kind == "image":
        file = str(item.file_path)
    else:
        path = ctx.config.data_dir / "cache" / "downloads" / f"{item.uid}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(item.text or "")
        file = str(path)
    return (item.id, gr.update(visible=True),
            gr.update(value=file if item.kind == "image" else None, visible=item.kind == "image"),
            gr.update(value=item.text or "", visible=item.kind == "text"),
            _describe(ctx, item), item.params,
            "★ Favourite" if item.favourite else "☆ Favourite", file, ", ".join(item.tags))


def picked_id(shown_ids, event: gr.SelectData):
    """A click on a thumbnail: its item id, into the `item_id` receiver that opens it."""
    return shown_ids[event.index] if event.index < len(shown_ids) else gr.skip()


def toggle_favourite(ctx, item_id):
    if item_id is None:
        return gr.update()
    item = ctx.gallery.get(item_id)
    ctx.gallery.set_favourite(item_id, not item.favourite)
    return "☆ Favourite" if item.favourite else "★ Favourite"


def update_tags(ctx, item_id, value):
    if item_id is not None:
        ctx.gallery.set_tags(item_id, [t for t in (value or "").split(",")])
        gr.Info("Tags saved.")


def remove(ctx, item_id):
    if item_id is not None:
        ctx.gallery.delete(item_id)
        gr.Info(f"Deleted item #{item_id} and its files.")
    return None, gr.update(visible=False)


def open_item(ctx, value):
    if value is None:
        raise gr.Error("Type an item number to open.")
    return show(ctx, int(value))


def receive(ctx, item_id):
    return show(ctx, item_id) if item_id is not None else (gr.skip(),) * 9


def emptied():
    return None


def send_item(ctx, tab_id: str, name: str, item_id):
    """A "send to" button: the item's file, text or prompt to another tab's receiver."""
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


# ------------------------------------------------------------------ layout
def _controls() -> dict:
    c: dict = {}
    with gr.Row(equal_height=True):
        c["search"] = gr.Textbox(label="Search", placeholder="words from prompts and text outputs",
                                 elem_id="gallery-search", scale=3)
        c["mode"] = gr.Radio(SEARCH_MODES, value="words", label="Match", scale=1,
                             elem_id="gallery-search-mode")
        c["kind"] = gr.Dropdown([ALL, "image", "text"], value=ALL, label="Kind", scale=1)
        c["engine"] = gr.Dropdown([ALL], value=ALL, label="Engine", scale=1, allow_custom_value=True)
        c["model"] = gr.Dropdown([ALL], value=ALL, label="Model", scale=1, allow_custom_value=True)
    with gr.Row(equal_height=True):
        c["favourites"] = gr.Checkbox(label="Favourites only", scale=1)
        c["date_from"] = gr.Textbox(label="From (YYYY-MM-DD)", scale=1)
        c["date_to"] = gr.Textbox(label="To (YYYY-MM-DD, inclusive)", scale=1)
        c["refresh"] = gr.Button("Search / refresh", variant="primary", scale=1,
                                 elem_id="gallery-refresh")
    # Thumbnails in a grid of fixed-size cells, whatever the number or size of the items.
    c["grid"] = gr.Gallery(label="Outputs", columns=8, height="auto", allow_preview=False,
                           object_fit="cover", fit_columns=False, elem_id="gallery-grid",
                           elem_classes=["gs-crisp"], show_label=False)
    with gr.Row(equal_height=True):
        c["previous"] = gr.Button("← Previous", size="sm")
        c["page_info"] = gr.Markdown(elem_id="gallery-page-info")
        c["next"] = gr.Button("Next →", size="sm")
    with gr.Group(visible=False, elem_id="gallery-detail-panel") as c["detail"]:
        with gr.Row():
            with gr.Column(scale=1):
                c["image"] = gr.Image(type="filepath", interactive=False, show_label=False,
                                      height=384, elem_id="gallery-image", elem_classes=["gs-crisp"])
                c["text"] = gr.Code(label="Text output", visible=False, interactive=False)
            with gr.Column(scale=1):
                c["description"] = gr.Markdown(elem_id="gallery-detail")
                c["params"] = gr.JSON(label="Parameters")
                with gr.Row():
                    c["favourite"] = gr.Button("☆ Favourite", size="sm", elem_id="gallery-favourite")
                    c["download"] = gr.DownloadButton("Download", size="sm")
                    c["delete"] = gr.Button("Delete", variant="stop", size="sm",
                                            elem_id="gallery-delete")
                with gr.Row():
                    c["tags"] = gr.Textbox(label="Tags (comma-separated)", scale=3)
                    c["save_tags"] = gr.Button("Save tags", size="sm", scale=1)
                with gr.Row():
                    c["open_id"] = gr.Number(label="Open item #", precision=0, scale=2)
                    c["open"] = gr.Button("Open", size="sm", scale=1)
                c["send"] = {(tab, name): gr.Button(label, size="sm")
                             for tab, name, label in IMAGE_TARGETS + TEXT_TARGETS + PROMPT_TARGETS}
    return c


def build(ctx) -> dict:
    c = _controls()
    ids, selected, page = gr.State([]), gr.State(None), gr.State(1)  # grid ids, detail item, page
    seen = gr.State(None)  # newest_mark() when the grid was last drawn
    received = gr.State(None)  # receiver `item_id`: another tab puts an item id here to open it
    filters = [c[n] for n in ("search", "kind", "engine", "model", "favourites", "date_from",
                              "date_to", "mode")]
    page_outputs = [c["grid"], ids, page, c["page_info"], c["engine"], c["model"]]
    detail_outputs = [selected, c["detail"], c["image"], c["text"], c["description"], c["params"],
                      c["favourite"], c["download"], c["tags"]]
    reload = partial(load_page, ctx)
    for trigger in (c["refresh"].click, c["search"].submit, c["mode"].change):
        trigger(partial(first_page, ctx), filters, page_outputs, **PRIVATE)
    c["previous"].click(partial(step_page, ctx, -1), filters + [page], page_outputs, **PRIVATE)
    c["next"].click(partial(step_page, ctx, +1), filters + [page], page_outputs, **PRIVATE)
    c["grid"].select(picked_id, [ids], [received], **PRIVATE)
    c["favourite"].click(partial(toggle_favourite, ctx), [selected], [c["favourite"]],
                         **PRIVATE).then(reload, filters + [page], page_outputs, **PRIVATE)
    c["save_tags"].click(partial(update_tags, ctx), [selected, c["tags"]], None, **PRIVATE)
    c["delete"].click(partial(remove, ctx), [selected], [selected, c["detail"]],
                      **PRIVATE).then(reload, filters + [page], page_outputs, **PRIVATE)
    c["open"].click(partial(open_item, ctx), [c["open_id"]], detail_outputs, **PRIVATE)
    with c["detail"]:  # DALL·E 2-style variations of the open item (studio/ui/variations.py)
        variations_row(ctx, selected)
    # Emptied after use, so that sending the same item again is a change again.
    received.change(partial(receive, ctx), [received], detail_outputs, **PRIVATE).then(
        emptied, None, received, **PRIVATE)
    gr.Timer(CHECK_EVERY_S).tick(partial(check_new, ctx), [seen] + filters + [page],
                                 [seen] + page_outputs, show_progress="hidden", **PRIVATE)
    return {"item_id": received, "_refresh": (reload, filters + [page], page_outputs),
            "_selected": selected, "_send_buttons": c["send"]}


def on_load(ctx, demo, own: dict) -> None:
    handler, inputs, outputs = own["_refresh"]
    demo.load(handler, inputs, outputs, **PRIVATE)
    own["_tab"].select(handler, inputs, outputs, **PRIVATE)


def wire(ctx, tabs, handles: dict) -> None:
    """Connect each "send to" button to its tab's receiver; hide buttons with no receiver."""
    own = handles[TAB_ID]
    for (tab_id, name), button in own["_send_buttons"].items():
        receiver = handles.get(tab_id, {}).get(name)
        if receiver is None:
            button.visible = False
            continue
        button.click(partial(send_item, ctx, tab_id, name), [own["_selected"]],
                     [receiver, tabs], **PRIVATE)
