"""The persistent queue: order, cancel, pause, validation, recovery — with the trivial test task
of studio/jobs/testing.py, so no model is loaded."""
from __future__ import annotations

import random
import time

import pytest
from helpers import wait_for

from studio.jobs.models import CANCELED, COMPLETED, FAILED, PAUSED, PENDING, RUNNING
from studio.jobs.queue import JobQueue, JobRequest
from studio.jobs.testing import make_context
from studio.tasks import TaskSpec, TaskResult, register


@pytest.fixture(params=["sqlite", "postgresql"])
def qctx(request, tmp_path):
    """Every test here runs on SQLite and on a real PostgreSQL (tests/pg_server.py)."""
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    return make_context(tmp_path / "data", url)


@pytest.fixture
def queue(qctx):
    queue = JobQueue(qctx)
    qctx.queue = queue
    yield queue
    queue.stop(timeout=10)


def test_200_jobs_complete_in_priority_then_position_order(queue, qctx):
    rng = random.Random(6)
    queue.pause()  # queue everything first, so that the order is the queue's, not the race's
    queue.start_worker()
    ids, priorities = [], {}
    for chunk in range(4):  # single enqueues and batches mixed
        batch_priority = rng.choice([0, 0, 1, 5, -2])
        ids += queue.enqueue_many("queue_test", [{"prompt": f"p{chunk}-{i}", "steps": 1, "seed": i}
                                                 for i in range(40)], priority=batch_priority)
        priorities.update({i: batch_priority for i in ids[-40:]})
        for _ in range(10):
            priority = rng.choice([0, 1, 5, -2, 10])
            ids.append(queue.enqueue("queue_test", {"prompt": "single", "steps": 1}, priority=priority))
            priorities[ids[-1]] = priority
    assert len(ids) == 200
    queue.resume()
    assert queue.wait_idle(timeout=120)

    jobs = [queue.get(i) for i in ids]
    assert all(j.status == COMPLETED and len(j.item_ids) == 1 and j.attempts == 1 for j in jobs)
    ran = [j.id for j in sorted(jobs, key=lambda j: j.started_at)]
    assert ran == sorted(ids, key=lambda i: (-priorities[i], i))
    assert qctx.gallery.query().total == 200


def test_moves_change_the_order(queue):
    queue.pause()
    a, b, c, d = queue.enqueue_many("queue_test", [{"prompt": x} for x in "abcd"])
    urgent = queue.enqueue("queue_test", {"prompt": "urgent"}, priority=3)
    order = lambda: [j.id for j in queue.list(statuses=[PENDING, PAUSED])]  # noqa: E731
    assert order() == [urgent, a, b, c, d]
    queue.move(d, "up")
    assert order() == [urgent, a, b, d, c]
    queue.move(a, "down")
    assert order() == [urgent, b, a, d, c]
    queue.move(c, "top")
    assert order() == [c, urgent, b, a, d]
    queue.move(urgent, "bottom")
    assert order() == [c, b, a, d, urgent]
    queue.move(b, "up")  # past a job of higher priority: takes its priority
    assert order() == [b, c, a, d, urgent]
    queue.hold(a)
    queue.start_worker()
    queue.resume()
    wait_for(lambda: queue.counts()[PENDING] == 0, what="queue drained")
    assert queue.get(a).status == PAUSED  # held back
    queue.hold(a, held=False)
    assert queue.wait_idle(20)
    with pytest.raises(ValueError, match="only waiting jobs"):
        queue.move(a, "up")


