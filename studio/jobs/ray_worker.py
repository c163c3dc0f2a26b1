"""The queue's jobs on Ray actors (`launch.py --ray ADDRESS`, docs/scale-out.md).

    studio process: JobQueue -> RayWorker (the `Worker` of studio/jobs/worker.py)
    Ray cluster:    QueueActor x N, one per GPU (num_gpus=1), or N CPU actors (--ray-workers N)

Each actor is a long-lived process with its own EngineManager (models stay loaded between jobs,
within its memory budget) and the same `InProcessWorker` loop a single studio runs, pulling from
the shared database (PostgreSQL): claim -> run_task -> finish. There is no dispatcher: every
claim reads the same index, so the order is the queue's. An actor prefers, within the top
priority, jobs for the models it already holds. Idle actors wake on PostgreSQL NOTIFY.

The studio process only watches: a mirror thread long-polls each actor's live board and
publishes progress, previews and text on the queue's own board, so a job on an actor looks in the
UI and the APIs like a local one; cancel reaches the actor at once (and the row's flag anyway).
A reaper thread takes back the jobs of dead actors: a SIGKILLed actor process (Ray restarts the
actor; the new process answers with another pid), a lost node (its heartbeat goes stale) or a
hung actor (no progress for `hung_after_s`: it is killed and restarted first).

Actors are named after an id kept in the database, detached and restarted by Ray, so several
studio front-ends on one database and one cluster share the same actors; `shutdown()` removes
them.
"""
from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from studio.jobs.heartbeat import DEAD_AFTER_S, worker_id
from studio.jobs.live import LiveBoard, LiveProgress
from studio.jobs.models import RUNNING

if TYPE_CHECKING:
    from studio.context import StudioContext

log = logging.getLogger(__name__)

NAMESPACE = "genstudio"
HUNG_AFTER_S = 600.0  # a running job with no progress for this long: its actor is restarted
REAP_EVERY_S = 5.0
WATCH_S = 1.0  # an actor's long-poll of its live board returns at least this often


def start_queue_worker(ctx: "StudioContext"):
    """The studio's queue worker: on Ray actors with --ray, else in this process (with a
    LISTEN thread on PostgreSQL, so that jobs queued by other studios start at once)."""
    queue, config = ctx.queue, ctx.config
    if config.ray_address:
        worker = RayWorker(ctx, config.ray_address, workers=config.ray_workers,
                           board=queue.board, on_finished=queue.job_finished)
        try:
            return queue.start_worker(worker)
        except Exception as error:  # no cluster, no room for the actors: one line, no traceback
            raise SystemExit(f"GenStudio: --ray {config.ray_address}: "
                             f"{str(error).strip().splitlines()[0]}") from None
    worker = queue.start_worker()
    if ctx.db.shared:
        threading.Thread(target=_wake_on_notify, args=(queue,), name="queue-listen",
                         daemon=True).start()
    return worker


def _wake_on_notify(queue) -> None:
    """Wake the workers when another studio queues work; between times, take back the jobs of
    studios that died elsewhere (their heartbeats stopped), as a restart would."""
    listener, last_recovery = queue.store.listen(), time.monotonic()
    while queue.worker is not None:
        if listener.wait(REAP_EVERY_S):
            for worker in [queue.worker, *queue.lanes]:
                if worker is not None:
                    worker.wake()
        if time.monotonic() - last_recovery >= DEAD_AFTER_S:
            last_recovery = time.monotonic()
            try:
                queue.store.recover(queue.max_attempts)
            except Exception:
                log.warning("queue: recovery round failed", exc_info=True)


def actor_prefix(store) -> str:
    """Actors serve one database: studios of another database on the same cluster get their own.
    Named after an id kept in the database itself, so every studio finds the same actors however
    it spells the URL (host name or address, another user or password)."""
    return f"genstudio-{store.database_id()}-"


# ---------------------------------------------------------------------------- inside the actor
class QueueActor:
    """One Ray actor: an EngineManager and an InProcessWorker loop on the shared database.
    `setup` names a function `module:function(ctx)` run once at start (tests add their engine)."""

    def __init__(self, name: str, config, db_url: str, max_attempts: int,
                 setup: str | None = None) -> None:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        from engines.base import EngineManager
        from studio.app import ENGINES
        from studio.context import StudioContext
        from studio.db.database import Database
        from studio.gallery.store import GalleryStore
        from studio.jobs.store import JobStore
        from studio.jobs.worker import InProcessWorker

        self.name = name
        db = Database(db_url)
        engines = EngineManager(config.device, int(config.memory_budget_gb * (1 << 30)))
        for spec in ENGINES:
            engines.register(spec)
        self.ctx = StudioContext(config=config, db=db, gallery=GalleryStore(db, config.storage),
                                 engines=engines)
        if setup:
            module, _, function = setup.partition(":")
            getattr(importlib.import_module(module), function)(self.ctx)
        self.store = JobStore(db)
        # A restarted actor is a new process: the jobs of its dead predecessor go back first.
        self.recovered = self.store.recover(max_attempts)
        self.board = LiveBoard()
        self.worker = InProcessWorker(self.ctx, _ActorSource(self.store, name, engines),
                                      self.store.is_paused, name=name, board=self.board)
        self.worker.start()
        if db.shared:
            threading.Thread(target=self._listen, name="actor-listen", daemon=True).start()

    def _listen(self) -> None:
        listener = self.store.listen()
        while self.worker.alive:
            if listener.wait(30.0):
                self.worker.wake()

    def identity(self) -> str:
        """`name@host:pid`, as its jobs record it; another pid after a restart."""
        return worker_id(self.name)

    def watch(self, seen_version: int, timeout: float = WATCH_S) -> tuple[int, dict[int, LiveProgress]]:
        """Long-poll: the board once it changed after `seen_version` (or `timeout` passed)."""
        version = self.board.wait(seen_version, timeout)
        return version, self.board.snapshot()

    def cancel(self, job_id: int) -> bool:
        return self.worker.cancel(job_id)

    def wake(self) -> None:
        self.worker.wake()

    def stop(self) -> None:
        """The running job goes back to pending (not an attempt), then the loop ends."""
        self.worker.stop(timeout=30)

    def loaded(self) -> list[tuple[str, str, int]]:
        return self.ctx.engines.loaded()


