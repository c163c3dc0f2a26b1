"""A1111 generation requests on the studio's one runner, and what /progress, /interrupt and /skip
see: the job running now, whoever started it (a tab, the queue, this API), since every
generation is a job.

A request with `n_iter` runs becomes `n_iter` jobs of `batch_size` images each (seeds
`seed + k * batch_size` onward, which is what the engine gives image k of one big request), all
queued at once at API priority, so that /skip can drop the run in progress and go on with the
next, as A1111 does. The request waits on the event loop (never on a pooled thread), for at most
SYNC_TIMEOUT_S, and cancels its jobs when the client goes away.
"""
from __future__ import annotations

import asyncio
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from studio.jobs.runner import API, JobHandle

if TYPE_CHECKING:
    from studio.context import StudioContext

SYNC_TIMEOUT_S = 1800.0  # a request waits this long for its jobs, then they are canceled
DISCONNECT_CHECK_S = 0.5  # how often a waiting request asks whether its client is still there


class RunFailed(RuntimeError):
    """A job of the request failed; `field` names the parameter at fault when one was."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class QueueUnavailable(RuntimeError):
    """The request cannot run now (the queue is paused); the message says what to do."""


@dataclass
class Outcome:
    item_ids: list[int]
    info: dict[str, Any]


@dataclass
class Run:
    kind: str  # "txt2img" | "img2img"
    task: str  # the task that does the work: txt2img, img2img, inpaint
    iterations: list[dict]  # task params, one per n_iter
    uploads: list[int] = field(default_factory=list)  # gallery ids of stored input images
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    timestamp: str = field(default_factory=lambda: datetime.now().strftime("%Y%m%d%H%M%S"))
    handles: list[JobHandle] = field(default_factory=list)
    interrupted: bool = False
    skips: int = 0

    @property
    def job_ids(self) -> list[int]:
        return [h.id for h in self.handles]

    @property
    def job_count(self) -> int:
        return len(self.iterations)


class Runs:
    """A1111 requests in flight in this process, and the running job as A1111's /progress sees it."""

    def __init__(self, ctx: "StudioContext") -> None:
        self.ctx = ctx
        self._runs: list[Run] = []
        self._lock = threading.Lock()

    # ------------------------------------------------------------ the job running now
    def current(self) -> tuple[int, Any, Run | None] | None:
        """(job id, live progress, the A1111 request it belongs to or None) of the running job
        (a job of an A1111 request first, else any generation), or None when nothing runs."""
        live = self.ctx.queue.live()
        if not live:
            return None
        with self._lock:
            owners = {job_id: run for run in self._runs for job_id in run.job_ids}
        ordered = sorted(live, key=lambda job_id: (job_id not in owners, job_id))
        job_id = ordered[0]
        return job_id, live[job_id], owners.get(job_id)

    def interrupt(self) -> bool:
        """Stop the running job; when it belongs to an A1111 request, the rest of it too."""
        return self._stop_current(whole_request=True)

    def skip(self) -> bool:
        """Stop the running job only; an A1111 request goes on with its next run."""
        return self._stop_current(whole_request=False)

    def _stop_current(self, whole_request: bool) -> bool:
        current = self.current()
        if current is None:
            return False
        job_id, _, run = current
        if run is not None and whole_request:
            run.interrupted = True
            for handle in run.handles:
                handle.cancel()
            return True
        if run is not None:
            run.skips += 1
        self.ctx.runner.handle(job_id).cancel()
        return True

    # ------------------------------------------------------------ running a request
    async def execute(self, run: Run, disconnected: Callable[[], Awaitable[bool]],
                      timeout: float = SYNC_TIMEOUT_S) -> list[Outcome]:
        """Queue every run of the request and wait for them in order; returns the outcomes of
        those that finished (skipped and interrupted ones give none). Raises RunFailed when a
        run fails, TimeoutError past `timeout`, QueueUnavailable when the queue is paused."""
        if self.ctx.queue.paused:
            raise QueueUnavailable("the queue is paused, so this request would wait forever; "
                                   "resume it in the Queue tab or with POST /api/queue/resume")
        run.handles = self.ctx.runner.submit_many(run.task, run.iterations, priority=API)
        with self._lock:
            self._runs.append(run)
        watcher = asyncio.create_task(_watch(disconnected, run))
        try:
            return await self._wait_all(run, time.monotonic() + timeout)
        finally:
            watcher.cancel()
            with self._lock:
                self._runs.remove(run)
            for handle in run.handles:  # left early (timeout, failure, client gone): stop the rest
                handle.cancel()

    async def _wait_all(self, run: Run, deadline: float) -> list[Outcome]:
        outcomes = []
        for handle in run.handles:
            final = None
            async for update in handle.aupdates(cancel_on_exit=False,
                                                timeout=max(0.0, deadline - time.monotonic())):
                final = update
            if final.status == "completed":
                outcomes.append(Outcome(list(final.result["item_ids"]), dict(final.result["info"])))
            elif final.status == "failed":
                raise RunFailed(final.error or "the generation failed", final.error_field)
        return outcomes


async def _watch(disconnected: Callable[[], Awaitable[bool]], run: Run) -> None:
    """Cancel the request's jobs when its client goes away."""
    while not await disconnected():
        await asyncio.sleep(DISCONNECT_CHECK_S)
    run.interrupted = True
    for handle in run.handles:
        handle.cancel()
