"""The worker: takes the next job, runs it through `studio.tasks.run_task` with progress and
cancel, records the outcome. One worker per device (per EngineManager).

The worker sees the queue only through `JobSource` (claim / report_progress / finish / release),
and the queue sees a worker only through `Worker` (start / stop / wake / cancel / live). A
distributed runner (docs/scale-out.md) replaces `InProcessWorker` behind those two interfaces
without touching the UI, the REST API or the store.

Exactly once: a job's gallery items and the links from the job to them are written in the
gallery's own transaction (tasks pass `job_id=ctx.job_id` to the gallery's writes), so after a
crash a job either has its outputs (it finished; recovery marks it completed) or has none (it is
run again) — never twice.

Lanes: a worker may take only some tasks (`tasks`) or leave some to another worker
(`skip_tasks`): style training runs for minutes on its own lane, so generation never waits
behind it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any, Callable, Protocol

from engines.base import CancelToken, Cancelled, EngineError, Progress
from studio.jobs.live import LiveBoard, LiveProgress
from studio.jobs.models import CANCELED, COMPLETED, FAILED
from studio.jobs.store import JobView

if TYPE_CHECKING:
    from studio.context import StudioContext

log = logging.getLogger(__name__)


class JobSource(Protocol):
    """What a worker needs from the queue. JobStore implements it over SQLite."""

    def claim(self, worker: str, tasks: tuple[str, ...] | None = None,
              skip_tasks: tuple[str, ...] = ()) -> JobView | None: ...

    def report_progress(self, job_id: int, progress: float, message: str) -> bool:
        """Returns True when the job should be canceled."""
        ...

    def finish(self, job_id: int, status: str, error: str | None = None,
               result: dict[str, Any] | None = None) -> None: ...

    def release(self, job_id: int) -> None: ...


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
                 on_finished: Callable[[int], None] | None = None,
                 board: LiveBoard | None = None, tasks: tuple[str, ...] | None = None,
                 skip_tasks: tuple[str, ...] = ()) -> None:
        self.ctx = ctx
        self.source = source
        self.is_paused = is_paused
        self.on_finished = on_finished  # called with the job id once its final state is stored
        self.name = name or f"inproc-{uuid.uuid4().hex[:8]}"
        self.idle_poll_s = idle_poll_s  # also picks up jobs queued by other processes
        self.progress_interval_s = progress_interval_s  # how often progress reaches the row
        self.board = board or LiveBoard()
        self.tasks, self.skip_tasks = tasks, tuple(skip_tasks)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._current: tuple[int, CancelToken] | None = None  # (job id, its cancel token)
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
            if self._current is None or self._current[0] != job_id:
                return False
            self._user_canceled = True
            self._current[1].cancel()
            return True

    def live(self) -> dict[int, LiveProgress]:
        with self._lock:
            running = self._current[0] if self._current else None
        live = self.board.get(running) if running is not None else None
        return {running: live} if live is not None else {}

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # --- the loop
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._wake.clear()
                job = None if self.is_paused() else self.source.claim(
                    self.name, self.tasks, self.skip_tasks)
                if job is None:
                    self._wake.wait(self.idle_poll_s)
                    continue
                self._run(job)
            except Exception:  # the database was locked or gone: log, wait, go on
                log.exception("queue worker %s: unexpected error; retrying in 2 s", self.name)
                self._stop.wait(2.0)

    def _beside_generation(self):
        """A lane's job (training) tells the language model it shares the CPU in this process
        (engines/llm/threads.py), so chat does not spin threads against it."""
        if self.tasks is None:
            return contextlib.nullcontext()
        from engines.llm.threads import lane_job

        return lane_job()

    def _run(self, job: JobView) -> None:
        token = CancelToken()
        self.board.start(job.id)
        with self._lock:
            self.busy, self._current, self._user_canceled = True, (job.id, token), False
        last_write = time.monotonic()  # the claim wrote the row; short jobs write no progress

        def on_progress(progress: Progress) -> None:
            nonlocal last_write
            self.board.publish(job.id, progress.step, progress.total, progress.message,
                               progress.preview, progress.text)
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
            # The queue validated the params when it stored them; the task runs them as stored.
            job_ctx = dataclasses.replace(self.ctx, job_id=job.id)
            with self._beside_generation():
                result = run_task(job_ctx, job.task, job.params, on_progress, token)
        except Cancelled:
            if self._stop.is_set() and not self._user_canceled:
                # shutdown, not the user: the job runs again at the next start
                finished = False
                self._record(self.source.release, job.id)
            else:
                self._record(self.source.finish, job.id, CANCELED, "canceled by user")
        except (EngineError, ValueError) as error:
            field = getattr(error, "field", None)  # engines.base.ParamError names the field
            self._record(self.source.finish, job.id, FAILED, str(error) or type(error).__name__,
                         result={"error_field": field} if field else None)
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
            self.board.end(job.id)
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
