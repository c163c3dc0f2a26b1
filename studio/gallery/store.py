"""Gallery store: rows in SQLite, image files and WEBP thumbnails on disk, metadata in the PNG.

Writing an image follows one order so that a crash at any point leaves nothing inconsistent:
  1. the PNG and its thumbnail are written to `*.tmp` files;
  2. the row is inserted inside a transaction;
  3. the tmp files are renamed into place (atomic on one filesystem);
  4. the transaction commits.
A crash before 3 leaves only tmp files; between 3 and 4 files without a row. `sweep()` runs at
start-up and removes both, and rows whose file has gone.
"""
from __future__ import annotations

import json
import logging
import os
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from PIL import Image
from sqlalchemy import and_, func, select, text

from studio.db.database import Database
from studio.gallery.models import Item, Tag
from studio.gallery.pnginfo import format_infotext, png_bytes_with_metadata
from studio.gallery.search import match_condition

THUMBNAIL_SIZE = 256
SWEEP_MIN_AGE_S = 60.0  # younger files may belong to a write in progress: the sweep leaves them
log = logging.getLogger("genstudio.gallery")


@dataclass(frozen=True)
class ItemView:
    """A detached, read-only copy of a row, with absolute paths."""
    id: int
    uid: str
    kind: str
    task: str
    engine: str
    model: str
    prompt: str
    negative_prompt: str
    text: str | None
    params: dict[str, Any]
    seed: int | None
    width: int | None
    height: int | None
    duration_s: float | None
    parent_id: int | None
    favourite: bool
    tags: tuple[str, ...]
    created_at: datetime
    file_path: Path | None
    thumb_path: Path | None


@dataclass(frozen=True)
class NewImage:
    """One image to save; `add_images` saves a list of these all-or-nothing."""
    image: Image.Image
    task: str
    engine: str
    model: str = ""
    prompt: str = ""
    negative_prompt: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    duration_s: float | None = None
    parent_id: int | None = None
    tags: tuple[str, ...] = ()
    infotext: str | None = None  # A1111 `parameters` chunk; composed from params when None


@dataclass(frozen=True)
class GalleryQuery:
    search: str = ""  # full-text over prompt, negative prompt and text output
    kind: str | None = None  # "image" | "text"
    task: str | None = None
    engine: str | None = None
    model: str | None = None
    tag: str | None = None
    favourites_only: bool = False
    date_from: datetime | None = None  # inclusive, UTC
    date_to: datetime | None = None  # exclusive, UTC
    page: int = 1
    page_size: int = 50


@dataclass(frozen=True)
class Page:
    items: list[ItemView]
    total: int
    page: int
    page_size: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.page_size))


def default_infotext(entry: NewImage) -> str:
    """A1111 layout from our params' common names; tasks may pass a richer one."""
    p = entry.params
    settings = {
        "Steps": p.get("steps"),
        "Sampler": p.get("scheduler") or p.get("sampler"),
        "CFG scale": p.get("guidance_scale"),
        "Seed": entry.seed,
        "Size": f"{entry.image.width}x{entry.image.height}",
        "Model hash": p.get("model_hash"),
        "Model": entry.model or None,
        "Denoising strength": p.get("strength"),
        "Style": p.get("style"),
        "Version": "GenStudio",
    }
    return format_infotext(entry.prompt, entry.negative_prompt, settings)


def fts_query(search: str) -> str:
    """User words to an FTS5 query: every word must match, as a prefix; no FTS syntax leaks."""
    words = [w for w in "".join(c if c.isalnum() else " " for c in search).split() if w]
    return " ".join(f'"{w}"*' for w in words)


