"""The Chat tab's conversation files: export the open conversation as JSON (re-importable) or
Markdown, import an exported JSON file (its documents indexed again), search the list."""
from __future__ import annotations

from functools import partial

import gradio as gr

from studio.chat.service import as_dicts, for_display


def search_conversations(chats, text):
    return gr.update(choices=chats.search(text))


def export_conversation(ctx, chats, conv_id, kind: str):
    """The open conversation as a file to download: JSON (re-importable) or Markdown."""
    if conv_id is None:
        gr.Warning("Open a conversation to export (a new chat is saved after its first reply).")
        return gr.skip()
    try:
        conv = chats.open(conv_id)
        data = chats.export_json(conv.id) if kind == "json" else chats.export_markdown(conv.id)
    except LookupError:
        gr.Warning("That conversation no longer exists.")
        return gr.skip()
    folder = ctx.config.data_dir / "cache" / "exports"
    folder.mkdir(parents=True, exist_ok=True)
    stem = "".join(ch if ch.isalnum() else "-" for ch in conv.title)[:40].strip("-") or "chat"
    path = folder / f"conversation-{conv.id}-{stem}.{'json' if kind == 'json' else 'md'}"
    path.write_text(data, encoding="utf-8")
    return str(path)


def import_conversation(ctx, chats, upload):
    """An exported JSON file becomes a new conversation, opened at once; its documents are
    indexed again (an embed_document job each)."""
    keep = (gr.skip(),) * 5
    if upload is None:
        return keep
    from pathlib import Path

    try:
        conv = chats.import_json(Path(upload if isinstance(upload, str) else upload.name).read_bytes(),
                                 attach=partial(_attach_imported, ctx))
    except ValueError as error:
        gr.Warning(f"Import refused: {error}")
        return keep
    stored = as_dicts(conv)
    return (for_display(stored), stored, conv.id,
            gr.update(choices=chats.choices(), value=conv.id), conv.title)


def _attach_imported(ctx, conv_id: int, name: str, text: str) -> None:
    from studio.ui.chat_documents import embed

    update = None
    for update in embed(ctx, conv_id, name, text):
        pass
    if update is None or update.status != "completed":
        gr.Warning(f"{name} was not indexed again: {getattr(update, 'error', None) or 'stopped'}")