class _ActorSource:
    """The store as this actor's JobSource: claims prefer the models the actor holds, and a
    finish counts only while the job is still this actor's (not taken back from it as hung)."""

    def __init__(self, store, name: str, engines) -> None:
        self.store, self.name, self.engines = store, name, engines

    def claim(self, worker: str, tasks=None, skip_tasks=()):
        return self.store.claim(worker, tasks, skip_tasks, prefer=self._held())

    def _held(self) -> list[tuple[str, str]]:
        held = []
        for kind, model, _ in self.engines.loaded():
            held.append((kind, model))
            if model == self.engines.spec(kind).default_model:
                held.append((kind, ""))  # jobs that name no model use the default
        return held

    def report_progress(self, job_id: int, progress: float, message: str) -> bool:
        return self.store.report_progress(job_id, progress, message)

    def finish(self, job_id: int, status: str, error: str | None = None,
               result: dict[str, Any] | None = None) -> None:
        self.store.finish(job_id, status, error, result, worker=self.name)

    def release(self, job_id: int) -> None:
        self.store.release(job_id)


def add_test_engine(ctx) -> None:
    """`setup` for tests and benchmarks: the trivial `null` engine and its tasks."""
    from studio.jobs.testing import add_null_engine, register_test_tasks

    add_null_engine(ctx.engines)
    register_test_tasks()


