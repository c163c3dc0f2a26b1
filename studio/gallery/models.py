"""Typed ORM rows of the gallery; they mirror migrations/0001_gallery.sql (and 0006 for the
semantic search vectors)."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import (BigInteger, Column, DateTime, Float, ForeignKey, Integer, LargeBinary, String,
                        Table, Text)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from studio.db.database import Base

item_tags = Table(
    "item_tags",
    Base.metadata,
    Column("item_id", ForeignKey("items.id", ondelete="CASCADE"), primary_key=True),
    Column("tag_id", ForeignKey("tags.id", ondelete="CASCADE"), primary_key=True),
)


class Tag(Base):
    __tablename__ = "tags"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String, unique=True)


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(primary_key=True)
    uid: Mapped[str] = mapped_column(String, unique=True)  # also the file name on disk
    kind: Mapped[str] = mapped_column(String)  # "image" | "text"
    task: Mapped[str] = mapped_column(String)  # txt2img, img2img, inpaint, outpaint, style, chat, code
    engine: Mapped[str] = mapped_column(String)
    model: Mapped[str] = mapped_column(String, default="")
    prompt: Mapped[str] = mapped_column(Text, default="")
    negative_prompt: Mapped[str] = mapped_column(Text, default="")
    text: Mapped[str | None] = mapped_column(Text)
    params_json: Mapped[str] = mapped_column(Text, default="{}")
    seed: Mapped[int | None] = mapped_column(BigInteger)  # seeds reach 2**32 - 1: not an int4
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    duration_s: Mapped[float | None] = mapped_column(Float)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("items.id", ondelete="SET NULL"))
    favourite: Mapped[bool] = mapped_column(Integer, default=0)
    file_path: Mapped[str | None] = mapped_column(String)  # relative to the data dir
    thumb_path: Mapped[str | None] = mapped_column(String)
    created_at: Mapped[datetime] = mapped_column(DateTime)

    tags: Mapped[list[Tag]] = relationship(secondary=item_tags, lazy="selectin")


class ItemVector(Base):
    """The embedding of one item's prompt and text output (studio/gallery/semantic.py); deleted
    with the item by the database (ON DELETE CASCADE)."""
    __tablename__ = "item_vectors"
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), primary_key=True)
    model: Mapped[str] = mapped_column(String)  # the embedding model that made it
    vector: Mapped[bytes] = mapped_column(LargeBinary)  # float32 unit vector, little-endian
