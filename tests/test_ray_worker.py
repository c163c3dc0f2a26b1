"""The queue's jobs on Ray actors (issue 14), on a real PostgreSQL and a local Ray cluster with
two fake GPUs: one actor per GPU, jobs in priority order, cancel within a step, SIGKILL of an
actor's process mid-job (the job completes once, elsewhere, no orphan file), and two studio
front-ends on one database. One Ray session and one pair of actors for the whole module; the
trivial `null` engine of studio/jobs/testing.py, so no model loads."""
from __future__ import annotations

import os
import random
import re
import signal
import time
from collections import Counter

import pytest
from helpers import wait_for

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private cluster for this test only

from studio.jobs.heartbeat import HOST  # noqa: E402
from studio.jobs.models import CANCELED, COMPLETED, PENDING, RUNNING  # noqa: E402
from studio.jobs.queue import JobQueue  # noqa: E402
from studio.jobs.ray_worker import RayWorker  # noqa: E402
from studio.jobs.testing import make_context  # noqa: E402

SETUP = "studio.jobs.ray_worker:add_test_engine"


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    # "local": always a new private cluster, even if one runs on this machine
    ray.init(address="local", num_cpus=2, num_gpus=2, namespace="genstudio",
             include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def studio(ray_cluster, pg_server, tmp_path_factory):
    """A front-end: a queue on the module's database, its jobs on two GPU actors."""
    url = pg_server.create_database()
    ctx = make_context(tmp_path_factory.mktemp("storage"), url)
    queue = JobQueue(ctx)
    ctx.queue = queue
    worker = RayWorker(ctx, address=None, board=queue.board, on_finished=queue.job_finished,
                       reap_every_s=0.5, setup=SETUP)
    queue.start_worker(worker)
    yield ctx
    worker.shutdown()


def actor_pids(ctx) -> dict[str, int]:
    import ray

    worker = ctx.queue.worker
    ids = ray.get([a.identity.remote() for a in worker.actors.values()])
    return {i.partition("@")[0]: int(i.rpartition(":")[2]) for i in ids}


def actor_pids_once_up(ctx) -> dict[str, int]:
    """actor_pids, or {} while Ray is still restarting a killed actor (the call then raises)."""
    import ray.exceptions

    try:
        return actor_pids(ctx)
    except (ray.exceptions.ActorUnavailableError, ray.exceptions.RayActorError):
        return {}


def test_one_actor_per_gpu_and_40_jobs_in_priority_order(studio):
    queue = studio.queue
    assert len(queue.worker.actors) == 2  # two fake GPUs
    pids = actor_pids(studio)
    assert len(set(pids.values())) == 2 and os.getpid() not in pids.values()
    rng = random.Random(14)
    queue.pause()  # everything queued first: the order is the queue's, not the race's
    priorities = [rng.choice([0, 0, 1, 5, -2]) for _ in range(40)]
    ids = [queue.enqueue("queue_test", {"prompt": f"p{i}", "steps": 2, "step_s": 0.01, "seed": i},
                         priority=p) for i, p in enumerate(priorities)]
    queue.resume()
    assert queue.wait_idle(timeout=60)

    jobs = [queue.get(i) for i in ids]
    assert all(j.status == COMPLETED and len(j.item_ids) == 1 and j.attempts == 1 for j in jobs)
    pattern = re.compile(rf"^({'|'.join(map(re.escape, pids))})@{re.escape(HOST)}:(\d+)$")
    ran_on = Counter()
    for job in jobs:  # the worker that ran it: <actor name>@<host>:<pid of the actor's process>
        name, pid = pattern.match(job.to_dict()["worker"]).groups()
        assert int(pid) == pids[name]
        ran_on[name] += 1
    assert len(ran_on) == 2  # both actors worked
    rank = {i: (-p, n) for n, (i, p) in enumerate(zip(ids, priorities))}
    for name in ran_on:  # each actor took its jobs strictly in queue order...
        mine = sorted((j for j in jobs if j.worker.startswith(name + "@")), key=lambda j: j.started_at)
        assert [rank[j.id] for j in mine] == sorted(rank[j.id] for j in mine)
    by_start = sorted(jobs, key=lambda j: j.started_at)  # ...and the top priority went first
    assert {j.id for j in by_start[:priorities.count(5)]} == {i for i, p in zip(ids, priorities) if p == 5}
    assert studio.gallery.query().total >= 40


def test_progress_and_previews_show_and_cancel_stops_the_actor_within_one_step(studio):
    queue = studio.queue
    job = queue.enqueue("queue_test", {"prompt": "long", "steps": 100, "step_s": 0.2,
                                       "previews": True})
    wait_for(lambda: job in queue.live() and queue.live()[job].step >= 3, what="job on an actor")
    live = queue.live()[job]  # progress and preview mirrored from the actor, as the UI sees it
    assert live.total == 100 and live.message.startswith("step ")
    assert live.preview.size == (4, 4) and live.preview.getpixel((0, 0))[0] in range(1, live.step + 2)
    step_at_cancel = live.step
    queue.cancel(job)
    wait_for(lambda: queue.get(job).finished, timeout=10, what="cancel")
    view = queue.get(job)
    assert view.status == CANCELED and view.error == "canceled by user" and view.item_ids == ()
    # the step in flight when the cancel arrived (the mirror may show the one before)
    wait_for(lambda: job not in queue.live(), timeout=10, what="the mirror to see it end")
    assert queue.worker.last_step[job] <= step_at_cancel + 2


def test_sigkill_of_the_actor_process_mid_job_completes_it_once_elsewhere(studio):
    queue = studio.queue
    storage = studio.config.storage
    before = {p for p in (storage / "outputs").rglob("*") if p.is_file()}
    job = queue.enqueue("queue_test", {"prompt": "killed", "steps": 40, "step_s": 0.05, "images": 2})
    wait_for(lambda: job in queue.live() and queue.live()[job].step >= 5, what="job running")
    victim = queue.get(job).worker
    os.kill(int(victim.rpartition(":")[2]), signal.SIGKILL)

    view = queue.wait(job, timeout=60)
    assert view is not None and view.status == COMPLETED
    assert view.attempts == 2 and view.worker != victim  # another process ran it again
    items = [studio.gallery.get(i) for i in view.item_ids]
    assert len(items) == 2 and all(i.prompt == "killed" for i in items)
    from studio.gallery.store import GalleryQuery
    assert studio.gallery.query(GalleryQuery(search="killed")).total == 2  # outputs once
    after = {p for p in (storage / "outputs").rglob("*") if p.is_file()}
    assert after - before == {i.file_path for i in items}  # no orphan, no tmp file
    wait_for(lambda: len(actor_pids_once_up(studio)) == 2, what="actor restarted")


def test_a_hung_actor_is_restarted_and_its_job_runs_again(studio):
    """No progress for longer than `hung_after_s`: the reaper kills the actor (Ray restarts it)
    and the job goes back with the attempt counted. The first step here takes 2 s, so the job
    looks hung while `hung_after_s` is 0.5 s."""
    queue, worker = studio.queue, studio.queue.worker
    job = queue.enqueue("queue_test", {"prompt": "hung", "steps": 2, "step_s": 2.0})
    wait_for(lambda: queue.get(job).status == RUNNING, what="job running")
    victim = queue.get(job).worker
    time.sleep(0.8)
    worker.reap(hung_after_s=0.5)  # this round only; the reaper thread keeps its 600 s
    view = queue.wait(job, timeout=60)
    assert view is not None and view.status == COMPLETED
    assert view.attempts == 2 and view.worker != victim and len(view.item_ids) == 1


def test_actors_that_cannot_be_placed_are_refused_with_the_reason(studio, pg_server, tmp_path):
    import ray

    other = make_context(tmp_path, pg_server.create_database())  # another database: own actors
    other.queue = JobQueue(other)
    worker = RayWorker(other, address=None, workers=1, setup=SETUP, start_timeout_s=3)
    try:
        with pytest.raises(RuntimeError, match=r"placed only 0 of 1 queue actors .* 1 GPU; free now: 0"):
            other.queue.start_worker(worker)  # the module's two actors hold both GPUs
    finally:
        for actor in worker.actors.values():
            ray.kill(actor, no_restart=True)


def test_two_front_ends_on_one_database_see_the_same_queue(studio):
    first = studio.queue
    other_ctx = make_context(studio.config.storage, studio.db.url.render_as_string(hide_password=False))
    second = JobQueue(other_ctx)
    other_ctx.queue = second
    second.start_worker(RayWorker(other_ctx, address=None, board=second.board, setup=SETUP,
                                  on_finished=second.job_finished))
    try:
        assert second.worker.actors.keys() == first.worker.actors.keys()  # attached, not new
        first.pause()
        ids = first.enqueue_many("queue_test", [{"prompt": f"shared {i}", "steps": 2} for i in range(3)])
        slow = second.enqueue("queue_test", {"prompt": "slow", "steps": 200, "step_s": 0.05})
        assert [j.id for j in second.list(statuses=[PENDING])] == [*ids, slow]
        assert second.paused is False and second.store.is_paused()  # the row is shared
        second.resume()
        wait_for(lambda: slow in first.live(), what="second's job running, seen by the first")
        assert first.get(slow).status == RUNNING
        first.cancel(slow)  # one studio cancels what the other queued
        assert second.wait(slow, timeout=20).status == CANCELED
        assert all(second.wait(i, timeout=20).status == COMPLETED for i in ids)
    finally:
        second.stop()
