"""queue.wait(job_id, timeout): wakes when the job reaches a final state, through the worker's
Event (no polling), or by re-reading the row for jobs finished by another process."""
from __future__ import annotations

import threading
import time

import pytest

import studio.jobs.queue as queue_module
from studio.jobs.models import CANCELED, COMPLETED, FAILED
from studio.jobs.queue import JobQueue
from studio.jobs.testing import make_context


@pytest.fixture
def queue(tmp_path):
    ctx = make_context(tmp_path / "data")
    queue = JobQueue(ctx)
    ctx.queue = queue
    yield queue
    queue.stop(timeout=10)


@pytest.fixture
def no_recheck(monkeypatch):
    """Only the Event can wake a waiter in time: re-reading the row waits a minute."""
    monkeypatch.setattr(queue_module, "WAIT_RECHECK_S", 60.0)


def wait_in_thread(queue, job_id, timeout):
    """Start queue.wait in a thread; returns (thread, box) where box gets the result."""
    box = {}

    def target():
        box["job"] = queue.wait(job_id, timeout)
        box["returned"] = time.monotonic()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box


def test_wait_returns_the_finished_job_when_the_worker_records_it(queue, no_recheck):
    queue.start_worker()
    job_id = queue.enqueue("queue_test", {"prompt": "waited for", "steps": 10, "step_s": 0.05})
    started = time.monotonic()
    job = queue.wait(job_id, timeout=30)
    assert job is not None and job.status == COMPLETED and len(job.item_ids) == 1
    assert job.result["item_ids"] == list(job.item_ids)
    assert time.monotonic() - started < 20  # woken by the Event, not by the 60 s re-read
    assert queue._waiters == {}  # nothing left behind
    assert queue.wait(job_id, timeout=0).status == COMPLETED  # already final: at once


def test_wait_returns_failed_and_canceled_jobs(queue, no_recheck):
    queue.start_worker()
    failing = queue.enqueue("queue_test", {"prompt": "boom", "fail_at": 2})
    assert queue.wait(failing, timeout=30).status == FAILED

    long = queue.enqueue("queue_test", {"prompt": "long", "steps": 500, "step_s": 0.02})
    thread, box = wait_in_thread(queue, long, 30)
    deadline = time.monotonic() + 20
    while long not in queue.live() and time.monotonic() < deadline:
        time.sleep(0.01)
    queue.cancel(long)  # running: the worker stops it at the next step and records it
    thread.join(20)
    assert box["job"].status == CANCELED and box["job"].error == "canceled by user"


def test_cancel_of_a_waiting_job_wakes_its_waiters(queue, no_recheck):
    queue.pause()
    queue.start_worker()
    job_id = queue.enqueue("queue_test", {"prompt": "never runs"})
    threads = [wait_in_thread(queue, job_id, 30) for _ in range(3)]  # several waiters, one job
    time.sleep(0.2)
    canceled_at = time.monotonic()
    queue.cancel(job_id)
    for thread, box in threads:
        thread.join(10)
        assert box["job"].status == CANCELED
        assert box["returned"] - canceled_at < 5
    assert queue._waiters == {}


def test_wait_times_out_with_none(queue):
    queue.pause()
    queue.start_worker()
    job_id = queue.enqueue("queue_test", {"prompt": "held by the pause"})
    started = time.monotonic()
    assert queue.wait(job_id, timeout=0.3) is None
    assert 0.25 <= time.monotonic() - started < 5
    assert queue.wait(job_id, timeout=0) is None
    assert queue._waiters == {}


def test_wait_sees_a_job_finished_by_another_process(queue, monkeypatch):
    """No worker in this process: another one claims and finishes the row; the re-read sees it."""
    monkeypatch.setattr(queue_module, "WAIT_RECHECK_S", 0.05)
    job_id = queue.enqueue("queue_test", {"prompt": "elsewhere"})
    assert queue.store.claim("another-process").id == job_id
    threading.Timer(0.2, queue.store.finish, (job_id, COMPLETED), {"result": {"item_ids": []}}).start()
    job = queue.wait(job_id, timeout=10)
    assert job is not None and job.status == COMPLETED


def test_wait_for_an_unknown_job_raises(queue):
    with pytest.raises(LookupError, match="no queued job with id 12345"):
        queue.wait(12345, timeout=1)
    assert queue._waiters == {}
