"""JobQueue: what tabs, the Queue tab and the REST API use. Built once in studio/app.py:

    queue = JobQueue(ctx); ctx.queue = queue; queue.start_worker()   # at start
    queue.stop()                                                     # at shutdown

Every job is validated when it is queued (task known, engine registered, parameters accepted
by the task, JSON-able and not huge), so a bad job is refused with a clear message instead of
failing hours later. Jobs left running by a crash are recovered in `start_worker`.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable

from PIL import Image

from engines.base import ParamError
from studio.jobs.live import LiveBoard, LiveProgress
from studio.jobs.models import FINISHED, PAUSED, PENDING, RUNNING
from studio.jobs.store import JobStore, JobView, NewJob
from studio.jobs.worker import InProcessWorker, Worker

if TYPE_CHECKING:
    from studio.context import StudioContext

MAX_ATTEMPTS = 3  # a job that was running during this many crashes fails instead of looping
MAX_PARAMS_BYTES = 8 << 20  # 8 MiB of JSON: room for a base64 init image, not for a dataset
MAX_JOBS_PER_REQUEST = 10_000  # one enqueue call; expansions are capped the same way
MAX_WAITING_JOBS = 100_000  # the whole queue: a client cannot fill the disk with job rows
PRIORITY_RANGE = (-1000, 1000)
WAIT_RECHECK_S = 1.0  # wait() re-reads the row this often: jobs finished by another process


@dataclass(frozen=True)
class JobRequest:
    task: str
    params: dict[str, Any] = field(default_factory=dict)
    priority: int = 0


class JobQueue:
    def __init__(self, ctx: "StudioContext", max_attempts: int = MAX_ATTEMPTS,
                 max_params_bytes: int = MAX_PARAMS_BYTES,
                 max_jobs_per_request: int = MAX_JOBS_PER_REQUEST) -> None:
        self.ctx = ctx
        self.store = JobStore(ctx.db)
        self.max_attempts = max_attempts
        self.max_params_bytes = max_params_bytes
        self.max_jobs_per_request = max_jobs_per_request
        self.worker: Worker | None = None  # generation: one job at a time on the device
        self.lanes: list[Worker] = []  # long jobs (training) beside it, e.g. style training
        self.board = LiveBoard()  # live progress of jobs run in this process (runner handles)
        self.max_waiting_jobs = MAX_WAITING_JOBS
        self.recovered: dict[str, int] = {}
        self._paused = self.store.is_paused()  # the row is the truth; this saves a query per job
        self._waiters: dict[int, set[threading.Event]] = {}  # job id -> events of wait() calls
        self._waiters_lock = threading.Lock()

    # ------------------------------------------------------------ enqueue
    def enqueue(self, task_name: str, params: dict, priority: int = 0) -> int:
        """Validate and queue one job; returns its id. Raises ValueError naming what is wrong."""
        return self.enqueue_batch([JobRequest(task_name, params, priority)])[0]

    def enqueue_many(self, task_name: str, params_list: Iterable[dict], priority: int = 0) -> list[int]:
        """Many jobs of one task, all or none (one bad one refuses the lot, naming its index)."""
        return self.enqueue_batch([JobRequest(task_name, p, priority) for p in params_list])

    def enqueue_batch(self, requests: Iterable[JobRequest]) -> list[int]:
        """Jobs of any tasks, all or none, in the given order."""
        from studio.uploads import ImageIntake

        requests = list(requests)
        if len(requests) > self.max_jobs_per_request:
            raise ValueError(f"{len(requests):,} jobs in one request; the limit is "
                             f"{self.max_jobs_per_request:,}")
        intake = ImageIntake(self.ctx)  # one image given to many jobs is stored once
        try:
            jobs = []
            for index, request in enumerate(requests):
                try:
                    jobs.append(self.check(request, intake))
                except ValueError as error:
                    if len(requests) == 1:
                        raise
                    raise ParamError(getattr(error, "field", None),
                                     f"job {index + 1} of {len(requests)}: {error}") from None
            waiting = self.store.waiting_count()
            if waiting + len(jobs) > self.max_waiting_jobs:
                raise ValueError(f"the queue is full: {waiting:,} jobs wait "
                                 f"and the limit is {self.max_waiting_jobs:,}; wait for some to "
                                 f"run or clear them")
            ids = self.store.insert(jobs)
        except BaseException:
            intake.forget()  # nothing queued: no upload stored for it stays in the gallery
            raise
        self._wake_workers()
        return ids

    def check(self, request: JobRequest, intake=None) -> NewJob:
        """The enqueue-time validation of one job; returns the row to insert. Images given inline
        enter here, once (studio/uploads.py ImageIntake): decoded, checked by the task, stored;
        the row refers to them by id."""
        from studio.tasks import validate_task
        from studio.uploads import ImageIntake

        spec = self._check_request(request)
        self._check_size(request.params, images=True)  # the request as sent (base64 counts)
        intake = intake or ImageIntake(self.ctx)
        params = intake.decode(request.task, request.params)
        try:
            validate_task(self.ctx, request.task, params)
        except (TypeError, KeyError) as error:  # a task whose validate let a wrong shape through
            raise ValueError(f"parameters for {request.task!r} are incomplete or of the wrong "
                             f"shape: {error}") from None
        params = intake.store(request.task, params)
        self._check_size(params, images=False)  # the row: plain JSON, ids for images
        return NewJob(task=request.task, engine=spec.engine, params=params,
                      priority=request.priority, label=_label(request.params))

    def _check_request(self, request: JobRequest):
        """The task's spec, once task, engine, priority and the params' type are right."""
        from studio.tasks import get_task

        if not isinstance(request.task, str) or not request.task:
            raise ParamError("task", f"`task` must be a task name, got {request.task!r}")
        spec = get_task(request.task)  # ValueError listing the known tasks
        if spec.engine not in self.ctx.engines.kinds():
            raise ValueError(f"task {request.task!r} needs the {spec.engine!r} engine, which this "
                             f"studio does not have (engines: {', '.join(self.ctx.engines.kinds()) or 'none'})")
        priority = request.priority
        if isinstance(priority, bool) or not isinstance(priority, int) or not (
                PRIORITY_RANGE[0] <= priority <= PRIORITY_RANGE[1]):
            raise ParamError("priority", f"`priority` must be a whole number from {PRIORITY_RANGE[0]} to "
                             f"{PRIORITY_RANGE[1]}, got {priority!r}")
        if not isinstance(request.params, dict):
            raise ValueError(f"parameters must be an object, got {type(request.params).__name__}")
        return spec

    def _check_size(self, params: dict, images: bool) -> None:
        """Plain JSON within max_params_bytes; with `images`, PIL images (from a tab, stored
        next) count as nothing."""
        def image_placeholder(value):
            if images and isinstance(value, Image.Image):
                return None
            raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")

        try:
            size = len(json.dumps(params, allow_nan=False, default=image_placeholder).encode())
        except (TypeError, ValueError) as error:
            raise ValueError(f"parameters must be plain JSON values: {error}") from None
        if size > self.max_params_bytes:
            raise ValueError(f"parameters are {size / 1e6:.1f} MB; the limit is "
                             f"{self.max_params_bytes / 1e6:.1f} MB per job (refer to gallery "
                             f"images by id, e.g. `init_image_id`, instead of embedding them)")

    # ------------------------------------------------------------ worker
    def start_worker(self, worker: Worker | None = None) -> Worker:
        """Recover jobs a crash left running, then start the worker (in-process by default)."""
        if self.worker is not None:
            raise RuntimeError("the queue's worker is already running")
        from studio.tasks import lane_tasks

        self.recovered = self.store.recover(self.max_attempts)
        training = lane_tasks("training")
        self.worker = worker or InProcessWorker(self.ctx, self.store, lambda: self._paused,
                                                on_finished=self.job_finished,
                                                board=self.board, skip_tasks=training)
        self.worker.start()
        if worker is None and training:
            lane = InProcessWorker(self.ctx, self.store, lambda: self._paused,
                                   name=f"{self.worker.name}-training",
                                   on_finished=self.job_finished, board=self.board,
                                   tasks=training)
            lane.start()
            self.lanes.append(lane)
        return self.worker

    def _workers(self) -> list[Worker]:
        return ([self.worker] if self.worker is not None else []) + self.lanes

    def _wake_workers(self) -> None:
        for worker in self._workers():
            worker.wake()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the worker; a job it was running goes back to pending and runs at next start."""
        for worker in self._workers():
            worker.stop(timeout)
        self.worker, self.lanes = None, []

    # ------------------------------------------------------------ control
    def pause(self) -> None:
        """No new job starts until resume(); the running one finishes. Survives a restart."""
        self.store.set_paused(True)
        self._paused = True

    def resume(self) -> None:
        self.store.set_paused(False)
        self._paused = False
        self._wake_workers()

    @property
    def paused(self) -> bool:
        return self._paused

    def cancel(self, job_id: int) -> JobView:
        """A waiting job is canceled at once; a running one stops at its next step and saves
        nothing (outputs of finished jobs are kept)."""
        status = self.store.request_cancel(job_id)
        if status == RUNNING:
            for worker in self._workers():
                worker.cancel(job_id)
        else:  # canceled before it started: final now
            self.job_finished(job_id)
        return self.store.get(job_id)

    def retry(self, job_id: int) -> JobView:
        self.store.retry(job_id)
        self._wake_workers()
        return self.store.get(job_id)

    def move(self, job_id: int, where: str) -> None:
        self.store.move(job_id, where)

    def hold(self, job_id: int, held: bool = True) -> None:
        """Hold one waiting job back (status paused) or let it run again."""
        self.store.hold(job_id, held)
        if not held:
            self._wake_workers()

    def clear_finished(self) -> int:
        """Delete completed, failed and canceled jobs; their gallery items stay."""
        return self.store.clear_finished()

    # ------------------------------------------------------------ reading
    def get(self, job_id: int) -> JobView:
        return self.store.get(job_id)

    def list(self, statuses: Iterable[str] | None = None, limit: int = 200, offset: int = 0) -> list[JobView]:
        return self.store.list(statuses, limit, offset)

    def counts(self) -> dict[str, int]:
        return self.store.counts()

    def live(self) -> dict[int, LiveProgress]:
        """Progress of the jobs running in this process (a worker's own view, else the board's)."""
        live = self.board.snapshot()
        for worker in self._workers():
            if not isinstance(worker, InProcessWorker):  # e.g. a remote worker with its own view
                live.update(worker.live())
        return live

    def position(self, job: JobView) -> int:
        """Jobs that will run before this waiting one."""
        return self.store.jobs_ahead(job)

    def etas(self, jobs: list[JobView]) -> dict[int, float]:
        """Seconds until each running or waiting job in `jobs` finishes: the running job's own
        estimate, plus the mean recent duration of each waiting job's task ahead of it."""
        live = self.live()
        means = self.store.recent_durations()
        fallback = sum(means.values()) / len(means) if means else None
        etas: dict[int, float] = {}
        clock = 0.0
        for job in jobs:  # list() gives running, then waiting in run order
            if job.status == RUNNING:
                progress = live.get(job.id)
                left = progress.eta_s if progress is not None else None
                if left is None and (mean := means.get(job.task, fallback)) is not None:
                    left = max(0.0, mean - (job.duration_s or 0.0))
                if left is not None:
                    clock += left
                    etas[job.id] = clock
            elif job.status == PENDING:
                mean = means.get(job.task, fallback)
                if mean is None:
                    break
                clock += mean
                etas[job.id] = clock
        return etas

    def wait(self, job_id: int, timeout: float | None = None) -> JobView | None:
        """Block until the job is completed, failed or canceled and return it; None when
        `timeout` seconds pass first (None: no limit). Raises LookupError for an unknown job.

        This process's worker (and `cancel` of a waiting job) sets the waiter's Event the moment
        the final state is stored, so no polling in between; a job finished by another process
        (a worker elsewhere, a cancel through another studio) is seen by re-reading the row
        every WAIT_RECHECK_S seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        event = threading.Event()
        with self._waiters_lock:
            self._waiters.setdefault(job_id, set()).add(event)
        try:
            while True:
                job = self.store.get(job_id)  # read after registering: no finish is missed
                if job.finished:
                    return job
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                event.wait(WAIT_RECHECK_S if left is None else min(left, WAIT_RECHECK_S))
                event.clear()  # a retried job can finish again; read the row before waiting
        finally:
            with self._waiters_lock:
                events = self._waiters.get(job_id)
                if events is not None:
                    events.discard(event)
                    if not events:
                        del self._waiters[job_id]

    def job_finished(self, job_id: int) -> None:
        """Called by a worker (in-process or remote) once a job's final state is stored: wakes
        whoever waits for it."""
        with self._waiters_lock:
            events = list(self._waiters.get(job_id, ()))
        for event in events:
            event.set()
        self.board.touch()  # runner handles re-read the row

    def wait_idle(self, timeout: float = 60.0, poll_s: float = 0.05) -> bool:
        """Until nothing is pending or running (tests, benchmarks, scripts)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            counts = self.store.counts()
            if counts[PENDING] == 0 and counts[RUNNING] == 0:
                return True
            time.sleep(poll_s)
        return False


def _label(params: dict) -> str:
    messages = params.get("messages")
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
        content = messages[-1].get("content")
        if isinstance(content, str) and content.strip():
            return " ".join(content.split())[:200]
    for key in ("prompt", "description", "message", "text", "code", "prefix", "style"):
        value = params.get(key)
        if isinstance(value, str) and value.strip():
            return " ".join(value.split())[:200]
    return ""


__all__ = ["JobQueue", "JobRequest", "JobView", "FINISHED", "PAUSED", "PENDING", "RUNNING",
           "MAX_ATTEMPTS", "MAX_PARAMS_BYTES"]
