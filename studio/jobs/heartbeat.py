"""Which processes that run jobs are alive: the `workers` table (migration 0004) and the rules
that decide a running job's worker is dead, so that recovery touches nothing else.

A worker is named `<name>@<host>:<pid>` (the pid of the process that runs the job, last). Every
such process has a row `host:pid` with its start time and a heartbeat:

* on SQLite (one machine) the row is written once, at the first claim: a job's worker on this
  host is dead when its pid is gone, a zombie, or belongs to a newer process (the start time
  differs: the pid was reused);
* on PostgreSQL (many machines) a daemon thread refreshes the row every HEARTBEAT_S seconds;
  a worker on another host is dead when its row is missing or older than DEAD_AFTER_S.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import weakref
from datetime import datetime, timedelta, timezone

from sqlalchemy import DateTime, Float, Integer, String, select, update
from sqlalchemy.orm import Mapped, mapped_column

from studio.db.database import Base, Database

log = logging.getLogger(__name__)

HEARTBEAT_S = 5.0  # how often a process on a shared database says it is alive
DEAD_AFTER_S = 30.0  # a process silent this long on another host is taken for dead


class WorkerProcess(Base):
    __tablename__ = "workers"
    name: Mapped[str] = mapped_column(String, primary_key=True)  # host:pid
    host: Mapped[str] = mapped_column(String)
    pid: Mapped[int] = mapped_column(Integer)
    process_start: Mapped[float] = mapped_column(Float)
    started_at: Mapped[datetime] = mapped_column(DateTime)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime)


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


HOST = socket.gethostname()


def process_start(pid: int) -> float:
    """When the process started, in clock ticks since boot (/proc); 0 where unknown."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return float(stat.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return 0.0


def pid_alive(pid: int, started: float = 0.0) -> bool:
    """Whether `pid` runs on this host and is the process that started at `started` (if known)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    try:
        with open(f"/proc/{pid}/stat") as stat:
            if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                return False  # killed, not yet reaped
    except (OSError, IndexError):
        pass
    return not started or not process_start(pid) or process_start(pid) == started


def worker_id(name: str) -> str:
    """`name@host:pid` of this process, unless `name` already says where it runs."""
    return name if "@" in name else f"{name}@{HOST}:{os.getpid()}"


def parse_worker(worker: str | None) -> tuple[str, int] | None:
    """(host, pid) of a worker id; None for a name that does not say (an older studio's)."""
    if not worker or "@" not in worker:
        return None
    host, _, pid = worker.rpartition("@")[2].rpartition(":")
    return (host, int(pid)) if host and pid.isdigit() else None


def is_dead(worker: str | None, rows: dict[str, WorkerProcess], now: datetime,
            dead_after_s: float = DEAD_AFTER_S) -> bool:
    """Provably dead: a job of this worker may be taken back. `rows`: the workers table by name."""
    where = parse_worker(worker)
    if where is None:
        return True  # an older studio's single worker, or no worker at all: nobody runs it now
    host, pid = where
    row = rows.get(f"{host}:{pid}")
    if host == HOST:
        if pid == os.getpid():
            return False  # this very process: its worker threads finish or release their jobs
        return not pid_alive(pid, row.process_start if row is not None else 0.0)
    return row is None or row.heartbeat_at < now - timedelta(seconds=dead_after_s)


class Heartbeat:
    """This process's row in `workers`. `ensure(db)` writes it (once per database) and, on a
    shared database, starts the thread that refreshes it."""

    _lock = threading.Lock()
    _started: dict[tuple[int, str], "Heartbeat"] = {}

    def __init__(self, db: Database) -> None:
        self._db = weakref.ref(db)  # the thread ends with the database (tests make many)
        self.name = f"{HOST}:{os.getpid()}"

    @classmethod
    def ensure(cls, db: Database) -> None:
        key = (os.getpid(), str(db.url))  # a forked child is another process
        with cls._lock:
            if key in cls._started and cls._started[key]._db() is db:
                return
            beat = cls._started[key] = cls(db)
        beat.beat()
        if db.shared:
            threading.Thread(target=beat._loop, name="worker-heartbeat", daemon=True).start()

    def beat(self) -> None:
        db = self._db()
        if db is None:
            return
        moment, started = _now(), process_start(os.getpid())
        table = WorkerProcess.__table__
        with db.engine.begin() as conn:
            found = conn.execute(select(table.c.process_start).where(table.c.name == self.name)).first()
            if found is None:
                conn.execute(table.insert().values(
                    name=self.name, host=HOST, pid=os.getpid(), process_start=started,
                    started_at=moment, heartbeat_at=moment))
                return
            if started and found.process_start != started:
                # An earlier process had this pid (a restarted container): it is dead, and its
                # running jobs would pass for ours. Without a worker, recovery takes them back.
                from studio.jobs.models import RUNNING, Job

                jobs = Job.__table__
                conn.execute(update(jobs).where(jobs.c.status == RUNNING,
                                                jobs.c.worker.like(f"%@{self.name}")).values(worker=None))
                conn.execute(update(table).where(table.c.name == self.name).values(started_at=moment))
            conn.execute(update(table).where(table.c.name == self.name)
                         .values(heartbeat_at=moment, process_start=started))

    def _loop(self) -> None:
        stop = threading.Event()
        while not stop.wait(HEARTBEAT_S):
            if self._db() is None:
                return
            try:
                self.beat()
            except Exception:  # the database is away for a moment: beat again later
                log.warning("worker heartbeat failed; retrying in %s s", HEARTBEAT_S, exc_info=True)