class GalleryStore:
    def __init__(self, db: Database, data_dir: Path) -> None:
        self.db = db
        self.data_dir = Path(data_dir)
        self.outputs_dir = self.data_dir / "outputs"
        self.thumbnails_dir = self.data_dir / "thumbnails"

    # ------------------------------------------------------------ writing
    def add_image(self, image: Image.Image, *, job_id: int | None = None, **fields: Any) -> ItemView:
        return self.add_images([NewImage(image=image, **fields)], job_id=job_id)[0]

    def add_images(self, entries: list[NewImage], job_id: int | None = None) -> list[ItemView]:
        """Save every image or none of them. `job_id`: the queue job they are the outputs of;
        the links commit in the same transaction as the rows (a crash leaves both or neither)."""
        written: list[Path] = []
        try:
            # 1. Files as tmp.
            staged = []
            day = datetime.now(timezone.utc).strftime("%Y-%m-%d")
            for entry in entries:
                uid = uuid.uuid4().hex
                rel_file = f"outputs/{day}/{uid}.png"
                rel_thumb = f"thumbnails/{day}/{uid}.webp"
                png = png_bytes_with_metadata(
                    entry.image, entry.infotext or default_infotext(entry), self._json_chunk(entry))
                written += [self._write_tmp(rel_file, png), self._write_tmp(rel_thumb, _thumbnail(entry.image))]
                staged.append((uid, rel_file, rel_thumb, entry))
            # 2-4. Rows, rename, commit.
            with self.db.transaction() as session:
                rows = []
                for uid, rel_file, rel_thumb, entry in staged:
                    row = Item(uid=uid, kind="image", task=entry.task, engine=entry.engine,
                               model=entry.model, prompt=entry.prompt,
                               negative_prompt=entry.negative_prompt,
                               params_json=json.dumps(entry.params, default=str), seed=entry.seed,
                               width=entry.image.width, height=entry.image.height,
                               duration_s=entry.duration_s, parent_id=entry.parent_id,
                               favourite=False, file_path=rel_file, thumb_path=rel_thumb,
                               created_at=_now(), tags=self._tags(session, entry.tags))
                    session.add(row)
                    rows.append(row)
                session.flush()
                _link_job(session, job_id, rows)
                for _, rel_file, rel_thumb, _ in staged:
                    for rel in (rel_file, rel_thumb):
                        os.replace(self.data_dir / f"{rel}.tmp", self.data_dir / rel)
                        written.append(self.data_dir / rel)
                for folder in {(self.data_dir / rel).parent for _, f, t, _ in staged for rel in (f, t)}:
                    _fsync_dir(folder)  # the renames are durable before the rows commit
            return [self._view(row) for row in rows]
        except BaseException:
            for path in written:
                path.unlink(missing_ok=True)
            raise

    def add_text(self, text_output: str, *, task: str, engine: str, model: str = "",
                 prompt: str = "", negative_prompt: str = "", params: dict | None = None,
                 seed: int | None = None, duration_s: float | None = None,
                 parent_id: int | None = None, tags: Iterable[str] = (),
                 job_id: int | None = None) -> ItemView:
        with self.db.transaction() as session:
            row = Item(uid=uuid.uuid4().hex, kind="text", task=task, engine=engine, model=model,
                       prompt=prompt, negative_prompt=negative_prompt, text=text_output,
                       params_json=json.dumps(params or {}, default=str), seed=seed,
                       duration_s=duration_s, parent_id=parent_id, favourite=False,
                       created_at=_now(), tags=self._tags(session, tags))
            session.add(row)
            session.flush()
            _link_job(session, job_id, [row])
            return self._view(row)

    def set_favourite(self, item_id: int, favourite: bool) -> None:
        with self.db.transaction() as session:
            self._row(session, item_id).favourite = bool(favourite)

    def set_tags(self, item_id: int, tags: Iterable[str]) -> None:
        with self.db.transaction() as session:
            self._row(session, item_id).tags = self._tags(session, tags)

    def delete(self, item_id: int) -> None:
        """Row first, then files: a crash in between leaves files the sweep removes."""
        with self.db.transaction() as session:
            row = self._row(session, item_id)
            paths = [p for p in (row.file_path, row.thumb_path) if p]
            session.delete(row)
        for rel in paths:
            (self.data_dir / rel).unlink(missing_ok=True)

    # ------------------------------------------------------------ reading
    def get(self, item_id: int) -> ItemView:
        with self.db.session() as session:
            return self._view(self._row(session, item_id))

    def find_by_uid(self, uid: str) -> ItemView | None:
        """The item whose files are named `uid` (a path sent between tabs maps back to its row)."""
        with self.db.session() as session:
            row = session.scalar(select(Item).where(Item.uid == uid))
            return self._view(row) if row is not None else None

    def open_image(self, item_id: int) -> Image.Image:
        item = self.get(item_id)
        if item.file_path is None:
            raise ValueError(f"gallery item {item_id} is {item.kind}, not an image")
        with Image.open(item.file_path) as image:
            image.load()
            return image

    def query(self, q: GalleryQuery = GalleryQuery()) -> Page:
        if q.page < 1 or not 1 <= q.page_size <= 500:
            raise ValueError(f"page must be >= 1 and page_size 1..500, got {q.page}, {q.page_size}")
        conditions = self.conditions(q)
        where = and_(*conditions) if conditions else None
        with self.db.session() as session:
            count = select(func.count()).select_from(Item)
            page = select(Item).order_by(Item.id.desc())
            if where is not None:
                count, page = count.where(where), page.where(where)
            total = session.scalar(count) or 0
            rows = session.scalars(page.limit(q.page_size).offset((q.page - 1) * q.page_size)).all()
            return Page([self._view(r) for r in rows], total, q.page, q.page_size)

    def conditions(self, q: GalleryQuery) -> list:
        """The WHERE conditions on `items` of a query's search words and filters (also used by
        the semantic search, studio/gallery/semantic.py, with the words left out)."""
        conditions = []
        match = match_condition(getattr(self.db, "dialect", "sqlite"), q.search)
        if match is not None:  # FTS5 on SQLite, a tsvector index on PostgreSQL
            conditions.append(match)
        for column, value in ((Item.kind, q.kind), (Item.task, q.task),
                              (Item.engine, q.engine), (Item.model, q.model)):
            if value:
                conditions.append(column == value)
        if q.favourites_only:
            conditions.append(Item.favourite == 1)
        if q.tag:
            conditions.append(Item.tags.any(Tag.name == q.tag))
        if q.date_from:
            conditions.append(Item.created_at >= _naive_utc(q.date_from))
        if q.date_to:
            conditions.append(Item.created_at < _naive_utc(q.date_to))
        return conditions

    def lineage(self, item_id: int) -> list[ItemView]:
        """Ancestors then the item itself: [root, ..., parent, item]."""
        chain, seen = [], set()
        current: int | None = item_id
        while current is not None and current not in seen:
            seen.add(current)
            try:
                view = self.get(current)
            except LookupError:
                break
            chain.append(view)
            current = view.parent_id
        return list(reversed(chain))

    def children(self, item_id: int) -> list[ItemView]:
        with self.db.session() as session:
            rows = session.scalars(select(Item).where(Item.parent_id == item_id).order_by(Item.id))
            return [self._view(r) for r in rows]

    def facets(self) -> dict[str, list[str]]:
        """Distinct values for the filter dropdowns. A skip-scan (MIN(col) WHERE col > previous,
        one index seek per value) instead of SELECT DISTINCT, which reads the whole index: a few
        milliseconds at 100,000 items rather than tens."""
        values = {}
        with self.db.session() as session:
            for column in ("engine", "model", "task"):
                values[column] = [v for v in session.scalars(text(
                    f"WITH RECURSIVE d(v) AS (SELECT MIN({column}) FROM items UNION ALL "
                    f"SELECT (SELECT MIN({column}) FROM items WHERE {column} > d.v) FROM d "
                    f"WHERE d.v IS NOT NULL) SELECT v FROM d WHERE v IS NOT NULL AND v != ''"))]
            values["tag"] = list(session.scalars(select(Tag.name).order_by(Tag.name)))
        return values

    # ------------------------------------------------------------ repair
    def sweep(self, min_age_s: float = SWEEP_MIN_AGE_S) -> dict[str, int]:
        """Remove what a crash left (studio/gallery/sweep.py: what it never touches)."""
        from studio.gallery.sweep import sweep_alone

        return sweep_alone(self, min_age_s)

    # ------------------------------------------------------------ helpers
    def _write_tmp(self, rel: str, data: bytes) -> Path:
        path = self.data_dir / f"{rel}.tmp"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())  # on disk before its row can commit
        return path

    @staticmethod
    def _json_chunk(entry: NewImage) -> dict:
        return {"task": entry.task, "engine": entry.engine, "model": entry.model,
                "prompt": entry.prompt, "negative_prompt": entry.negative_prompt,
                "seed": entry.seed, "params": entry.params, "parent_id": entry.parent_id}

    @staticmethod
    def _tags(session, names: Iterable[str]) -> list[Tag]:
        tags = []
        for name in sorted({n.strip().lower() for n in names if n and n.strip()}):
            tag = session.scalar(select(Tag).where(Tag.name == name))
            if tag is None:
                tag = Tag(name=name)
                session.add(tag)
            tags.append(tag)
        return tags

    @staticmethod
    def _row(session, item_id: int) -> Item:
        if not 0 < item_id < 1 << 63:  # beyond SQLite's integers: an OverflowError otherwise
            raise LookupError(f"no gallery item with id {item_id}")
        row = session.get(Item, item_id)
        if row is None:
            raise LookupError(f"no gallery item with id {item_id}")
        return row

    def _view(self, row: Item) -> ItemView:
        return ItemView(
            id=row.id, uid=row.uid, kind=row.kind, task=row.task, engine=row.engine,
            model=row.model, prompt=row.prompt, negative_prompt=row.negative_prompt, text=row.text,
            params=json.loads(row.params_json or "{}"), seed=row.seed, width=row.width,
            height=row.height, duration_s=row.duration_s, parent_id=row.parent_id,
            favourite=bool(row.favourite), tags=tuple(t.name for t in row.tags),
            created_at=row.created_at,
            file_path=self.data_dir / row.file_path if row.file_path else None,
            thumb_path=self.data_dir / row.thumb_path if row.thumb_path else None)


def _link_job(session, job_id: int | None, rows: list[Item]) -> None:
    """Record rows as outputs of a queue job, inside the caller's transaction."""
    if job_id is not None:
        from studio.jobs.models import JobItem  # the queue's table; the gallery works without it

        session.add_all(JobItem(job_id=job_id, item_id=row.id) for row in rows)
        session.flush()


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _thumbnail(image: Image.Image) -> bytes:
    import io

    thumb = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    thumb.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    buffer = io.BytesIO()
    thumb.save(buffer, format="WEBP", quality=80)
    return buffer.getvalue()


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)  # stored naive, always UTC


def _naive_utc(moment: datetime) -> datetime:
    return moment.astimezone(timezone.utc).replace(tzinfo=None) if moment.tzinfo else moment