# ---------------------------------------------------------------------------- the studio's side
class RayWorker:
    """The queue's `Worker` when jobs run on Ray actors."""

    def __init__(self, ctx: "StudioContext", address: str | None = "auto", workers: int = 0,
                 board: LiveBoard | None = None, on_finished: Callable[[int], None] | None = None,
                 hung_after_s: float = HUNG_AFTER_S, reap_every_s: float = REAP_EVERY_S,
                 max_attempts: int = 3, setup: str | None = None,
                 start_timeout_s: float = 120.0) -> None:
        if workers < 0:
            raise ValueError(f"workers must be 0 (one per GPU) or more, got {workers}")
        self.ctx, self.address, self.workers = ctx, address, workers
        self.board = board or LiveBoard()
        self.on_finished = on_finished
        self.hung_after_s, self.reap_every_s = hung_after_s, reap_every_s
        self.max_attempts, self.setup = max_attempts, setup
        self.start_timeout_s = start_timeout_s  # to construct the actors (no model loads then)
        self.prefix = ""  # set by start(), from the database
        self.actors: dict[str, Any] = {}  # actor name -> handle
        self.last_step: dict[int, int] = {}  # job id -> last step seen (tests, diagnostics)
        self._running: dict[int, str] = {}  # job id -> actor name, as the mirror last saw
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # --- Worker interface
    def start(self) -> None:
        import ray

        if not ray.is_initialized():
            ray.init(address=self.address, namespace=NAMESPACE, log_to_driver=False)
        gpus = int(ray.cluster_resources().get("GPU", 0))
        count = self.workers or gpus
        if count == 0:
            raise ValueError("the Ray cluster has no GPUs: give --ray-workers N to run N CPU actors")
        if gpus and count > gpus:
            raise ValueError(f"{count} GPU actors asked for, but the cluster has {gpus} GPUs")
        self.prefix = actor_prefix(self.ctx.queue.store)
        # GPU actors hold a GPU each; CPU actors a CPU. Detached and named: other studios on this
        # database attach to them; Ray restarts one whose process dies.
        options = dict(namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
                       max_restarts=-1, max_concurrency=8,
                       num_gpus=1 if gpus else 0, num_cpus=0 if gpus else 1)
        remote = ray.remote(QueueActor)
        db_url = self.ctx.db.url.render_as_string(hide_password=False)
        config = dataclasses.replace(self.ctx.config, auth=())  # actors serve no logins
        for index in range(count):
            name = f"{self.prefix}{index}"
            self.actors[name] = remote.options(name=name, **options).remote(
                name, config, db_url, self.max_attempts, self.setup)
        placed, waiting = ray.wait([a.identity.remote() for a in self.actors.values()],
                                   num_returns=count, timeout=self.start_timeout_s)
        if waiting:  # e.g. the GPUs are held by actors of another database: say so, do not hang
            raise RuntimeError(
                f"Ray placed only {len(placed)} of {count} queue actors within "
                f"{self.start_timeout_s:.0f} s (each needs {'1 GPU' if gpus else '1 CPU'}; free now: "
                f"{ray.available_resources().get('GPU' if gpus else 'CPU', 0):g}); see `ray status`")
        ray.get(placed)  # an actor that failed to start raises here, with its reason
        for target, label in ((self._mirror, "ray-mirror"), (self._reaper, "ray-reaper")):
            thread = threading.Thread(target=target, name=label, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop watching; the actors go on serving the queue (other studios may use them)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)
        for job_id in list(self._running):
            self.board.end(job_id)
        self._running.clear()

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop watching and end the actors: running jobs go back to pending first."""
        import ray

        self.stop(timeout)
        try:
            ray.get([a.stop.remote() for a in self.actors.values()], timeout=timeout)
        except Exception:
            log.warning("ray worker: actors did not stop in %s s; killing them", timeout)
        for actor in self.actors.values():
            ray.kill(actor, no_restart=True)
        self.actors.clear()

    def wake(self) -> None:
        for actor in self.actors.values():
            actor.wake.remote()

    def cancel(self, job_id: int) -> bool:
        """The row's cancel flag is set already; this reaches the actor without waiting for its
        next progress write."""
        name = self._running.get(job_id)
        targets = [self.actors[name]] if name in self.actors else list(self.actors.values())
        for actor in targets:
            actor.cancel.remote(job_id)
        return name is not None

    def live(self) -> dict[int, LiveProgress]:
        return {job_id: live for job_id in list(self._running)
                if (live := self.board.get(job_id)) is not None}

    # --- threads
    def _mirror(self) -> None:
        """Long-poll every actor's board; publish what changed on the studio's board."""
        import ray

        seen = {name: -1 for name in self.actors}
        pending = {self.actors[n].watch.remote(seen[n]): n for n in self.actors}
        while not self._stop.is_set():
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=WATCH_S)
            for ref in ready:
                name = pending.pop(ref)
                try:
                    seen[name], snapshot = ray.get(ref)
                except Exception:  # the actor died or restarts: its jobs vanish from the board
                    seen[name], snapshot = -1, {}
                    time.sleep(0.2)
                self._publish(name, snapshot)
                pending[self.actors[name].watch.remote(seen[name])] = name

    def _publish(self, name: str, snapshot: dict[int, LiveProgress]) -> None:
        for job_id, live in snapshot.items():
            if self._running.get(job_id) != name:
                self._running[job_id] = name
                self.board.start(job_id)
            self.board.publish(job_id, live.step, live.total, live.message, live.preview, live.text)
            self.last_step[job_id] = live.step
        for job_id in [j for j, n in self._running.items() if n == name and j not in snapshot]:
            del self._running[job_id]
            self.board.end(job_id)
            if self.on_finished is not None:
                self.on_finished(job_id)  # its final row is stored before the actor's board ends

    def _reaper(self) -> None:
        while not self._stop.wait(self.reap_every_s):
            try:
                self.reap()
            except Exception:
                log.warning("ray worker: recovery round failed", exc_info=True)

    def reap(self, hung_after_s: float | None = None) -> dict[str, int]:
        """Take back jobs of dead workers: an actor that answers with another pid than its job
        records was restarted (its old process is dead); a worker on a lost node stopped its
        heartbeats (the store's rules); a job without progress for `hung_after_s` has its actor
        killed (and restarted), then goes back at the next round (`hung_after_s` overrides the
        worker's own threshold for this round)."""
        import ray

        from studio.jobs.store import now

        running = self.ctx.queue.store.list(statuses=[RUNNING], limit=10_000)
        if not running:
            return {}
        running = [j for j in running if j.worker and j.worker.startswith(self.prefix)]
        hung_after_s = self.hung_after_s if hung_after_s is None else hung_after_s
        refs = {name: actor.identity.remote() for name, actor in self.actors.items()}
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=2.0)
        current = {}  # actor name -> the process it runs in now; unknown while it restarts
        for name, ref in refs.items():
            if ref in ready:
                try:
                    current[name] = ray.get(ref)
                except ray.exceptions.RayError:
                    pass
        dead = set()
        for job in running:
            name = job.worker.partition("@")[0]
            if name in current and current[name] != job.worker:
                dead.add(job.worker)  # Ray restarted this actor: the process that ran it is gone
            elif (now() - (job.heartbeat_at or job.started_at or now())).total_seconds() > hung_after_s:
                if name in self.actors and name in current:
                    log.warning("ray worker: job %s made no progress for over %.1f s; restarting %s",
                                job.id, hung_after_s, name)
                    ray.kill(self.actors[name], no_restart=False)
        return self.ctx.queue.store.recover(self.max_attempts, dead_workers=dead)
