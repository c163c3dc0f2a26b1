"""Models tab: every model the studio can use, by kind, with family, size, format, hashes,
source and location (studio/model_inventory.py); import a file or folder by path (an
"import_model" job), delete one of the models folder (after a confirmation), rescan.

Hashes of large files are computed only on "Compute hashes" and then cached, so opening the tab
never reads gigabytes.
"""
from __future__ import annotations

from functools import partial
from html import escape
from pathlib import Path

import gradio as gr

from studio.ui.widgets import PRIVATE, follow_job, progress_html

TAB_ID = "models"
TITLE = "Models"
KIND_LABELS = {"all": None, "checkpoints": "checkpoint", "LoRA": "lora",
               "embeddings": "embedding", "VAE": "vae", "ControlNet": "controlnet",
               "upscalers": "upscaler",
               "language models": "llm", "styles": "style"}
COLUMNS = ["kind", "name", "family", "format", "size", "short hash", "sha256", "source",
           "location"]


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def table(ctx, kind_label: str, compute: bool = False):
    """(table rows, deletable choices) for the chosen kind."""
    from studio.models import list_offered

    entries = list_offered(ctx, KIND_LABELS.get(kind_label), compute)
    rows = [[e.kind, e.name, e.family, e.format, _size(e.size_bytes), e.short_hash or "—",
             e.sha256 or "(not hashed yet)", e.source, e.path or "built in"] for e in entries]
    choices = [e.path for e in entries if e.deletable]
    return rows, gr.update(choices=choices, value=None)


def rescan(ctx, kind_label):
    rows, choices = table(ctx, kind_label)
    return rows, choices, f"{len(rows)} model(s)."


def compute_hashes(ctx, kind_label):
    rows, choices = table(ctx, kind_label, compute=True)
    return rows, choices, "Hashes computed and cached."


def import_params(value: str, kind: str | None) -> dict:
    """A path on this machine, or (a URL, an owner/name that is no path here) a download."""
    value = (value or "").strip()
    remote = value.startswith(("http://", "https://")) or (
        value.count("/") == 1 and not value.startswith(("/", ".", "~"))
        and not Path(value).exists())
    params = {"source" if remote else "path": value}
    if kind and kind != "auto":
        params["kind"] = kind
    return params


def import_model(ctx, path, kind, kind_label):
    """Yields (status, rows, deletable) while the import job runs (a progress bar while it
    copies or downloads)."""
    update = None
    for update in follow_job(ctx, "import_model", import_params(path, kind)):
        if not update.finished:
            yield (progress_html(update.step, update.total,
                                 f"Job #{update.job_id}: {update.message or update.status}"),
                   gr.skip(), gr.skip())
    rows, choices = table(ctx, kind_label)
    if update is not None and update.status == "completed":
        info = (update.result or {}).get("info") or {}
        yield (f"Imported <b>{escape(info.get('name', ''))}</b> ({info.get('kind', '')}, "
               f"{escape(info.get('family') or 'no family')}, hash "
               f"{info.get('short_hash') or '—'})", rows, choices)
    else:
        yield f"⚠️ {escape(update.error if update else 'not started')}", rows, choices


def delete(ctx, path, confirmed, kind_label):
    from studio.model_inventory import delete_model

    # A refusal is a status line, not gr.Error: an error would cover these controls.
    if not path:
        return gr.skip(), gr.skip(), "⚠️ Pick a model to delete.", gr.skip()
    if not confirmed:
        return (gr.skip(), gr.skip(), "⚠️ Tick “I am sure” first: deleting removes the files.",
                gr.skip())
    try:
        name = delete_model(ctx, path)
    except ValueError as error:
        return gr.skip(), gr.skip(), f"⚠️ {escape(str(error))}", gr.skip()
    rows, choices = table(ctx, kind_label)
    return rows, choices, f"Deleted {escape(name)}.", False


def build(ctx) -> dict[str, gr.components.Component]:
    with gr.Row():
        kind = gr.Dropdown(list(KIND_LABELS), value="all", label="Kind", elem_id="models-kind")
        rescan_button = gr.Button("Rescan", elem_id="models-rescan")
        hash_button = gr.Button("Compute hashes", elem_id="models-hash")
    status = gr.HTML(elem_id="models-status")
    grid = gr.Dataframe(headers=COLUMNS, interactive=False, wrap=True, elem_id="models-table")
    with gr.Accordion("Import a model", open=True):
        with gr.Row():
            path = gr.Textbox(label="File or folder on this machine, or a URL / hub id",
                              elem_id="models-import-path",
                              placeholder="/path/to/model-folder, file.safetensors, "
                                          "https://…/file.safetensors or owner/name")
            import_kind = gr.Dropdown(["auto", "checkpoint", "lora", "embedding", "vae",
                                       "controlnet", "upscaler", "llm"], value="auto",
                                      label="Kind",
                                      elem_id="models-import-kind")
        import_button = gr.Button("Import", variant="primary", elem_id="models-import")
    with gr.Accordion("Delete a model", open=False):
        target = gr.Dropdown([], label="Model of the models folder", elem_id="models-delete-pick")
        sure = gr.Checkbox(label="I am sure", value=False, elem_id="models-delete-sure")
        delete_button = gr.Button("Delete", variant="stop", elem_id="models-delete")
    rescan_button.click(partial(rescan, ctx), [kind], [grid, target, status], **PRIVATE)
    kind.change(partial(rescan, ctx), [kind], [grid, target, status], **PRIVATE)
    hash_button.click(partial(compute_hashes, ctx), [kind], [grid, target, status], **PRIVATE)
    import_button.click(partial(import_model, ctx), [path, import_kind, kind],
                        [status, grid, target], **PRIVATE)
    delete_button.click(partial(delete, ctx), [target, sure, kind], [grid, target, status, sure],
                        **PRIVATE)
    return {"table": grid, "kind": kind, "status": status, "delete_pick": target}


def on_load(ctx, demo: gr.Blocks, own: dict) -> None:
    demo.load(partial(rescan, ctx), [own["kind"]], [own["table"], own["delete_pick"],
                                                    own["status"]], **PRIVATE)
