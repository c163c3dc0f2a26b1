"""Running A1111 generation requests: one `Run` per request, tracked so that /progress,
/interrupt and /skip can reach it from other HTTP calls.

A request with `n_iter` runs becomes `n_iter` task runs of `batch_size` images each (seeds
`seed + k * batch_size` onward, which is exactly what the engine gives image k of one big
request), so that /skip can drop the run in progress and go on with the next, as A1111 does.

Two ways to run them, same results:

- **Queue** (the studio's normal case): the runs are queued as jobs at priority `API_PRIORITY`
  (ahead of batch work) and the request waits for them. They show in the Queue tab, the worker
  runs them on the engine manager's device lock like every other job, live progress and preview
  come from `queue.live()`, and interrupt/skip are `queue.cancel(job)`.
- **Direct**: when there is no queue, its worker is not running or paused, or the parameters are
  too big for a job row, the request thread calls `run_task` itself with its own progress
  callback and CancelToken. The device lock still keeps it from running beside anything else.
"""
from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from engines.base import CancelToken, Cancelled, Progress

if TYPE_CHECKING:
    from studio.context import StudioContext

API_PRIORITY = 500  # ahead of ordinary queue work (0), below nothing the UI uses
# A queued run waits on queue.wait(), which wakes the moment its job ends; every PROGRESS_S it
# copies the job's live progress into the run (/progress also copies it when asked).
PROGRESS_S = 0.5


class RunFailed(RuntimeError):
    """A task run failed while generating (engine error); the message is the user's to read."""


@dataclass
class Outcome:
    item_ids: list[int]
    info: dict[str, Any]


@dataclass
class Run:
    kind: str  # "txt2img" | "img2img"
    task: str  # the task that does the work: txt2img, img2img, inpaint
    iterations: list[dict]  # task params, one per n_iter
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    timestamp: str = field(default_factory=lambda: datetime.now().strftime("%Y%m%d%H%M%S"))
    created: float = field(default_factory=time.time)
    started: float | None = None  # when the first step was seen
    job_no: int = 0
    step: int = 0
    total: int = 0
    preview: Any = None
    running: bool = False
    skipped: bool = False
    interrupted: bool = False
    skips: int = 0
    mode: str = "direct"
    job_ids: list[int] = field(default_factory=list)
    current_job: int | None = None
    token: CancelToken | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def job_count(self) -> int:
        return len(self.iterations)

    def progress(self, step: int, total: int, preview: Any = None) -> None:
        if self.started is None:
            self.started = time.time()
        self.running, self.step, self.total = True, step, total
        if preview is not None:
            self.preview = preview

    def fraction(self) -> float:
        done = self.job_no / self.job_count if self.job_count else 0.0
        if self.total and self.job_count:
            done += self.step / self.total / self.job_count
        return min(done, 1.0)


class Runs:
    """The requests in flight in this process, oldest first."""

    def __init__(self, ctx: "StudioContext") -> None:
        self.ctx = ctx
        self._runs: list[Run] = []
        self._lock = threading.Lock()

    # ------------------------------------------------------------ which run is "current"
    def current(self) -> Run | None:
        """The run generating now, else the oldest waiting one (what A1111's progress shows)."""
        with self._lock:
            runs = list(self._runs)
        if not runs:
            return None
        queue = self.ctx.queue
        live = queue.live() if queue is not None else {}
        for run in runs:
            if run.mode == "queue" and run.current_job in live:
                progress = live[run.current_job]
                run.progress(progress.step, progress.total, progress.preview)
        for run in runs:
            if run.running:
                return run
        return runs[0]

    def interrupt(self) -> bool:
        run = self.current()
        if run is None:
            return False
        with run.lock:
            run.interrupted = True
            if run.token is not None:
                run.token.cancel()
            for job_id in run.job_ids:
                self._cancel_job(job_id)
        return True

    def skip(self) -> bool:
        run = self.current()
        if run is None:
            return False
        with run.lock:
            run.skipped = True
            if run.token is not None:
                run.token.cancel()
            if run.current_job is not None:
                self._cancel_job(run.current_job)
        return True

    def _cancel_job(self, job_id: int) -> None:
        try:
            self.ctx.queue.cancel(job_id)
        except (ValueError, LookupError):  # finished meanwhile
            pass

    # ------------------------------------------------------------ running
    def use_queue(self, params: dict) -> bool:
        queue = self.ctx.queue
        if queue is None or queue.worker is None or queue.paused:
            return False
        if not getattr(queue.worker, "alive", True):
            return False
        size = len(json.dumps(params).encode())
        return size <= getattr(queue, "max_params_bytes", 4 << 20)

    def execute(self, run: Run) -> list[Outcome]:
        """Run every iteration; returns the outcomes of those that finished (skipped and
        interrupted ones give none). Raises RunFailed when a run fails."""
        run.mode = "queue" if self.use_queue(run.iterations[0]) else "direct"
        with self._lock:
            self._runs.append(run)
        try:
            if run.mode == "queue":
                return self._execute_queued(run)
            return self._execute_direct(run)
        finally:
            with self._lock:
                self._runs.remove(run)

    def _execute_direct(self, run: Run) -> list[Outcome]:
        from studio.tasks import run_task

        outcomes = []
        for index, params in enumerate(run.iterations):
            with run.lock:
                if run.interrupted:
                    break
                run.job_no, run.step, run.total, run.skipped = index, 0, 0, False
                run.token = token = CancelToken()

            def on_progress(progress: Progress) -> None:
                run.progress(progress.step, progress.total, progress.preview)

            try:
                result = run_task(self.ctx, run.task, params, on_progress, token)
            except Cancelled:
                run.skips += 0 if run.interrupted else 1
                continue
            except ValueError:
                raise
            except Exception as error:
                raise RunFailed(str(error) or type(error).__name__) from error
            outcomes.append(Outcome(list(result.item_ids), dict(result.info)))
        return outcomes

    def _execute_queued(self, run: Run) -> list[Outcome]:
        from studio.jobs.queue import JobRequest

        queue = self.ctx.queue
        with run.lock:
            run.job_ids = queue.enqueue_batch(
                [JobRequest(run.task, params, API_PRIORITY) for params in run.iterations])
        outcomes = []
        for index, job_id in enumerate(run.job_ids):
            with run.lock:
                if run.interrupted:
                    break
                run.job_no, run.step, run.total, run.skipped = index, 0, 0, False
                run.current_job = job_id
            while (job := queue.wait(job_id, PROGRESS_S)) is None:  # waiting or running
                live = queue.live().get(job_id)
                if live is not None:
                    run.progress(live.step, live.total, live.preview)
            if job.status == "completed":
                result = job.result or {}
                outcomes.append(Outcome(list(result.get("item_ids") or job.item_ids),
                                        dict(result.get("info") or {})))
            elif job.status == "failed":
                with run.lock:  # the rest would fail the same way
                    run.interrupted = True
                    for later in run.job_ids[index + 1:]:
                        self._cancel_job(later)
                raise RunFailed(job.error or "the generation failed")
            elif not run.interrupted:  # canceled: by /skip, or in the Queue tab
                run.skips += 1
        with run.lock:
            run.current_job = None
        return outcomes
