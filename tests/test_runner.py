"""The one runner: submit -> handle with live updates, cancel, result; priorities; lanes."""
from __future__ import annotations

import threading
import time

import pytest
from helpers import run_async

from studio.jobs.queue import JobQueue
from studio.jobs.runner import (BATCH, INTERACTIVE, JobCanceled, JobFailed, Runner)
from studio.jobs.testing import make_context


@pytest.fixture
def qctx(tmp_path):
    return make_context(tmp_path / "data")


@pytest.fixture
def runner(qctx):
    queue = JobQueue(qctx)
    qctx.queue, qctx.runner = queue, Runner(queue)
    yield qctx.runner
    queue.stop(timeout=10)


def test_submit_streams_updates_and_returns_committed_items(runner, qctx):
    runner.queue.start_worker()
    handle = runner.submit("queue_test", {"steps": 5, "step_s": 0.02, "images": 2})
    updates = list(handle.updates())
    steps = [u.step for u in updates if u.status == "running"]
    assert steps and steps == sorted(steps) and max(steps) == 10  # every step seen, in order
    final = updates[-1]
    assert final.finished and final.status == "completed"
    ids = final.result["item_ids"]
    assert len(ids) == 2
    # the items are committed and linked to the job when the handle says so
    assert [qctx.gallery.get(i).id for i in ids] == ids
    assert runner.queue.get(handle.id).item_ids == tuple(ids)
    assert handle.result()["item_ids"] == ids


def test_a_bad_parameter_is_refused_at_submit_with_its_field(runner):
    from engines.base import ParamError

    with pytest.raises(ParamError) as error:
        runner.submit("queue_test", {"steps": 0})
    assert error.value.field == "steps"
    assert runner.queue.counts()["pending"] == 0


def test_a_failure_at_run_time_carries_the_message(runner):
    runner.queue.start_worker()
    handle = runner.submit("queue_test", {"steps": 3, "fail_at": 2})
    with pytest.raises(JobFailed) as error:
        handle.result(timeout=20)
    assert "failed at step 2" in error.value.message
    assert list(handle.updates())[-1].status == "failed"


def test_cancel_stops_the_running_job_within_one_step_and_saves_nothing(runner, qctx):
    runner.queue.start_worker()
    handle = runner.submit("queue_test", {"steps": 400, "step_s": 0.02})
    seen = 0
    for update in handle.updates():
        if update.status == "running" and update.step >= 3:
            seen = update.step
            handle.cancel()
            break
    job = handle.wait(20)
    assert job.status == "canceled"
    assert job.progress * 400 <= seen + 2  # it stopped within a step or two of the click
    with pytest.raises(JobCanceled):
        handle.result(1)
    assert qctx.gallery.query().total == 0


def test_cancel_on_exit_when_the_reader_goes_away(runner):
    runner.queue.start_worker()
    handle = runner.submit("queue_test", {"steps": 400, "step_s": 0.02})
    for update in handle.updates(cancel_on_exit=True):
        if update.step >= 2:
            break  # like a closed HTTP stream
    assert handle.wait(20).status == "canceled"


def test_an_interactive_run_starts_within_one_job_of_a_batch(runner):
    """A click while a 20-job batch runs: the worker takes it next, and it shows previews."""
    batch = runner.submit_many("queue_test", [{"steps": 4, "step_s": 0.05}] * 20, priority=BATCH)
    runner.queue.start_worker()
    time.sleep(0.3)  # the batch is running
    click = runner.submit("queue_test", {"steps": 4, "step_s": 0.02, "prompt": "now"},
                          priority=INTERACTIVE)
    pending = [u for u in click.updates() if u.status == "pending"]
    assert click.wait(20).status == "completed"
    started = runner.queue.get(click.id).started_at
    before = [h for h in batch if (j := runner.queue.get(h.id)).started_at and j.started_at < started]
    assert len(before) <= 2  # the one running at the click (and at most the one it had claimed)
    assert all(u.queue_position is not None for u in pending)  # "n jobs ahead" while it waits


def test_handles_in_many_threads_see_the_same_job(runner):
    runner.queue.start_worker()
    handle = runner.submit("queue_test", {"steps": 6, "step_s": 0.02})
    results = []

    def watch():
        results.append(list(runner.handle(handle.id).updates())[-1].status)

    threads = [threading.Thread(target=watch) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert results == ["completed"] * 4


def test_updates_time_out(runner):
    handle = runner.submit("queue_test", {"steps": 1})  # no worker: it never starts
    with pytest.raises(TimeoutError):
        for _ in handle.updates(timeout=0.3, cancel_on_exit=True):
            pass
    assert runner.queue.get(handle.id).status == "canceled"


def test_async_updates_stream_and_cancel_when_left(runner):
    runner.queue.start_worker()

    async def read(handle, stop_at=None):
        seen = []
        async for update in handle.aupdates(cancel_on_exit=True):
            seen.append(update)
            if stop_at is not None and update.step >= stop_at:
                break
        return seen

    done = run_async(read(runner.submit("queue_test", {"steps": 5, "step_s": 0.02})))
    assert done[-1].status == "completed" and len(done) >= 2
    left = runner.submit("queue_test", {"steps": 400, "step_s": 0.02})
    run_async(read(left, stop_at=2))
    assert left.wait(20).status == "canceled"
