"""The detached forms of a queue row: NewJob (what enqueue inserts) and JobView (a read-only copy
of a row with the ids of the gallery items it produced), and the clock the queue stores."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from studio.jobs.models import FINISHED


@dataclass(frozen=True)
class NewJob:
    task: str
    engine: str
    params: dict[str, Any]
    priority: int = 0
    label: str = ""


@dataclass(frozen=True)
class JobView:
    """A detached, read-only copy of a row plus the ids of the gallery items it produced."""
    id: int
    task: str
    engine: str
    params: dict[str, Any]
    label: str
    status: str
    priority: int
    position: float
    progress: float
    message: str
    error: str | None
    attempts: int
    cancel_requested: bool
    worker: str | None
    result: dict[str, Any] | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    item_ids: tuple[int, ...] = ()
    heartbeat_at: datetime | None = None  # last progress report while running

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None:
            return None
        end = self.finished_at or now()
        return max(0.0, (end - self.started_at).total_seconds())

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form for the REST API."""
        iso = lambda t: t.replace(tzinfo=timezone.utc).isoformat() if t else None  # noqa: E731
        return {"id": self.id, "task": self.task, "engine": self.engine, "params": self.params,
                "label": self.label, "status": self.status, "priority": self.priority,
                "progress": self.progress, "message": self.message, "error": self.error,
                "attempts": self.attempts, "cancel_requested": self.cancel_requested,
                "worker": self.worker, "result": self.result, "item_ids": list(self.item_ids),
                "created_at": iso(self.created_at), "started_at": iso(self.started_at),
                "finished_at": iso(self.finished_at)}


def now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)  # stored naive, always UTC