def test_cancel_mid_job_stops_within_one_step_and_keeps_finished_outputs(queue, qctx):
    queue.start_worker()
    first = queue.enqueue("queue_test", {"prompt": "done before", "steps": 2})
    long = queue.enqueue("queue_test", {"prompt": "long", "steps": 500, "step_s": 0.02})
    after = queue.enqueue("queue_test", {"prompt": "after", "steps": 2})

    wait_for(lambda: long in queue.live() and queue.live()[long].step >= 5, what="long job running")
    live = queue.live()[long]
    view = queue.cancel(long)
    step_at_cancel = live.step  # read once the token is set: the engine may finish this step
    # the worker may already have honoured the token by the time cancel() reads the row back
    assert view.cancel_requested and view.status in (RUNNING, CANCELED)
    assert queue.wait_idle(20)

    assert live.step <= step_at_cancel + 1  # stopped at the next step check
    canceled = queue.get(long)
    assert canceled.status == CANCELED and canceled.error == "canceled by user"
    assert canceled.item_ids == ()  # a canceled generation saves nothing half-done
    done = queue.get(first)
    assert done.status == COMPLETED and qctx.gallery.get(done.item_ids[0]).file_path.exists()
    assert queue.get(after).status == COMPLETED  # the queue went on
    assert qctx.gallery.query().total == 2


def test_cancel_keeps_outputs_a_task_already_saved(queue, qctx):
    queue.start_worker()
    job = queue.enqueue("queue_test", {"prompt": "saves as it goes", "images": 6, "steps": 20,
                                       "step_s": 0.01, "write": "each"})
    wait_for(lambda: len(qctx.gallery.query().items) >= 2, what="two images saved")
    queue.cancel(job)
    assert queue.wait_idle(20)
    view = queue.get(job)
    assert view.status == CANCELED
    assert 2 <= len(view.item_ids) < 6
    assert sorted(view.item_ids) == sorted(i.id for i in qctx.gallery.query().items)


def test_cancel_waiting_job_and_retry_failed_job(queue):
    queue.pause()
    queue.start_worker()
    waiting = queue.enqueue("queue_test", {"prompt": "never"})
    failing = queue.enqueue("queue_test", {"prompt": "boom", "fail_at": 2})
    assert queue.cancel(waiting).status == CANCELED
    queue.resume()
    assert queue.wait_idle(20)
    failed = queue.get(failing)
    assert failed.status == FAILED and "failed at step 2" in failed.error
    with pytest.raises(ValueError, match="already failed"):
        queue.cancel(failing)
    queue.pause()  # so that the worker does not take them before we look
    assert queue.retry(failing).status == PENDING
    assert queue.retry(waiting).status == PENDING
    queue.resume()
    assert queue.wait_idle(20)
    assert queue.get(failing).status == FAILED
    assert queue.get(waiting).status == COMPLETED
    with pytest.raises(ValueError, match="only failed or canceled"):
        queue.retry(waiting)
    assert queue.clear_finished() == 2
    assert queue.list() == []


def test_pause_really_pauses_and_survives_restart(queue, qctx):
    queue.start_worker()
    running = queue.enqueue("queue_test", {"prompt": "running", "steps": 30, "step_s": 0.01})
    wait_for(lambda: running in queue.live(), what="job running")
    queue.pause()
    waiting = queue.enqueue_many("queue_test", [{"prompt": f"w{i}"} for i in range(3)])
    wait_for(lambda: queue.get(running).status == COMPLETED, what="running job finished")
    time.sleep(1.5)  # several idle polls: nothing may start
    assert [queue.get(i).status for i in waiting] == [PENDING] * 3
    assert queue.counts()[RUNNING] == 0

    queue.stop()  # restart: the pause is a row, not a flag in memory
    again = JobQueue(qctx)
    again.start_worker()
    try:
        assert again.paused
        time.sleep(1.2)
        assert again.counts()[PENDING] == 3
        again.resume()
        assert again.wait_idle(20)
        assert [again.get(i).status for i in waiting] == [COMPLETED] * 3
    finally:
        again.stop()


def test_stop_puts_the_running_job_back(queue):
    queue.start_worker()
    job = queue.enqueue("queue_test", {"prompt": "slow", "steps": 500, "step_s": 0.01})
    wait_for(lambda: job in queue.live(), what="job running")
    queue.stop()
    view = queue.get(job)
    assert view.status == PENDING and view.attempts == 0 and view.error is None


