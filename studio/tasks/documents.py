"""Document tasks for the Chat tab:

- "embed_document": split an attached file's text into passages, embed them with the embedded
  all-MiniLM-L6-v2 (the engine manager's "embed" engine) and store them with the conversation
  (studio/chat/documents.py) once every vector exists.
- "chat_documents": one chat reply grounded in the conversation's documents: the question is
  embedded, the nearest passages (cosine similarity) go into the prompt with numbers, and the
  result names the passages the reply cites (`info["sources"]`).

The text arrives already extracted (engines.llm.documents.extract_text, in the tab), so the job
row holds text, never a binary upload.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from engines.base import CancelToken, ParamError, Progress, ProgressCallback
from studio.tasks import TaskResult, TaskSpec, register

if TYPE_CHECKING:
    from studio.context import StudioContext

MAX_TEXT_CHARS = 2_000_000  # the job row holds the text; the passage limit bounds it further
PASSAGES = 4  # nearest passages put in the prompt
DOC_FIELDS = ("conversation_id", "passages")  # `top_k` is the sampling setting


def _conversation_id(params: dict) -> int:
    value = params.get("conversation_id")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ParamError("conversation_id", f"`conversation_id` must be a conversation's id, got {value!r}")
    return value


# ---------------------------------------------------------------- embed_document
def _document_parts(params: dict):
    """(conversation id, name, text, size, passages), each checked; ValueError names the field."""
    from engines.llm.documents import chunk_document

    unknown = sorted(set(params) - {"conversation_id", "name", "text", "size_bytes"})
    if unknown:
        raise ValueError(f"unknown parameter(s) {', '.join(unknown)}")
    conv_id, name, text = _conversation_id(params), params.get("name"), params.get("text")
    if not isinstance(name, str) or not name.strip() or len(name) > 255:
        raise ParamError("name", "`name` must be the file's name (1 to 255 characters)")
    if not isinstance(text, str) or not text.strip():
        raise ParamError("text", f"{name} holds no readable text")
    if len(text) > MAX_TEXT_CHARS:
        raise ParamError("text", f"{name} has {len(text):,} characters of text; the limit is "
                         f"{MAX_TEXT_CHARS:,}")
    size = params.get("size_bytes", len(text.encode("utf-8")))
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ParamError("size_bytes", f"`size_bytes` must be a whole number, got {size!r}")
    return conv_id, name.strip(), text, size, chunk_document(name.strip(), text)


def validate_embed_document(ctx: "StudioContext", params: dict) -> None:
    from studio.chat.documents import DocumentStore

    conv_id, _, _, _, passages = _document_parts(params)
    DocumentStore(ctx.db).check_room(conv_id, len(passages))


def run_embed_document(ctx: "StudioContext", params: dict, on_progress: ProgressCallback,
                       cancel: CancelToken) -> TaskResult:
    import numpy as np

    from engines.llm.embeddings import BATCH, EMBEDDED_EMBEDDING_ID
    from studio.chat.documents import DocumentStore

    conv_id, name, text, size, passages = _document_parts(params)
    store = DocumentStore(ctx.db)
    store.check_room(conv_id, len(passages))  # again: another attach may have run meanwhile
    # The file name in front helps short passages match questions (as DocumentIndex.build does).
    inputs = [f"{p.source}: {p.text}" for p in passages]
    rows = []
    with ctx.engines.use("embed", EMBEDDED_EMBEDDING_ID) as engine:
        for start in range(0, len(inputs), BATCH):
            cancel.raise_if_cancelled()
            rows.append(engine.embed(inputs[start:start + BATCH])[0])
            done = min(start + BATCH, len(inputs))
            on_progress(Progress(done, len(inputs), f"embedded {done}/{len(inputs)} passages of {name}"))
    doc = store.add(conv_id, name, text, size, EMBEDDED_EMBEDDING_ID, passages, np.concatenate(rows))
    return TaskResult(text=None, info={"document_id": doc.id, "name": name, "passages": doc.passages})


# ---------------------------------------------------------------- chat_documents
def _chat_parts(params: dict) -> tuple[int, int, dict]:
    conv_id = _conversation_id(params)
    count = params.get("passages", PASSAGES)
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 8:
        raise ParamError("passages", f"`passages` must be a whole number from 1 to 8, got {count!r}")
    return conv_id, count, {k: v for k, v in params.items() if k not in DOC_FIELDS}


def validate_chat_documents(ctx: "StudioContext", params: dict) -> None:
    from studio.chat.documents import DocumentStore
    from studio.tasks.text import validate_chat

    conv_id, _, chat = _chat_parts(params)
    validate_chat(ctx, chat)
    if not DocumentStore(ctx.db).list(conv_id):
        raise ParamError("conversation_id", "this conversation has no documents attached")


def run_chat_documents(ctx: "StudioContext", params: dict, on_progress: ProgressCallback,
                       cancel: CancelToken) -> TaskResult:
    from engines.llm.documents import cited, grounded_question
    from engines.llm.embeddings import EMBEDDED_EMBEDDING_ID
    from studio.chat.documents import DocumentStore
    from studio.tasks.text import llm_params, record_reply

    conv_id, count, chat = _chat_parts(params)
    # 1. The question: the last user message (the reply being continued keeps its own).
    question = next((m["content"] for m in reversed(chat.get("messages") or [])
                     if m.get("role") == "user"), "")
    passages, vectors = DocumentStore(ctx.db).index(conv_id)
    if not passages or not question.strip():
        raise ParamError("conversation_id", "there are no documents or no question to answer")
    # 2. The nearest passages by cosine similarity (the vectors are unit length).
    with ctx.engines.use("embed", EMBEDDED_EMBEDDING_ID) as embedder:
        query = embedder.embed([question])[0][0]
    hits = [passages[int(i)] for i in (vectors @ query).argsort()[::-1][:count]]
    # 3. The prompt carries the passages in place of the bare question; the history stays as is.
    messages = [dict(m) for m in chat.get("messages") or []]
    last_user = max(i for i, m in enumerate(messages) if m.get("role") == "user")
    messages[last_user]["content"] = grounded_question(question, hits)
    model, request = llm_params({**chat, "messages": messages})
    with ctx.engines.use("llm", model) as engine:
        result = engine.generate(request, on_progress, cancel)
    used = cited(result.text, hits)
    sources = [{"label": p.label, "source": p.source, "first_line": p.first_line,
                "last_line": p.last_line, "text": p.text, "cited": p in used}
               for p in (used or hits)]
    item = record_reply(ctx, "chat", model, question, request, result.text, result.stats,
                        sources=[s["label"] for s in sources])
    info = {**result.to_info(), "sources": sources}
    return TaskResult(item_ids=[item.id], text=result.text, info=info)


register(TaskSpec("embed_document", "embed", validate_embed_document, run_embed_document,
                  "Split a document attached to a chat into passages and embed them"))
register(TaskSpec("chat_documents", "llm", validate_chat_documents, run_chat_documents,
                  "One chat reply answered from the conversation's documents, with citations"))
