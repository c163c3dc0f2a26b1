"""Live progress of the jobs running in this process, and one condition variable to watch it.

A worker publishes each step of the job it runs (step, total, message, preview image, text so
far) on the `LiveBoard`; every `JobHandle` (studio/jobs/runner.py) waits on the board instead of
polling the database, so a preview or a token reaches the tab or the HTTP stream the moment the
engine reports it. The row in the database is written only twice a second (worker.py): other
processes and the REST API read that.

A worker elsewhere (a Ray actor, docs/scale-out.md) reports back to the process that owns its
queue, which publishes here the same way.
"""
from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass
from typing import Any


@dataclass
class LiveProgress:
    """What a running job last reported; fresher than its row."""
    job_id: int
    step: int = 0
    total: int = 0
    message: str = ""
    preview: Any = None  # the newest preview image, kept until a newer one arrives
    text: str | None = None  # text tasks: everything generated so far
    started: float = dataclasses.field(default_factory=time.monotonic)

    @property
    def fraction(self) -> float:
        return self.step / self.total if self.total else 0.0

    @property
    def eta_s(self) -> float | None:
        if not self.fraction:
            return None
        elapsed = time.monotonic() - self.started
        return elapsed * (1 - self.fraction) / self.fraction


class LiveBoard:
    """Running jobs of this process by id, and a version number that grows on every change."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._jobs: dict[int, LiveProgress] = {}
        self.version = 0

    def start(self, job_id: int) -> LiveProgress:
        with self._changed:
            live = self._jobs[job_id] = LiveProgress(job_id)
            self._bump()
            return live

    def publish(self, job_id: int, step: int, total: int, message: str = "",
                preview: Any = None, text: str | None = None) -> None:
        with self._changed:
            live = self._jobs.get(job_id)
            if live is None:
                return
            live.step, live.total, live.message = step, total, message
            if preview is not None:
                live.preview = preview
            if text is not None:
                live.text = text
            self._bump()

    def end(self, job_id: int) -> None:
        """The job's final state is stored (or it went back to the queue)."""
        with self._changed:
            self._jobs.pop(job_id, None)
            self._bump()

    def touch(self) -> None:
        """Something a watcher may care about changed elsewhere (a cancel, a new job)."""
        with self._changed:
            self._bump()

    def get(self, job_id: int) -> LiveProgress | None:
        with self._changed:
            live = self._jobs.get(job_id)
            return dataclasses.replace(live) if live is not None else None

    def snapshot(self) -> dict[int, LiveProgress]:
        with self._changed:
            return {job_id: dataclasses.replace(live) for job_id, live in self._jobs.items()}

    def wait(self, seen_version: int, timeout: float) -> int:
        """Block until the version passes `seen_version` or `timeout` seconds pass."""
        with self._changed:
            self._changed.wait_for(lambda: self.version != seen_version, timeout)
            return self.version

    def _bump(self) -> None:
        self.version += 1
        self._changed.notify_all()
