"""REST API of the queue, on a FastAPI app with only this router (auth on)."""
from __future__ import annotations

import dataclasses

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from studio.api.queue import router
from studio.jobs.queue import JobQueue
from studio.jobs.testing import make_context

AUTH = ("ada", "s3cret")


@pytest.fixture
def client(tmp_path):
    ctx = make_context(tmp_path / "data")
    ctx.config = dataclasses.replace(ctx.config, auth=(AUTH,))
    ctx.queue = JobQueue(ctx)
    app = FastAPI()
    app.include_router(router(ctx))
    with TestClient(app) as client:
        client.ctx = ctx
        yield client
    ctx.queue.stop(timeout=10)


def test_requires_the_ui_credentials(client):
    assert client.get("/api/queue").status_code == 401
    assert client.get("/api/queue", auth=("ada", "wrong")).status_code == 401
    assert client.get("/api/queue", auth=AUTH).status_code == 200
    assert client.get("/api/queue", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_enqueue_list_get_pause_resume_cancel(client):
    queue = client.ctx.queue
    assert client.post("/api/queue/pause", auth=AUTH).json() == {"paused": True}
    queue.start_worker()
    one = client.post("/api/queue", auth=AUTH, json={"task": "queue_test", "params": {"prompt": "a"}})
    assert one.status_code == 200 and len(one.json()["ids"]) == 1
    batch = client.post("/api/queue", auth=AUTH, json={"jobs": [
        {"task": "queue_test", "params": {"prompt": "b"}},
        {"task": "queue_test", "params": {"prompt": "c"}, "priority": 2}]}).json()["ids"]
    expanded = client.post("/api/queue", auth=AUTH, json={
        "task": "queue_test", "params": {"prompt": "a {red|green|blue} car", "steps": 2},
        "expand": True}).json()["ids"]
    assert len(expanded) == 3

    listing = client.get("/api/queue", auth=AUTH).json()
    assert listing["paused"] is True and listing["counts"]["pending"] == 6
    assert [j["id"] for j in listing["jobs"]][0] == batch[1]  # priority 2 first
    assert client.get(f"/api/queue/{expanded[2]}", auth=AUTH).json()["label"] == "a blue car"

    moved = client.post(f"/api/queue/{expanded[2]}/move", auth=AUTH, params={"where": "top"})
    assert moved.status_code == 200
    assert [j["id"] for j in client.get("/api/queue", auth=AUTH).json()["jobs"]][0] == expanded[2]
    assert client.post(f"/api/queue/{one.json()['ids'][0]}/move", auth=AUTH,
                       params={"where": "sideways"}).status_code == 422
    assert client.post(f"/api/queue/{batch[0]}/retry", auth=AUTH).status_code == 409  # not failed
    canceled = client.post(f"/api/queue/{batch[0]}/cancel", auth=AUTH).json()
    assert canceled["status"] == "canceled"
    assert client.post(f"/api/queue/{batch[0]}/cancel", auth=AUTH).status_code == 409
    assert client.post("/api/queue/resume", auth=AUTH).json() == {"paused": False}
    assert queue.wait_idle(30)
    done = client.get("/api/queue", auth=AUTH, params={"status": "completed"}).json()["jobs"]
    assert len(done) == 5 and all(len(j["item_ids"]) == 1 for j in done)
    assert client.get("/api/queue/9999", auth=AUTH).status_code == 404
    assert client.post("/api/queue/clear", auth=AUTH).json() == {"deleted": 6}


def test_malformed_jobs_get_a_clear_422(client):
    def post(body):
        response = client.post("/api/queue", auth=AUTH, json=body)
        assert response.status_code == 422, response.text
        return str(response.json()["detail"])

    assert "unknown task 'nope'" in post({"task": "nope", "params": {}})
    assert "`steps` must be a whole number" in post({"task": "queue_test", "params": {"steps": 1.5}})
    assert "10.5 MB; the limit is 8.4 MB" in post(
        {"task": "queue_test", "params": {"init_image": "A" * 10_500_000}})
    assert "job 2 of 2" in post({"jobs": [{"task": "queue_test"}, {"task": "x"}]})
    assert "limit is 10,000" in post({"task": "queue_test", "params": {"prompt": "{a|b|c|d|e}" * 6},
                                      "expand": True})
    assert "give `task`" in post({})
    assert client.get("/api/queue", auth=AUTH).json()["counts"]["pending"] == 0


def test_a1111_names_are_translated_at_the_api_not_by_the_task(tmp_path):
    """A job copied from an A1111 client keeps its names over POST /api/queue; the task itself
    knows only its own (A1111 names live in studio/api/ alone)."""
    from studio.api.a1111_names import to_task_params
    from studio.tasks import validate_task

    ctx = make_context(tmp_path / "data")
    a1111 = {"prompt": "x", "cfg_scale": 5, "sampler_name": "Euler a", "n_iter": 2,
             "denoising_strength": 0.4, "inpainting_fill": 0}
    assert to_task_params(a1111) == {"prompt": "x", "guidance_scale": 5, "scheduler": "Euler a",
                                     "batch_count": 2, "strength": 0.4, "inpainting_fill": "fill"}
    with pytest.raises(ValueError, match="cfg_scale"):
        validate_task(ctx, "txt2img", {"prompt": "x", "cfg_scale": 5})
    validate_task(ctx, "txt2img", to_task_params({"prompt": "x", "cfg_scale": 5}))
