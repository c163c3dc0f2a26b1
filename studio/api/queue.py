"""The batch queue over HTTP, with the UI's credentials.

    POST /api/queue                {"task": "txt2img", "params": {...}, "priority": 0}
                                   {"jobs": [{"task": ..., "params": ..., "priority": ...}, ...]}
                                   {"task": ..., "params": {"prompt": "a {red|blue} car"}, "expand": true}
                                   -> {"ids": [...]}; 422 with the reason when a job is malformed
    GET  /api/queue                ?status=pending&limit=100&offset=0 -> counts, paused, jobs
    GET  /api/queue/{id}           one job, with live progress and ETA while it runs
    POST /api/queue/{id}/cancel    POST /api/queue/{id}/retry    POST /api/queue/{id}/move?where=up
    POST /api/queue/pause          POST /api/queue/resume        POST /api/queue/clear
"""
from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, Field

from studio.api.auth import require_auth


class JobBody(BaseModel):
    task: str
    params: dict[str, Any] = Field(default_factory=dict)
    priority: int = 0


class EnqueueBody(BaseModel):
    """One job (task, params, priority), or a batch (jobs). With `expand`, the prompt of
    `params` is a template ({a|b}, __wildcards__; `matrix` for A1111's prompt matrix)."""
    task: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    priority: int = 0
    jobs: list[JobBody] | None = None
    expand: bool = False
    matrix: bool = False


def router(ctx) -> APIRouter:
    api = APIRouter(prefix="/api/queue", tags=["queue"], dependencies=[Depends(require_auth(ctx))])
    queue = ctx.queue

    @api.post("")
    def enqueue(body: EnqueueBody) -> dict:
        try:
            return {"ids": queue.enqueue_batch(_requests(ctx, body))}
        except ValueError as error:
            raise HTTPException(422, str(error))

    @api.get("")
    def list_jobs(status: list[str] | None = Query(None), limit: int = Query(100, ge=1, le=1000),
                  offset: int = Query(0, ge=0)) -> dict:
        from studio.jobs.models import STATUSES

        bad = [s for s in status or [] if s not in STATUSES]
        if bad:
            raise HTTPException(422, f"unknown status {bad[0]!r}; one of {', '.join(STATUSES)}")
        jobs = queue.list(status, limit, offset)
        etas = queue.etas(jobs)
        return {"paused": queue.paused, "counts": queue.counts(),
                "jobs": [_job_json(queue, j, etas) for j in jobs]}

    @api.get("/{job_id}")
    def get_job(job_id: int) -> dict:
        view = _lookup(queue, job_id)
        return _job_json(queue, view, queue.etas([view]))

    _action_routes(api, queue)
    return api


def _action_routes(api: APIRouter, queue) -> None:
    def action(job_id: int, do) -> dict:
        _lookup(queue, job_id)
        try:
            do()
        except ValueError as error:
            raise HTTPException(409, str(error))
        return _job_json(queue, _lookup(queue, job_id))

    @api.post("/{job_id}/cancel")
    def cancel(job_id: int) -> dict:
        return action(job_id, lambda: queue.cancel(job_id))

    @api.post("/{job_id}/retry")
    def retry(job_id: int) -> dict:
        return action(job_id, lambda: queue.retry(job_id))

    @api.post("/{job_id}/move")
    def move(job_id: int, where: Literal["up", "down", "top", "bottom"]) -> dict:
        return action(job_id, lambda: queue.move(job_id, where))

    @api.post("/pause")
    def pause() -> dict:
        queue.pause()
        return {"paused": True}

    @api.post("/resume")
    def resume() -> dict:
        queue.resume()
        return {"paused": False}

    @api.post("/clear")
    def clear() -> dict:
        return {"deleted": queue.clear_finished()}


def _requests(ctx, body: EnqueueBody) -> list:
    """The jobs a body asks for: one, a batch, or a template's expansion. ValueError if malformed."""
    from studio.api.a1111_names import to_task_params
    from studio.jobs.expand import expand_jobs
    from studio.jobs.queue import JobRequest

    if body.jobs is not None:
        if body.task is not None:
            raise ValueError("give either `task` (one job) or `jobs` (a batch), not both")
        requests = [JobRequest(j.task, j.params, j.priority) for j in body.jobs]
    elif body.task is None:
        raise ValueError("give `task` and `params` for one job, or `jobs` for a batch")
    elif body.expand or body.matrix:
        params_list = expand_jobs(body.params, [{"prompt": body.params.get("prompt", "")}],
                                  ctx.config.wildcards_dir, body.matrix,
                                  ctx.queue.max_jobs_per_request)
        requests = [JobRequest(body.task, p, body.priority) for p in params_list]
    else:
        requests = [JobRequest(body.task, body.params, body.priority)]
    # Jobs copied from A1111 keep its parameter names; the tasks take their own.
    return [JobRequest(r.task, to_task_params(r.params), r.priority) for r in requests]


def _job_json(queue, view, etas: dict[int, float] | None = None) -> dict:
    data = view.to_dict()
    live = queue.live().get(view.id)
    if live is not None:
        data.update(progress=live.fraction, step=live.step, total=live.total, message=live.message)
    if etas is not None and view.id in etas:
        data["eta_s"] = round(etas[view.id], 1)
    return data


def _lookup(queue, job_id: int):
    if not 0 < job_id < 1 << 63:  # beyond SQLite's integers: an OverflowError (500) otherwise
        raise HTTPException(404, f"no job with id {job_id}")
    try:
        return queue.get(job_id)
    except LookupError as error:
        raise HTTPException(404, str(error))
