"""Semantic gallery search: items found by meaning, not words ("vulpine creature in winter"
finds "a red fox in snow").

Each item's prompt and text output is embedded once with the studio's embedded sentence model
(all-MiniLM-L6-v2, the one behind /v1/embeddings and documents in chat) and the unit vector is
kept in `item_vectors` (migration 0006; float32 bytes, BLOB on SQLite, BYTEA on PostgreSQL),
deleted with its item by the database. Nothing is embedded while an item is saved, so a
generation never waits for it: a search embeds what is missing first — itself when that is up
to INLINE_LIMIT items, otherwise through one "index_gallery" job at batch priority
(studio/tasks/gallery_index.py), answering meanwhile from what is indexed and saying how many
items are still waiting.

Ranking is cosine similarity in numpy over every vector that passes the other filters: 1.5 KB
per item read per search, measured 0.22 s at 10,000 items and 1.1 s at 50,000 (SQLite, busy
2-core machine), so fine for a personal gallery; beyond ~50,000 items an approximate index
(pgvector, sqlite-vec) or vectors cached in memory would be the next step. Items under MIN_SIMILARITY are
left out, so a search for something absent finds nothing rather than everything.

A search embeds with its own copy of the model on the CPU (~90 MB), not the engine manager's:
the manager's device lock is held for a whole generation, and a search must not wait minutes
behind a txt2img batch for a 10 ms embedding.
"""
from __future__ import annotations

import threading
from dataclasses import replace
from typing import TYPE_CHECKING

from sqlalchemy import and_, delete, exists, func, or_, select
from sqlalchemy.exc import IntegrityError

from studio.gallery.models import Item, ItemVector
from studio.gallery.store import GalleryQuery, Page

if TYPE_CHECKING:
    from studio.context import StudioContext

MODEL = "all-minilm-l6-v2"  # engines.llm.embeddings.EMBEDDED_EMBEDDING_ID (not imported: no numpy/torch here)
INLINE_LIMIT = 128  # missing vectors a search computes itself (~1 s); more go to a job
MIN_SIMILARITY = 0.25  # below: unrelated (MiniLM puts unrelated captions at -0.1..0.2)
MAX_TEXT_CHARS = 2000  # the model reads 256 tokens; more text is only slower
INDEX_TASK = "index_gallery"
_embedder = None  # the searches' own EmbeddingEngine, loaded on first use
_embedder_lock = threading.Lock()


def item_text(prompt: str | None, text: str | None) -> str:
    """What is embedded for an item: its prompt, then its text output."""
    return "\n".join(part.strip() for part in (prompt, text) if part and part.strip())[:MAX_TEXT_CHARS]


def _has_text():
    return or_(Item.prompt != "", and_(Item.text.is_not(None), Item.text != ""))


def _unindexed():
    return and_(_has_text(), ~exists().where(ItemVector.item_id == Item.id, ItemVector.model == MODEL))


class SemanticIndex:
    """Storage of the vectors; the embedding itself is done by the caller."""

    def __init__(self, db) -> None:
        self.db = db

    def missing_count(self) -> int:
        with self.db.session() as session:
            return session.scalar(select(func.count()).select_from(Item).where(_unindexed())) or 0

    def missing(self, limit: int) -> list[tuple[int, str]]:
        """(item id, text to embed) of up to `limit` items without a vector, oldest first."""
        with self.db.session() as session:
            rows = session.execute(select(Item.id, Item.prompt, Item.text).where(_unindexed())
                                   .order_by(Item.id).limit(limit)).all()
        return [(row.id, item_text(row.prompt, row.text)) for row in rows]

    def add(self, ids: list[int], vectors) -> int:
        """Store one vector per id (replacing an older model's); ids deleted meanwhile are
        skipped. Returns how many were stored."""
        import numpy as np

        rows = np.asarray(vectors, dtype="<f4")
        try:
            with self.db.transaction() as session:
                alive = set(session.scalars(select(Item.id).where(Item.id.in_(ids))))
                session.execute(delete(ItemVector).where(ItemVector.item_id.in_(alive)))
                session.add_all(ItemVector(item_id=i, model=MODEL, vector=v.tobytes())
                                for i, v in zip(ids, rows) if i in alive)
        except IntegrityError:  # an item deleted between the check and the commit: next time
            return 0
        return len(alive)

    def rank(self, query_vector, conditions: list) -> list[tuple[int, float]]:
        """(item id, cosine similarity) of the items passing `conditions`, best first, at least
        MIN_SIMILARITY; ties by newest."""
        import numpy as np

        statement = (select(ItemVector.item_id, ItemVector.vector).join(Item, Item.id == ItemVector.item_id)
                     .where(ItemVector.model == MODEL, *conditions).order_by(ItemVector.item_id.desc()))
        with self.db.session() as session:
            rows = session.execute(statement).all()
        if not rows:
            return []
        ids = np.fromiter((r.item_id for r in rows), dtype=np.int64, count=len(rows))
        matrix = np.frombuffer(b"".join(r.vector for r in rows), dtype="<f4").reshape(len(rows), -1)
        scores = matrix @ np.asarray(query_vector, dtype=np.float32)
        order = np.argsort(-scores, kind="stable")  # stable: equal scores stay newest first
        return [(int(ids[i]), float(scores[i])) for i in order if scores[i] >= MIN_SIMILARITY]


