"""DocumentStore: files attached to a conversation, with their passages and embedding vectors,
kept in the studio's database beside the conversation (deleted with it).

Storage only: the text is extracted and split by engines/llm/documents.py and embedded by the
"embed_document" task (studio/tasks/documents.py), which calls `add` once every vector exists,
so a document is never stored half-indexed.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import func, select

from studio.chat.models import Conversation, Document, Passage
from studio.db.database import Database

MAX_DOCUMENTS = 20  # per conversation
MAX_PASSAGES = 2000  # per conversation, all documents together: ~1.4 M characters


@dataclass(frozen=True)
class DocumentView:
    id: int
    conversation_id: int
    name: str
    size_bytes: int
    passages: int
    embedding_model: str


class DocumentStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def check_room(self, conversation_id: int, new_passages: int) -> None:
        """ValueError when the conversation is gone, or one more document of `new_passages`
        passages would pass the limits."""
        with self.db.session() as session:
            if session.get(Conversation, conversation_id) is None:
                raise ValueError(f"`conversation_id`: no conversation with id {conversation_id}")
            docs = session.scalar(select(func.count()).select_from(Document)
                                  .where(Document.conversation_id == conversation_id)) or 0
            held = session.scalar(select(func.count()).select_from(Passage).join(Document)
                                  .where(Document.conversation_id == conversation_id)) or 0
        if docs >= MAX_DOCUMENTS:
            raise ValueError(f"this conversation already has {docs} documents; the limit is "
                             f"{MAX_DOCUMENTS} (remove one first)")
        if held + new_passages > MAX_PASSAGES:
            raise ValueError(f"the document has {new_passages} passages and the conversation holds "
                             f"{held}; the limit is {MAX_PASSAGES} passages per conversation "
                             "(attach a shorter file or remove a document)")

    def add(self, conversation_id: int, name: str, text: str, size_bytes: int, model: str,
            passages, vectors) -> DocumentView:
        """`passages`: engines.llm.documents.Passage list; `vectors`: float32 array, one row each."""
        import numpy as np

        rows = np.asarray(vectors, dtype="<f4")
        if len(rows) != len(passages):
            raise ValueError(f"{len(passages)} passages but {len(rows)} vectors")
        with self.db.transaction() as session:
            doc = Document(conversation_id=conversation_id, name=name, text=text,
                           size_bytes=size_bytes, embedding_model=model, created_at=_now())
            session.add(doc)
            session.flush()
            for passage, vector in zip(passages, rows):
                session.add(Passage(document_id=doc.id, number=passage.number,
                                    first_line=passage.first_line, last_line=passage.last_line,
                                    text=passage.text, vector=vector.tobytes()))
            return DocumentView(doc.id, conversation_id, name, size_bytes, len(passages), model)

    def list(self, conversation_id: int) -> list[DocumentView]:
        with self.db.session() as session:
            counts = dict(session.execute(
                select(Passage.document_id, func.count()).join(Document)
                .where(Document.conversation_id == conversation_id)
                .group_by(Passage.document_id)).all())
            docs = session.scalars(select(Document).where(Document.conversation_id == conversation_id)
                                   .order_by(Document.id)).all()
            return [DocumentView(d.id, d.conversation_id, d.name, d.size_bytes, counts.get(d.id, 0),
                                 d.embedding_model) for d in docs]

    def texts(self, conversation_id: int) -> list[dict[str, str]]:
        """[{"name", "text"}] for export."""
        with self.db.session() as session:
            docs = session.scalars(select(Document).where(Document.conversation_id == conversation_id)
                                   .order_by(Document.id)).all()
            return [{"name": d.name, "text": d.text} for d in docs]

    def remove(self, document_id: int) -> None:
        with self.db.transaction() as session:
            doc = session.get(Document, document_id)
            if doc is not None:
                session.delete(doc)

    def index(self, conversation_id: int):
        """(engines.llm.documents.Passage list, float32 matrix of their unit vectors), or
        ([], None) when nothing is attached."""
        import numpy as np

        from engines.llm.documents import Passage as Chunk

        with self.db.session() as session:
            rows = session.execute(
                select(Document.name, Passage.number, Passage.first_line, Passage.last_line,
                       Passage.text, Passage.vector).join(Document)
                .where(Document.conversation_id == conversation_id)
                .order_by(Document.id, Passage.number)).all()
        if not rows:
            return [], None
        chunks = [Chunk(r.name, r.number, r.first_line, r.last_line, r.text) for r in rows]
        return chunks, np.stack([np.frombuffer(r.vector, dtype="<f4") for r in rows])


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)
