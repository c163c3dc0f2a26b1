"""The worker: takes the next job, runs it through `studio.tasks.run_task` with progress and
cancel, records the outcome. One worker per device (per EngineManager).

The worker sees the queue only through `JobSource` (claim / report_progress / finish / release),
and the queue sees a worker only through `Worker` (start / stop / wake / cancel / live). A
distributed runner (docs/scale-out.md) replaces `InProcessWorker` behind those two interfaces
without touching the UI, the REST API or the store.

Exactly once: a job's gallery items and the links from the job to them are written in the
gallery's own transaction (see `_job_gallery`), so after a crash a job either has its outputs
(it finished; recovery marks it completed) or has none (it is run again) — never twice.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol

from sqlalchemy import event

from engines.base import CancelToken, Cancelled, EngineError, Progress
from studio.gallery.models import Item
from studio.jobs.models import CANCELED, COMPLETED, FAILED
from studio.jobs.store import JobStore, JobView

if TYPE_CHECKING:
    from studio.context import StudioContext

log = logging.getLogger(__name__)


class JobSource(Protocol):
    """What a worker needs from the queue. JobStore implements it over SQLite."""

    def claim(self, worker: str) -> JobView | None: ...

    def report_progress(self, job_id: int, progress: float, message: str) -> bool:
        """Returns True when the job should be canceled."""
        ...

    def finish(self, job_id: int, status: str, error: str | None = None,
               result: dict[str, Any] | None = None) -> None: ...

    def release(self, job_id: int) -> None: ...


@dataclass
class LiveProgress:
    """In-memory progress of the running job, fresher than the row (written twice a second)."""
    job_id: int
    step: int = 0
    total: int = 0
    message: str = ""
    preview: Any = None
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


class Worker(Protocol):
    """What JobQueue needs from whatever runs the jobs."""

    def start(self) -> None: ...

    def stop(self, timeout: float = 30.0) -> None: ...

    def wake(self) -> None:
        """New jobs were queued, or the queue was resumed."""
        ...

    def cancel(self, job_id: int) -> bool:
        """Interrupt the job now if this worker is running it."""
        ...

    def live(self) -> dict[int, LiveProgress]: ...


class InProcessWorker:
    """A daemon thread in the studio process, on the context's EngineManager (one device)."""

    def __init__(self, ctx: "StudioContext", source: JobSource, is_paused: Callable[[], bool],
                 name: str | None = None, idle_poll_s: float = 1.0,
                 progress_interval_s: float = 0.5,
                 on_finished: Callable[[int], None] | None = None) -> None:
        self.ctx = ctx
        self.source = source
        self.is_paused = is_paused
        self.on_finished = on_finished  # called with the job id once its final state is stored
        self.name = name or f"inproc-{uuid.uuid4().hex[:8]}"
        self.idle_poll_s = idle_poll_s  # also picks up jobs queued by other processes
        self.progress_interval_s = progress_interval_s  # how often progress reaches the row
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._current: tuple[LiveProgress, CancelToken] | None = None
        self._user_canceled = False
        self.busy = False  # between claim and finish

    # --- Worker interface
    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("this worker was already started")
        self._thread = threading.Thread(target=self._loop, name=f"queue-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Interrupt the running job (it goes back to pending, not canceled) and end the thread."""
        self._stop.set()
        with self._lock:
            if self._current is not None:
                self._current[1].cancel()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def wake(self) -> None:
        self._wake.set()

    def cancel(self, job_id: int) -> bool:
        with self._lock:
            if self._current is None or self._current[0].job_id != job_id:
                return False
            self._user_canceled = True
            self._current[1].cancel()
            return True

    def live(self) -> dict[int, LiveProgress]:
        with self._lock:
            return {self._current[0].job_id: self._current[0]} if self._current else {}

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # --- the loop
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._wake.clear()
                job = None if self.is_paused() else self.source.claim(self.name)
                if job is None:
                    self._wake.wait(self.idle_poll_s)
                    continue
                self._run(job)
            except Exception:  # the database was locked or gone: log, wait, go on
                log.exception("queue worker %s: unexpected error; retrying in 2 s", self.name)
                self._stop.wait(2.0)

    def _run(self, job: JobView) -> None:
        live, token = LiveProgress(job.id), CancelToken()
        with self._lock:
            self.busy, self._current, self._user_canceled = True, (live, token), False
        last_write = time.monotonic()  # the claim wrote the row; short jobs write no progress

        def on_progress(progress: Progress) -> None:
            nonlocal last_write
            live.step, live.total, live.message = progress.step, progress.total, progress.message
            if progress.preview is not None:
                live.preview = progress.preview
            moment = time.monotonic()
            if moment - last_write >= self.progress_interval_s:
                last_write = moment
                if self.source.report_progress(job.id, progress.fraction, progress.message):
                    with self._lock:
                        self._user_canceled = True
                    token.cancel()  # canceled through the row (another process, the REST API)

        from studio.tasks import run_task  # task modules import engines; load them only here

        finished = True
        try:
            result = run_task(self._job_context(job.id), job.task, job.params, on_progress, token)
        except Cancelled:
            if self._stop.is_set() and not self._user_canceled:
                # shutdown, not the user: the job runs again at the next start
                finished = False
                self._record(self.source.release, job.id)
            else:
                self._record(self.source.finish, job.id, CANCELED, "canceled by user")
        except (EngineError, ValueError) as error:
            self._record(self.source.finish, job.id, FAILED, str(error) or type(error).__name__)
        except Exception as error:
            log.exception("queue job %s (%s) failed", job.id, job.task)
            self._record(self.source.finish, job.id, FAILED, f"{type(error).__name__}: {error}")
        else:
            text = result.text if result.text is None else result.text[:20000]
            self._record(self.source.finish, job.id, COMPLETED, result={
                "item_ids": list(result.item_ids), "text": text, "info": result.info})
        finally:
            with self._lock:
                self.busy, self._current = False, None
        if finished and self.on_finished is not None:
            self.on_finished(job.id)  # after the row: whoever wakes reads the final state

    def _record(self, method: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        """Write an outcome, retrying while the database is busy: a job left `running` would
        otherwise wait for the next start to be recovered (and rerun)."""
        for attempt in range(5):
            try:
                return method(*args, **kwargs)
            except Exception:
                if attempt == 4:
                    raise
                log.warning("queue worker %s: recording job %s failed; retrying", self.name, args[0],
                            exc_info=True)
                time.sleep(0.5 * (attempt + 1))

    def _job_context(self, job_id: int) -> "StudioContext":
        """The studio context, but with a gallery whose writes also link items to this job."""
        gallery = copy.copy(self.ctx.gallery)
        gallery.db = _LinkingDatabase(self.ctx.gallery.db, job_id)
        return dataclasses.replace(self.ctx, gallery=gallery)


class _LinkingDatabase:
    """Stands in for the Database inside one job's gallery: every transaction that adds gallery
    items also adds the job -> item links, before the same commit."""

    def __init__(self, db: Any, job_id: int) -> None:
        self._db = db
        self._job_id = job_id

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        with self._db.transaction() as session:
            added: list[Item] = []

            def collect(_session, instance) -> None:
                if isinstance(instance, Item):
                    added.append(instance)

            event.listen(session, "pending_to_persistent", collect)
            try:
                yield session
                session.flush()
                JobStore.link_items(session, self._job_id, [item.id for item in added])
                session.flush()
            finally:
                event.remove(session, "pending_to_persistent", collect)