def embed_for_search(texts: list[str]):
    """Unit vectors of `texts` from the searches' own CPU copy of the model (see above)."""
    global _embedder
    from engines.llm.embeddings import EmbeddingEngine

    with _embedder_lock:
        if _embedder is None:
            _embedder = EmbeddingEngine(MODEL, "cpu")
        return _embedder.embed(texts)[0]


def index_missing(ctx: "StudioContext", index: SemanticIndex, limit: int, cancel=None,
                  on_batch=None, private: bool = False) -> int:
    """Embed up to `limit` items without a vector, a batch at a time (each batch committed, so
    a stopped run keeps what it did), with the engine manager's model (a job) or the searches'
    own (`private`). Returns how many were stored."""
    from engines.llm.embeddings import BATCH, EMBEDDED_EMBEDDING_ID

    done = 0
    while done < limit:
        batch = index.missing(min(BATCH, limit - done))
        if not batch:
            break
        if cancel is not None:
            cancel.raise_if_cancelled()
        texts = [text for _, text in batch]
        if private:
            vectors = embed_for_search(texts)
        else:
            with ctx.engines.use("embed", EMBEDDED_EMBEDDING_ID) as engine:
                vectors, _ = engine.embed(texts)
        stored = index.add([item_id for item_id, _ in batch], vectors)
        done += len(batch)
        if on_batch is not None:
            on_batch(done, stored)
    return done


def _index_job_active(ctx: "StudioContext") -> bool:
    return any(job.task == INDEX_TASK for job in ctx.queue.list(("pending", "running", "paused")))


def search(ctx: "StudioContext", q: GalleryQuery) -> tuple[Page, int]:
    """(one page of items ranked by similarity to `q.search`, items not indexed yet). The other
    filters of `q` apply as in GalleryStore.query; an empty search is the plain newest-first page."""
    if not q.search.strip():
        return ctx.gallery.query(q), 0
    if q.page < 1 or not 1 <= q.page_size <= 500:
        raise ValueError(f"page must be >= 1 and page_size 1..500, got {q.page}, {q.page_size}")
    index = SemanticIndex(ctx.db)
    waiting = index.missing_count()
    if 0 < waiting <= INLINE_LIMIT:
        index_missing(ctx, index, waiting, private=True)
        waiting = index.missing_count()
    elif waiting and not _index_job_active(ctx):
        from studio.jobs.runner import BATCH

        ctx.runner.submit(INDEX_TASK, {}, priority=BATCH)
    query_vector = embed_for_search([q.search.strip()[:MAX_TEXT_CHARS]])[0]
    ranked = index.rank(query_vector, ctx.gallery.conditions(replace(q, search="")))
    start = (q.page - 1) * q.page_size
    items = []
    for item_id, _ in ranked[start:start + q.page_size]:
        try:
            items.append(ctx.gallery.get(item_id))
        except LookupError:  # deleted since the ranking
            pass
    return Page(items, len(ranked), q.page, q.page_size), waiting
