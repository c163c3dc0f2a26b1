"""JobStore: every read and write of the queue's rows, and nothing else (no threads, no tasks).

Order: a worker takes the pending job with the highest `priority`, then the lowest `position`,
then the lowest id. Positions are floats so that "move up" can slot a job between two others
without renumbering the queue. Taking a job is one UPDATE ... RETURNING statement, so two
workers can never take the same row; on PostgreSQL its candidate row is locked FOR UPDATE SKIP
LOCKED, so many workers on many machines claim at once without waiting for each other.

Read-then-write actions (cancel, hold, move, retry, recover) lock what they read first, so a
claim running at the same moment either sees their result or is seen by them: on PostgreSQL the
row (SELECT ... FOR UPDATE; a claim skips it), on SQLite the database's write lock (a first
write before the read). New jobs NOTIFY `jobs` on PostgreSQL, which idle workers LISTEN to.
"""
from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any, Iterable

from sqlalchemy import case, delete, func, insert, or_, select, text, update
from sqlalchemy.orm import Session

from engines.base import ParamError
from studio.db.database import Database
from studio.jobs.heartbeat import DEAD_AFTER_S, Heartbeat, WorkerProcess, is_dead, worker_id
from studio.jobs.models import (CANCELED, COMPLETED, FAILED, FINISHED, PAUSED, PENDING, RUNNING,
                                Job, JobItem, QueueState)
from studio.jobs.order import RUN_ORDER, new_place, runs_before
from studio.jobs.views import JobView, NewJob, now

PAUSED_KEY = "paused"
DATABASE_ID_KEY = "database_id"
CHANNEL = "genstudio_jobs"  # NOTIFY channel: jobs were queued, retried, released or resumed
POSITION_LOCK = 7_460_002  # PostgreSQL advisory lock: one writer of queue positions at a time


class JobStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # ------------------------------------------------------------ enqueue
    def insert(self, jobs: list[NewJob]) -> list[int]:
        """All rows in one transaction, after every job already queued; returns their ids."""
        if not jobs:
            return []
        created = now()
        with self.db.transaction() as session:
            self._serialise(session)
            last = session.scalar(select(func.max(Job.position))) or 0.0
            rows = [{"task": j.task, "engine": j.engine, "params_json": json.dumps(j.params),
                     "model": _model(j.params), "label": j.label, "status": PENDING,
                     "priority": j.priority,
                     "position": float(int(last) + 1 + i), "progress": 0.0, "message": "",
                     "attempts": 0, "cancel_requested": 0, "created_at": created}
                    for i, j in enumerate(jobs)]
            result = session.execute(insert(Job).returning(Job.id, sort_by_parameter_order=True), rows)
            ids = [row[0] for row in result]
            self.db.notify(session, CHANNEL)
            return ids

    # ------------------------------------------------------------ the worker's side
    # The worker's calls run once or twice per job: plain Core statements on a connection, no
    # ORM session, to keep the queue's own cost per job to about a millisecond each.
    def claim(self, worker: str, tasks: tuple[str, ...] | None = None,
              skip_tasks: tuple[str, ...] = (),
              prefer: Iterable[tuple[str, str]] = ()) -> JobView | None:
        """Mark the next pending job running (attempts + 1) and return it; None when none waits.

        `worker` is stored as `name@host:pid` (this process's host and pid unless the name says).
        `tasks` limits the claim to those tasks, `skip_tasks` leaves those to another worker.
        `prefer`: (engine, model) pairs the worker has loaded; among the waiting jobs of the top
        priority, one for those goes first (model '' stands for the engine's default model)."""
        Heartbeat.ensure(self.db)  # recovery elsewhere must see this process alive
        jobs = Job.__table__
        waiting = select(jobs.c.id).where(jobs.c.status == PENDING)
        if tasks is not None:
            waiting = waiting.where(jobs.c.task.in_(tasks))
        if skip_tasks:
            waiting = waiting.where(jobs.c.task.not_in(skip_tasks))
        order = [jobs.c.priority.desc()]
        prefer = list(prefer)
        if prefer:
            held = or_(*[(jobs.c.engine == engine) & (jobs.c.model == model) for engine, model in prefer])
            order.append(case((held, 0), else_=1))
        next_id = (waiting.order_by(*order, jobs.c.position, jobs.c.id).limit(1)
                   .with_for_update(skip_locked=True)  # PostgreSQL; SQLite has one writer anyway
                   .scalar_subquery())
        # The pause is read in the same statement: a worker that looked before the pause was
        # stored (or another studio's worker) cannot take a job after it.
        paused = select(QueueState.key).where(QueueState.key == PAUSED_KEY, QueueState.value == "1")
        moment = now()
        with self.db.engine.begin() as conn:
            row = conn.execute(
                update(jobs).where(jobs.c.id == next_id, jobs.c.status == PENDING, ~paused.exists())
                .values(status=RUNNING, worker=worker_id(worker), started_at=moment,
                        heartbeat_at=moment, finished_at=None, attempts=jobs.c.attempts + 1,
                        progress=0.0, message="", error=None, cancel_requested=0)
                .returning(*jobs.c)).first()
            return self._view(row, ()) if row is not None else None

    def report_progress(self, job_id: int, progress: float, message: str) -> bool:
        """Store progress and a heartbeat; returns whether someone asked to cancel the job."""
        jobs = Job.__table__
        with self.db.engine.begin() as conn:
            if self.db.dialect == "postgresql":
                # A progress write lost in a server crash costs nothing (the next one replaces
                # it), so it does not wait for the disk; claims, finishes and outputs still do.
                conn.execute(text("SET LOCAL synchronous_commit TO OFF"))
            flag = conn.execute(
                update(jobs).where(jobs.c.id == job_id)
                .values(progress=progress, message=message[:500], heartbeat_at=now())
                .returning(jobs.c.cancel_requested)).scalar_one_or_none()
            return bool(flag)

    def finish(self, job_id: int, status: str, error: str | None = None,
               result: dict[str, Any] | None = None, worker: str | None = None) -> bool:
        """Store the outcome of a running job; returns False when the job was no longer running
        (or, with `worker`, no longer this worker's: it was taken back from a hung worker)."""
        if status not in FINISHED:
            raise ValueError(f"finish() takes one of {FINISHED}, got {status!r}")
        values: dict[str, Any] = {"status": status, "error": error, "finished_at": now()}
        if status == COMPLETED:
            values.update(progress=1.0)
        if status == COMPLETED or result:  # a failure may carry details, e.g. the bad field
            values.update(result_json=json.dumps(result or {}, default=str))
        jobs = Job.__table__
        owned = jobs.c.worker == worker_id(worker) if worker else jobs.c.status == RUNNING
        with self.db.engine.begin() as conn:
            return conn.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.status == RUNNING, owned)
                                .values(**values)).rowcount == 1

    def release(self, job_id: int) -> None:
        """Put a running job back as it was (the worker is shutting down): not an attempt."""
        with self.db.transaction() as session:
            session.execute(update(Job).where(Job.id == job_id, Job.status == RUNNING).values(
                status=PENDING, attempts=case((Job.attempts > 0, Job.attempts - 1), else_=0),
                progress=0.0, message="", started_at=None, worker=None))
            self.db.notify(session, CHANNEL)

    @staticmethod
    def link_items(session: Session, job_id: int, item_ids: Iterable[int]) -> None:
        """Inside the gallery's own transaction, so items and links commit together."""
        for item_id in item_ids:
            session.add(JobItem(job_id=job_id, item_id=item_id))

    def recover(self, max_attempts: int, hung_after_s: float | None = None,
                dead_after_s: float = DEAD_AFTER_S, dead_workers: Iterable[str] = ()) -> dict[str, int]:
        """Jobs left `running` by a worker that is provably dead (studio/jobs/heartbeat.py): its
        process is gone, or, on another host, silent for `dead_after_s`, or named in
        `dead_workers` (e.g. Ray says that actor runs in another process now); with
        `hung_after_s`, also jobs that reported no progress for that long (the caller stops
        their worker first).
        Jobs of live workers — other studios and actors on the same database — are not touched.

        A job whose outputs were committed did finish (tasks write to the gallery once, at the
        end): it is completed. Others go back to pending, or fail once they have been tried
        `max_attempts` times."""
        report = {"completed": 0, "requeued": 0, "failed": 0}
        moment = now()
        with self.db.transaction() as session:
            self._serialise(session)
            rows = session.scalars(select(Job).where(Job.status == RUNNING)
                                   .with_for_update(skip_locked=True)).all()
            workers = {w.name: w for w in session.scalars(select(WorkerProcess))}
            dead_workers = set(dead_workers)
            rows = [r for r in rows if r.worker in dead_workers
                    or is_dead(r.worker, workers, moment, dead_after_s)
                    or (hung_after_s is not None and _silent_s(r, moment) > hung_after_s)]
            linked = set(session.scalars(select(JobItem.job_id).where(
                JobItem.job_id.in_([r.id for r in rows]))))
            for row in rows:
                row.cancel_requested = 0
                if row.id in linked:
                    row.status, row.progress, row.finished_at = COMPLETED, 1.0, row.heartbeat_at or now()
                    row.error = None
                    report["completed"] += 1
                elif row.attempts >= max_attempts:
                    row.status, row.finished_at = FAILED, now()
                    row.error = (f"the worker running this job stopped {row.attempts} times "
                                 f"(crash, kill, lost node or hang); not retried again after "
                                 f"{max_attempts} attempts")
                    report["failed"] += 1
                else:
                    row.status, row.progress, row.message, row.started_at = PENDING, 0.0, "", None
                    row.worker = None
                    report["requeued"] += 1
            if report["requeued"]:
                self.db.notify(session, CHANNEL)
        return report

    # ------------------------------------------------------------ user actions
    def request_cancel(self, job_id: int) -> str:
        """Pending or paused jobs are canceled at once; a running one is flagged for its worker.
        Returns the job's status afterwards."""
        with self.db.transaction() as session:
            row = self._locked(session, job_id)
            if row.status in (PENDING, PAUSED):
                row.status, row.finished_at, row.error = CANCELED, now(), "canceled before it started"
            elif row.status == RUNNING:
                row.cancel_requested = 1
            else:
                raise ValueError(f"job {job_id} is already {row.status}")
            return row.status

    def retry(self, job_id: int) -> None:
        """A failed or canceled job goes to the end of the queue, as if new."""
        with self.db.transaction() as session:
            self._serialise(session)  # positions
            row = self._locked(session, job_id)
            if row.status not in (FAILED, CANCELED):
                raise ValueError(f"only failed or canceled jobs can be retried; job {job_id} is {row.status}")
            last = session.scalar(select(func.max(Job.position))) or 0.0
            row.status, row.position, row.progress, row.message = PENDING, float(int(last) + 1), 0.0, ""
            row.error, row.attempts, row.cancel_requested = None, 0, 0
            row.started_at = row.finished_at = row.heartbeat_at = None
            self.db.notify(session, CHANNEL)

    def hold(self, job_id: int, held: bool) -> None:
        """Pause (hold back) or release one pending job."""
        with self.db.transaction() as session:
            row = self._locked(session, job_id)
            want_from, want_to = (PENDING, PAUSED) if held else (PAUSED, PENDING)
            if row.status != want_from:
                raise ValueError(f"job {job_id} is {row.status}, not {want_from}")
            row.status = want_to
            if not held:
                self.db.notify(session, CHANNEL)

    def move(self, job_id: int, where: str) -> None:
        """`up`/`down` past the neighbouring waiting job, or to the `top`/`bottom` of the queue.
        A job moved past one of another priority takes that priority."""
        if where not in ("up", "down", "top", "bottom"):
            raise ParamError("where", f"`where` must be up, down, top or bottom, got {where!r}")
        with self.db.transaction() as session:
            self._serialise(session)  # positions
            row = self._locked(session, job_id)
            if row.status not in (PENDING, PAUSED):
                raise ValueError(f"only waiting jobs can be moved; job {job_id} is {row.status}")
            row.priority, row.position = new_place(session, row, where)

    def clear_finished(self) -> int:
        with self.db.transaction() as session:
            return session.execute(delete(Job).where(Job.status.in_(FINISHED))).rowcount

    def set_paused(self, paused: bool) -> None:
        with self.db.transaction() as session:
            session.merge(QueueState(key=PAUSED_KEY, value="1" if paused else "0"))
            if not paused:
                self.db.notify(session, CHANNEL)

    def is_paused(self) -> bool:
        with self.db.session() as session:
            return session.scalar(select(QueueState.value).where(QueueState.key == PAUSED_KEY)) == "1"

    # ------------------------------------------------------------ reading
    def get(self, job_id: int) -> JobView:
        with self.db.session() as session:
            row = self._row(session, job_id)
            items = tuple(session.scalars(select(JobItem.item_id).where(JobItem.job_id == job_id)
                                          .order_by(JobItem.item_id)))
            return self._view(row, items)

    def list(self, statuses: Iterable[str] | None = None, limit: int = 200, offset: int = 0) -> list[JobView]:
        """Running first, then waiting jobs in the order they will run, then finished ones,
        newest first."""
        statuses = tuple(statuses) if statuses is not None else None
        with self.db.session() as session:
            def rows(query_statuses, order):
                query = select(Job).where(Job.status.in_(query_statuses)).order_by(*order)
                return session.scalars(query.limit(limit + offset)).all()
            groups = [((RUNNING,), (Job.started_at, Job.id)), ((PENDING, PAUSED), RUN_ORDER),
                      (FINISHED, (Job.finished_at.desc(), Job.id.desc()))]
            found: list[Job] = []
            for group, order in groups:
                wanted = tuple(s for s in group if statuses is None or s in statuses)
                if wanted and len(found) < limit + offset:
                    found += rows(wanted, order)
            found = found[offset:offset + limit]
            links: dict[int, list[int]] = {}
            for job_id, item_id in session.execute(select(JobItem.job_id, JobItem.item_id).where(
                    JobItem.job_id.in_([r.id for r in found])).order_by(JobItem.item_id)):
                links.setdefault(job_id, []).append(item_id)
            return [self._view(r, tuple(links.get(r.id, ()))) for r in found]

    def jobs_ahead(self, job: JobView) -> int:
        """How many waiting jobs run before this one (claim order: priority, position, id)."""
        with self.db.session() as session:
            return session.scalar(select(func.count()).select_from(Job).where(
                Job.status == PENDING, runs_before(job.priority, job.position, job.id)))

    def waiting_count(self) -> int:
        """Jobs waiting to run (pending or held): the queue's size against its cap."""
        with self.db.session() as session:
            return session.scalar(select(func.count()).select_from(Job)
                                  .where(Job.status.in_((PENDING, PAUSED))))

    def counts(self) -> dict[str, int]:
        with self.db.session() as session:
            found = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
        return {status: found.get(status, 0) for status in (PENDING, RUNNING, PAUSED, *FINISHED)}

    def recent_durations(self, limit: int = 20) -> dict[str, float]:
        """Mean run time of the last completed jobs, per task (for ETAs)."""
        with self.db.session() as session:
            rows = session.execute(select(Job.task, Job.started_at, Job.finished_at)
                                   .where(Job.status == COMPLETED, Job.started_at.is_not(None))
                                   .order_by(Job.finished_at.desc()).limit(limit)).all()
        sums: dict[str, list[float]] = {}
        for task, started, finished in rows:
            sums.setdefault(task, []).append((finished - started).total_seconds())
        return {task: sum(v) / len(v) for task, v in sums.items()}

    def database_id(self) -> str:
        """A random id made once per database: what Ray actors serving it are named after."""
        with self.db.transaction() as session:
            found = session.get(QueueState, DATABASE_ID_KEY)
            if found is None:
                self._serialise(session)  # two studios starting at once agree on one id
                found = session.get(QueueState, DATABASE_ID_KEY, populate_existing=True)
            if found is None:
                found = QueueState(key=DATABASE_ID_KEY, value=uuid.uuid4().hex[:8])
                session.add(found)
            return found.value

    def listen(self):
        """A `Listener` whose wait(timeout) returns early when jobs may be waiting (PostgreSQL
        NOTIFY from any process); on SQLite it just sleeps, and the caller polls."""
        return self.db.listen(CHANNEL)

    # ------------------------------------------------------------ helpers
    def _serialise(self, session: Session) -> None:
        """Writers of positions and recoveries one at a time, until the transaction ends:
        PostgreSQL by an advisory lock, SQLite by taking its (one) write lock before reading."""
        if self.db.dialect == "postgresql":
            session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": POSITION_LOCK})
        else:
            session.execute(text("UPDATE queue_state SET value = value WHERE 0"))

    def _locked(self, session: Session, job_id: int) -> Job:
        """The job's row, read after a concurrent claim has committed and safe from one until
        this transaction ends (a claim skips a row locked FOR UPDATE)."""
        if self.db.dialect == "sqlite":
            self._serialise(session)
        row = session.get(Job, job_id, with_for_update=True, populate_existing=True)
        if row is None:
            raise LookupError(f"no queued job with id {job_id}")
        return row

    @staticmethod
    def _row(session: Session, job_id: int) -> Job:
        row = session.get(Job, job_id)
        if row is None:
            raise LookupError(f"no queued job with id {job_id}")
        return row

    @staticmethod
    def _view(row: Any, item_ids: tuple[int, ...]) -> JobView:
        return JobView(
            id=row.id, task=row.task, engine=row.engine, params=json.loads(row.params_json),
            label=row.label, status=row.status, priority=row.priority, position=row.position,
            progress=row.progress, message=row.message, error=row.error, attempts=row.attempts,
            cancel_requested=bool(row.cancel_requested), worker=row.worker,
            result=json.loads(row.result_json) if row.result_json else None,
            created_at=row.created_at, started_at=row.started_at, finished_at=row.finished_at,
            item_ids=item_ids, heartbeat_at=row.heartbeat_at)


def _model(params: dict[str, Any]) -> str:
    """The model a job needs, for workers that prefer what they hold ('' = the default)."""
    model = params.get("model")
    return model if isinstance(model, str) else ""


def _silent_s(row: Job, moment: datetime) -> float:
    """Seconds since a running job last reported progress (or started)."""
    last = row.heartbeat_at or row.started_at or moment
    return (moment - last).total_seconds()
