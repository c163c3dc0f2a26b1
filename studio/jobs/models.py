"""Typed ORM rows of the queue; they mirror studio/db/migrations/0003_queue.sql."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from studio.db.database import Base

PENDING, RUNNING, COMPLETED, FAILED, CANCELED, PAUSED = (
    "pending", "running", "completed", "failed", "canceled", "paused")
STATUSES = (PENDING, RUNNING, COMPLETED, FAILED, CANCELED, PAUSED)
FINISHED = (COMPLETED, FAILED, CANCELED)  # a worker will not touch these again


class Job(Base):
    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(primary_key=True)
    task: Mapped[str] = mapped_column(String)
    engine: Mapped[str] = mapped_column(String)
    params_json: Mapped[str] = mapped_column(Text)
    model: Mapped[str] = mapped_column(String, default="")  # params' model ('' = default); 0004
    label: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String, default=PENDING)
    priority: Mapped[int] = mapped_column(Integer, default=0)  # higher runs first
    position: Mapped[float] = mapped_column(Float)  # lower runs first within a priority
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    message: Mapped[str] = mapped_column(Text, default="")
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String)
    result_json: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    started_at: Mapped[datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime)


class JobItem(Base):
    """A gallery item a job produced."""
    __tablename__ = "job_items"
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), primary_key=True)


class QueueState(Base):
    __tablename__ = "queue_state"
    key: Mapped[str] = mapped_column(String, primary_key=True)
    value: Mapped[str] = mapped_column(Text)
