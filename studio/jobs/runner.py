"""The one way to run a generation: `ctx.runner.submit(task, params, priority) -> JobHandle`.

Every caller — a tab's Generate, the A1111 and OpenAI APIs, the batch queue, style training —
submits a job to the persistent queue and watches it through a handle. So progress, previews,
cancel, limits and workers live in one place (the queue and its workers), and whatever a user
starts shows in the Queue tab and `GET /api/queue`.

    handle = ctx.runner.submit("txt2img", {"prompt": "a red star"}, priority=INTERACTIVE)
    for update in handle.updates():       # a JobUpdate whenever something changes
        show(update.step, update.total, update.preview)
    items = handle.result()["item_ids"]   # or JobFailed / JobCanceled

An interactive run is simply a high-priority job: the worker takes it next, so a click starts
within one job even while a long batch waits behind it. Handles read live progress from the
queue's LiveBoard (no polling while the job runs in this process) and fall back to the row for
jobs run by another process.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, AsyncIterator, Iterator

from studio.jobs.models import CANCELED, COMPLETED, FAILED, PENDING, RUNNING
from studio.jobs.store import JobView

if TYPE_CHECKING:
    from studio.jobs.queue import JobQueue

INTERACTIVE = 900  # a click in a tab: runs next
API = 500  # an HTTP API request someone is waiting on
BATCH = 0  # queued work
ROW_RECHECK_S = 0.25  # how often a handle re-reads the row when nothing live is seen
ASYNC_POLL_S = 0.01  # async handles look at the in-memory board this often


class JobFailed(RuntimeError):
    """The job ended with an error; `field` names the parameter at fault when one was."""

    def __init__(self, job_id: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.job_id, self.message, self.field = job_id, message, field


class JobCanceled(RuntimeError):
    def __init__(self, job_id: int) -> None:
        super().__init__(f"job {job_id} was canceled")
        self.job_id = job_id


@dataclass(frozen=True)
class JobUpdate:
    job_id: int
    status: str
    step: int = 0
    total: int = 0
    message: str = ""
    preview: Any = None  # PIL image of the newest preview, while running
    text: str | None = None  # text tasks: everything generated so far
    queue_position: int | None = None  # jobs that run before this one, while pending
    error: str | None = None
    error_field: str | None = None
    result: dict[str, Any] | None = None  # {"item_ids", "text", "info"} once completed

    @property
    def finished(self) -> bool:
        return self.status in (COMPLETED, FAILED, CANCELED)

    def _key(self) -> tuple:  # what makes an update worth yielding
        return (self.status, self.step, self.total, self.message, id(self.preview),
                len(self.text or ""), self.queue_position)


class JobHandle:
    """A submitted job: watch it, cancel it, wait for its result."""

    def __init__(self, queue: "JobQueue", job_id: int) -> None:
        self.queue, self.id = queue, job_id

    # ------------------------------------------------------------ watching
    def snapshot(self) -> JobUpdate:
        """The job now: live progress when this process runs it, else its row."""
        live = self.queue.board.get(self.id)
        if live is not None:
            return JobUpdate(self.id, RUNNING, live.step, live.total, live.message, live.preview,
                             live.text)
        return self._from_row(self.queue.get(self.id))

    def updates(self, cancel_on_exit: bool = False, timeout: float | None = None) -> Iterator[JobUpdate]:
        """Yield an update whenever the job changes; the last one is final. `cancel_on_exit`:
        leaving the loop early (the reader went away) cancels the job. `timeout`: raise
        TimeoutError (and cancel, with cancel_on_exit) when the job is not done by then."""
        watch = _Watch(self, timeout)
        try:
            while True:
                version = self.queue.board.version  # read before the snapshot: no change missed
                if (update := watch.fresh(self.snapshot())) is not None:
                    yield update
                if watch.finished:
                    return
                self.queue.board.wait(version, watch.wait_s())
        finally:
            if cancel_on_exit and not watch.finished:
                self.cancel()

    async def aupdates(self, cancel_on_exit: bool = True,
                       timeout: float | None = None) -> AsyncIterator[JobUpdate]:
        """`updates()` for async code. It waits on the event loop (polling the in-memory board
        every few milliseconds, the row every ROW_RECHECK_S), never on a pooled thread: a
        thousand waiting requests must not starve the threads that serve /progress or cancel."""
        watch = _Watch(self, timeout)
        try:
            while True:
                version = self.queue.board.version
                live = self.queue.board.get(self.id) is not None  # else the row: off the loop
                snapshot = self.snapshot() if live else await asyncio.to_thread(self.snapshot)
                if (update := watch.fresh(snapshot)) is not None:
                    yield update
                if watch.finished:
                    return
                recheck = time.monotonic() + watch.wait_s()
                while self.queue.board.version == version and time.monotonic() < recheck:
                    await asyncio.sleep(ASYNC_POLL_S)
        finally:
            if cancel_on_exit and not watch.finished:
                self.cancel()

    # ------------------------------------------------------------ acting
    def cancel(self) -> None:
        """Pending: canceled at once. Running: stops at its next step and saves nothing."""
        try:
            self.queue.cancel(self.id)
        except ValueError:  # already finished
            pass

    def wait(self, timeout: float | None = None) -> JobView | None:
        return self.queue.wait(self.id, timeout)

    def result(self, timeout: float | None = None) -> dict[str, Any]:
        """{"item_ids", "text", "info"} of a completed job; JobFailed, JobCanceled or
        TimeoutError otherwise."""
        job = self.wait(timeout)
        if job is None:
            raise TimeoutError(f"job {self.id} did not finish within {timeout:g} s")
        update = self._from_row(job)
        if update.status == FAILED:
            raise JobFailed(self.id, update.error or "the job failed", update.error_field)
        if update.status == CANCELED:
            raise JobCanceled(self.id)
        return update.result or {}

    # ------------------------------------------------------------ helpers
    def _from_row(self, job: JobView) -> JobUpdate:
        result = job.result or {}
        if job.status == COMPLETED:
            return JobUpdate(job.id, job.status, 1, 1, job.message, text=result.get("text"),
                             result={"item_ids": list(result.get("item_ids") or job.item_ids),
                                     "text": result.get("text"), "info": result.get("info") or {}})
        if job.status == FAILED:
            return JobUpdate(job.id, job.status, error=job.error,
                             error_field=result.get("error_field"))
        position = self.queue.position(job) if job.status == PENDING else None
        return JobUpdate(job.id, job.status, int(job.progress * 100), 100 if job.progress else 0,
                         job.message, queue_position=position, error=job.error)


class _Watch:
    """What one reader of a job has seen: only changed updates pass, the final one ends it."""

    def __init__(self, handle: JobHandle, timeout: float | None) -> None:
        self.handle, self.timeout = handle, timeout
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.finished, self._last_key = False, None

    def fresh(self, update: JobUpdate) -> JobUpdate | None:
        self.finished = update.finished
        if update._key() == self._last_key:
            return None
        self._last_key = update._key()
        return update

    def wait_s(self) -> float:
        """How long to wait for a change; TimeoutError once the deadline has passed."""
        if self.deadline is None:
            return ROW_RECHECK_S
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"job {self.handle.id} did not finish within {self.timeout:g} s")
        return min(left, ROW_RECHECK_S)


class Runner:
    """Submits jobs to the queue and hands back handles. Built once in studio/app.py."""

    def __init__(self, queue: "JobQueue") -> None:
        self.queue = queue

    def submit(self, task: str, params: dict, priority: int = INTERACTIVE) -> JobHandle:
        """Validate once (ParamError / ValueError naming the field) and queue; returns at once."""
        job_id = self.queue.enqueue(task, params, priority)
        return JobHandle(self.queue, job_id)

    def submit_many(self, task: str, params_list: list[dict], priority: int = BATCH) -> list[JobHandle]:
        """Several jobs of one task, all or none."""
        return [JobHandle(self.queue, job_id)
                for job_id in self.queue.enqueue_many(task, params_list, priority)]

    def handle(self, job_id: int) -> JobHandle:
        self.queue.get(job_id)  # LookupError for an unknown job
        return JobHandle(self.queue, job_id)
