"""The Chat tab's documents: attach a file to the conversation (its text is extracted here, then
an "embed_document" job splits and embeds it and stores it with the conversation), list and
remove attachments, and show the passages a grounded reply used.

Never imports torch: text extraction (engines/llm/documents.py) is plain Python and pypdf; the
embedding runs in the job.
"""
from __future__ import annotations

import html
from pathlib import Path

import gradio as gr

from studio.chat.service import ChatService
from studio.ui.widgets import follow_job

MAX_UPLOAD_BYTES = 10 << 20  # a chat attachment; the passage limit per conversation bounds it too
FILE_TYPES = [".txt", ".md", ".markdown", ".rst", ".html", ".htm", ".pdf", ".csv", ".json",
              ".yaml", ".yml", ".toml", ".py", ".js", ".ts", ".java", ".c", ".h", ".cpp", ".go",
              ".rs", ".rb", ".php", ".sh", ".sql", ".css", ".xml", ".log"]


def documents_markdown(chats: ChatService, conv_id) -> str:
    docs = chats.documents(conv_id)
    if not docs:
        return ""
    listed = ", ".join(f"`{d.name}` ({d.passages} passages, {d.size_bytes / 1024:.1f} kB)" for d in docs)
    return f"📎 **Attached:** {listed}"


def document_choices(chats: ChatService, conv_id) -> dict:
    return gr.update(choices=[(d.name, d.id) for d in chats.documents(conv_id)], value=None)


def read_upload(upload) -> tuple[str, str, int]:
    """(name, text, size) of an uploaded file; ValueError with a message for the user."""
    from engines.llm.documents import extract_text

    path = Path(upload if isinstance(upload, str) else upload.name)
    size = path.stat().st_size
    if size > MAX_UPLOAD_BYTES:
        raise ValueError(f"{path.name} is {size / 1e6:.1f} MB; a chat attachment may be at most "
                         f"{MAX_UPLOAD_BYTES >> 20} MB")
    text = extract_text(path.name, path.read_bytes())  # ParamError (a ValueError) names the problem
    if not text.strip():
        raise ValueError(f"{path.name} holds no readable text (a scanned PDF has none to extract)")
    return path.name, text, size


def embed(ctx, conv_id: int, name: str, text: str, size: int | None = None):
    """Run the embed_document job; yields its updates (a refused request raises gr.Error)."""
    params = {"conversation_id": int(conv_id), "name": name, "text": text}
    if size is not None:
        params["size_bytes"] = int(size)
    yield from follow_job(ctx, "embed_document", params)


def attach(ctx, chats: ChatService, upload, conv_id):
    """Yields (conv id, attached list, notice, conversations, documents dropdown). A new chat
    is saved first (titled after the file), so the document has a conversation to belong to."""
    keep = gr.skip()
    if upload is None:
        yield (keep,) * 5
        return
    try:
        name, text, size = read_upload(upload)
    except ValueError as error:
        gr.Warning(str(error))
        yield keep, keep, f"⚠️ {error}", keep, keep
        return
    created = conv_id is None
    if created:
        conv_id = chats.store.create(f"Documents: {name}"[:120]).id
    update = None
    try:
        for update in embed(ctx, conv_id, name, text, size):
            if not update.finished:
                yield (conv_id, keep, f"*Indexing {html.escape(name)}: {update.message or 'waiting…'}*",
                       keep, keep)
    except gr.Error:
        if created:
            chats.delete(conv_id)
        raise
    if update is None or update.status != "completed":
        if created:
            chats.delete(conv_id)
        message = (update.error if update is not None else None) or "the document was not indexed"
        gr.Warning(message)
        yield (None if created else conv_id), keep, f"⚠️ {message}", \
            gr.update(choices=chats.choices()), keep
        return
    info = update.result.get("info") or {}
    yield (conv_id, documents_markdown(chats, conv_id),
           f"Attached **{html.escape(name)}**: {info.get('passages', '?')} passages indexed. "
           "Replies answer from the documents while *Answer from documents* is on.",
           gr.update(choices=chats.choices(), value=conv_id), document_choices(chats, conv_id))


def remove(chats: ChatService, conv_id, document_id):
    if document_id is None:
        gr.Warning("Pick a document to remove.")
        return gr.skip(), gr.skip()
    chats.remove_document(document_id)
    return documents_markdown(chats, conv_id), document_choices(chats, conv_id)


def sources_markdown(info: dict | None) -> str:
    """The passages a grounded reply used (the ones it cited, else the ones it was given)."""
    sources = (info or {}).get("sources") or []
    if not sources:
        return ""
    cited = any(s.get("cited") for s in sources)
    lines = ["**Sources used:**" if cited else "**Passages given to the model** (the reply cited none):"]
    for number, s in enumerate(sources, 1):
        excerpt = " ".join(s["text"].split())
        excerpt = excerpt[:160] + ("…" if len(excerpt) > 160 else "")
        lines.append(f"{number}. `{s['label']}` — {html.escape(excerpt)}")
    return "\n".join(lines)


def controls() -> dict:
    """The documents strip under the message box."""
    c: dict = {}
    with gr.Accordion("Documents", open=True):
        with gr.Row():
            c["attach"] = gr.UploadButton("Attach document", file_types=FILE_TYPES, size="sm",
                                          elem_id="chat-attach")
            c["use_docs"] = gr.Checkbox(label="Answer from documents", value=True,
                                        elem_id="chat-use-docs")
            c["doc_pick"] = gr.Dropdown(label="Attached", choices=[], elem_id="chat-doc-pick",
                                        scale=2)
            c["doc_remove"] = gr.Button("Remove", size="sm", elem_id="chat-doc-remove")
        c["docs"] = gr.Markdown(elem_id="chat-docs")
    return c