def test_malformed_jobs_are_rejected_at_enqueue(queue, qctx):
    register(TaskSpec("queue_needs_missing_engine", "no-such-engine", lambda c, p: None,
                      lambda *a: TaskResult()))
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        queue.enqueue("nope", {})
    with pytest.raises(ValueError, match="needs the 'no-such-engine' engine"):
        queue.enqueue("queue_needs_missing_engine", {})
    with pytest.raises(ValueError, match="`steps` must be a whole number, got 'many'"):
        queue.enqueue("queue_test", {"steps": "many"})
    with pytest.raises(ValueError, match="parameters are 10.5 MB; the limit is 8.4 MB"):
        queue.enqueue("queue_test", {"prompt": "x", "init_image": "A" * 10_500_000})
    with pytest.raises(ValueError, match="parameters must be an object, got list"):
        queue.enqueue("queue_test", ["a cat"])
    with pytest.raises(ValueError, match="plain JSON values"):
        queue.enqueue("queue_test", {"prompt": {1, 2}})
    with pytest.raises(ValueError, match="plain JSON values"):
        queue.enqueue("queue_test", {"step_s": float("nan")})
    with pytest.raises(ValueError, match="`priority` must be a whole number"):
        queue.enqueue("queue_test", {}, priority="high")
    with pytest.raises(ValueError, match="job 2 of 3: `images` must be between 1 and 16"):
        queue.enqueue_batch([JobRequest("queue_test", {}), JobRequest("queue_test", {"images": 99}),
                             JobRequest("queue_test", {})])
    with pytest.raises(ValueError, match="the limit is 10"):
        JobQueue(qctx, max_jobs_per_request=10).enqueue_many("queue_test", [{}] * 11)
    assert queue.list() == []  # nothing half-queued


def test_recovery_after_a_crash(queue, qctx):
    """Rows a dead process left running: requeued, failed after N attempts, or completed when
    their outputs had been committed (the gap between the gallery commit and the job's)."""
    store = queue.store
    a, b, c = queue.enqueue_many("queue_test", [{"prompt": x} for x in "abc"])
    for _ in range(3):  # three crashed claims: a (1 attempt), b (1), c (1)
        assert store.claim("dead-worker@lost-host:1") is not None  # a process nobody hears from
    with qctx.db.transaction() as session:  # c crashed twice before
        from studio.jobs.models import Job
        session.get(Job, c).attempts = 3
    # b's outputs were committed through the job's gallery, then the process died.
    from PIL import Image
    item = qctx.gallery.add_image(Image.new("RGB", (4, 4)), task="queue_test", engine="null",
                                  prompt="b", job_id=b)
    assert store.recover(max_attempts=3) == {"completed": 1, "requeued": 1, "failed": 1}
    assert queue.get(a).status == PENDING and queue.get(a).attempts == 1
    assert queue.get(b).status == COMPLETED and queue.get(b).item_ids == (item.id,)
    assert queue.get(c).status == FAILED and "3 times" in queue.get(c).error
    queue.start_worker()  # start_worker recovers too, and the queue resumes by itself
    assert queue.wait_idle(20)
    assert queue.get(a).status == COMPLETED and queue.get(a).attempts == 2
    assert qctx.gallery.query().total == 2


def test_deleting_a_gallery_item_keeps_the_job(queue, qctx):
    queue.start_worker()
    job = queue.enqueue("queue_test", {"prompt": "x", "images": 2})
    assert queue.wait_idle(20)
    first, second = queue.get(job).item_ids
    qctx.gallery.delete(first)
    assert queue.get(job).item_ids == (second,)
    queue.clear_finished()
    assert qctx.gallery.get(second).file_path.exists()


def test_ui_prompt_mapping_and_labels(queue):
    from studio.jobs.queue import _label
    from studio.ui.queue import _for_task

    assert _for_task("chat", {"prompt": "hi", "max_new_tokens": 8}) == {
        "max_new_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    assert _for_task("code", {"prompt": "fizzbuzz"}) == {"mode": "write", "description": "fizzbuzz"}
    assert _for_task("txt2img", {"prompt": "a cat"}) == {"prompt": "a cat"}
    assert _label({"messages": [{"role": "user", "content": "  hello\n there "}]}) == "hello there"
    assert _label({"steps": 3}) == ""
