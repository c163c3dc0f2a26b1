"""Every caller is a job on one runner: an interactive run (what a tab's Generate does), an A1111
request and a queued job are all in GET /api/queue, and Cancel (the handle a tab holds),
/sdapi/v1/interrupt and POST /api/queue/{id}/cancel all stop the same running job within a step.
On the app's own wiring (the `studio` fixture: build_context and its worker) and its real
routers."""
from __future__ import annotations

import threading
import time

import pytest
from helpers import run_async
from wiring import api_client

from studio.jobs.runner import INTERACTIVE

LONG = {"prompt": "a red circle", "steps": 150, "seed": 1}


@pytest.fixture
def client(studio):  # the app's own wiring and worker (tests/wiring.py)
    from studio.api import a1111, queue

    with api_client(studio, a1111, queue) as client:
        yield client


def _running_at_step(handle, step=2):
    """The handle's update stream, advanced until the job runs at `step`."""
    updates = handle.updates(timeout=120)
    for update in updates:
        if update.status == "running" and update.step >= step:
            return updates
    raise AssertionError(f"job {handle.id} finished before step {step}")


def _stopped_within_a_step(studio, handle, updates):
    """After the cancel: at most one more step ran, the job is canceled and saved nothing."""
    at_cancel = studio.queue.board.get(handle.id)
    later = [u.step for u in updates if u.status == "running"]
    if at_cancel is not None and later:
        assert max(later) <= at_cancel.step + 1, (at_cancel.step, later)
    job = studio.queue.wait(handle.id, 30)
    assert job.status == "canceled" and job.item_ids == ()


def test_every_caller_is_a_job_in_the_queue(studio, client):
    interactive = studio.runner.submit("txt2img", dict(LONG, steps=2), priority=INTERACTIVE)
    assert interactive.result(120)["item_ids"]
    body = client.post("/sdapi/v1/txt2img", json={"prompt": "a blue star", "steps": 2,
                                                  "n_iter": 2}).json()
    queued = client.post("/api/queue", json={"task": "txt2img", "params": dict(LONG, steps=2)}).json()
    jobs = {job["id"]: job for job in client.get("/api/queue").json()["jobs"]}
    import json

    api_jobs = json.loads(body["info"])["job_ids"]
    assert interactive.id in jobs and jobs[interactive.id]["priority"] == INTERACTIVE
    assert all(jobs[j]["task"] == "txt2img" and jobs[j]["status"] == "completed" for j in api_jobs)
    assert queued["ids"][0] in jobs


@pytest.mark.parametrize("how", ["handle", "interrupt", "queue_cancel"])
def test_three_ways_to_cancel_stop_the_same_job(studio, client, how):
    handle = studio.runner.submit("txt2img", LONG, priority=INTERACTIVE)
    updates = _running_at_step(handle)
    if how == "handle":  # a tab's Cancel button
        handle.cancel()
    elif how == "interrupt":  # an A1111 client, even though a tab started the job
        assert client.post("/sdapi/v1/interrupt").json() == {"interrupted": True}
    else:
        assert client.post(f"/api/queue/{handle.id}/cancel").status_code == 200
    _stopped_within_a_step(studio, handle, updates)


def test_a1111_request_is_canceled_when_its_client_goes_away(studio):
    """The request's jobs stop when the HTTP client disconnects (a sync API call never
    keeps the device busy for nobody)."""
    from studio.api.a1111_runs import Run, Runs

    runs = Runs(studio)
    run = Run(kind="txt2img", task="txt2img", iterations=[LONG, LONG])
    gone = threading.Event()

    async def disconnected():
        return gone.is_set()

    def leave_soon():
        time.sleep(1.0)
        gone.set()

    threading.Thread(target=leave_soon).start()
    outcomes = run_async(runs.execute(run, disconnected))
    assert outcomes == [] and run.interrupted
    assert all(studio.queue.get(j).status == "canceled" for j in run.job_ids)


def test_a_paused_queue_answers_a_waiting_request_at_once(studio, client):
    studio.queue.pause()
    started = time.monotonic()
    response = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 2})
    assert response.status_code == 503 and "paused" in response.json()["detail"]
    assert time.monotonic() - started < 5
    assert studio.gallery.query().total == 0 and studio.queue.counts()["pending"] == 0
