"""A worker process killed with SIGKILL mid-job and restarted finishes every job exactly once,
with no orphan file or row. The worker is `python -m studio.jobs.testing DATA_DIR`: a studio
process minus the UI (migrate, sweep, queue, worker) that exits when the queue is empty."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from helpers import wait_for
from sqlalchemy import select

from studio.gallery.models import Item
from studio.jobs.models import COMPLETED, RUNNING
from studio.jobs.queue import JobQueue
from studio.jobs.testing import make_context

REPO = Path(__file__).resolve().parent.parent
JOBS = 16
IMAGES_PER_JOB = 2


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request):
    """Each crash test on SQLite and on a real PostgreSQL (tests/pg_server.py)."""
    return request.getfixturevalue("pg_url") if request.param == "postgresql" else None


def start_worker(data_dir: Path, log: Path, database: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "studio.jobs.testing", str(data_dir),
                             *([database] if database else [])], cwd=REPO,
                            env=env, stdout=log.open("a"), stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_sigkill_mid_job_then_restart_finishes_every_job_exactly_once(tmp_path, database):
    data_dir = tmp_path / "data"
    ctx = make_context(data_dir, database)
    queue = JobQueue(ctx)  # no worker here: this process only queues and inspects
    ids = queue.enqueue_many("queue_test", [
        {"prompt": f"job {i}", "seed": i, "steps": 8, "step_s": 0.03, "images": IMAGES_PER_JOB}
        for i in range(JOBS)])
    log = tmp_path / "worker.log"

    # Kill twice: once as soon as a job has made progress, once a few jobs later at a random-ish
    # moment (after the gallery commit of some job, sometimes inside it).
    kills = 0
    for completed_before_kill, extra_delay in ((0, 0.0), (5, 0.13)):
        process = start_worker(data_dir, log, database)
        wait_for(lambda: queue.counts()[COMPLETED] >= completed_before_kill and any(
            (j.duration_s or 0) > 0.15 for j in queue.list(statuses=[RUNNING])),
            timeout=90, what="a job in progress")
        time.sleep(extra_delay)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        kills += 1
        assert queue.counts()[RUNNING] == 1  # the killed job is left running in the table

    final = start_worker(data_dir, log, database)
    assert final.wait(timeout=180) == 0, log.read_text()
    assert "recovered" in log.read_text()

    # Every job completed exactly once, each with its own two images.
    jobs = [queue.get(i) for i in ids]
    assert [j.status for j in jobs] == [COMPLETED] * JOBS, log.read_text()
    assert all(len(j.item_ids) == IMAGES_PER_JOB for j in jobs)
    assert sum(j.attempts for j in jobs) >= JOBS + 1  # at least one job ran again after a kill
    with ctx.db.session() as session:
        items = session.scalars(select(Item)).all()
    assert len(items) == JOBS * IMAGES_PER_JOB
    assert Counter(i.prompt for i in items) == {f"job {i}": IMAGES_PER_JOB for i in range(JOBS)}
    assert sorted(i.id for i in items) == sorted(x for j in jobs for x in j.item_ids)

    # No orphan: every row has its files and every file its row; no tmp file left.
    files = {p for p in (data_dir / "outputs").rglob("*") if p.is_file()}
    thumbs = {p for p in (data_dir / "thumbnails").rglob("*") if p.is_file()}
    assert files == {data_dir / i.file_path for i in items}
    assert thumbs == {data_dir / i.thumb_path for i in items}
    assert kills == 2


@pytest.mark.slow
def test_crash_windows_completed_once_or_failed_after_three_attempts(tmp_path, database):
    """Deterministic crashes: one job kills the process right after its gallery commit (it must
    count as done, not run again); one kills it mid-generation every time (it must fail after
    three attempts with the reason, not loop forever); the jobs around them complete."""
    data_dir = tmp_path / "data"
    ctx = make_context(data_dir, database)
    queue = JobQueue(ctx)
    normal = {"steps": 2}
    ids = queue.enqueue_many("queue_test", [
        {**normal, "prompt": "first"}, {**normal, "prompt": "saved then crashed", "die_after_save": True},
        {**normal, "prompt": "middle"}, {**normal, "prompt": "always crashes", "die_at_step": 2},
        {**normal, "prompt": "last"}])
    log = tmp_path / "worker.log"
    exits = []
    for _ in range(6):
        exits.append(start_worker(data_dir, log, database).wait(timeout=120))
        if exits[-1] == 0:
            break
    assert exits == [-signal.SIGKILL] * 4 + [0], log.read_text()

    first, saved, middle, crashing, last = (queue.get(i) for i in ids)
    assert saved.status == COMPLETED and saved.attempts == 1 and len(saved.item_ids) == 1
    assert crashing.status == "failed" and crashing.attempts == 3
    assert "3 times" in crashing.error and crashing.item_ids == ()
    assert all(j.status == COMPLETED and len(j.item_ids) == 1 for j in (first, middle, last))
    with ctx.db.session() as session:
        prompts = Counter(session.scalars(select(Item.prompt)))
    assert prompts == {"first": 1, "saved then crashed": 1, "middle": 1, "last": 1}
    files = {p for p in (data_dir / "outputs").rglob("*") if p.is_file()}
    assert len(files) == 4
