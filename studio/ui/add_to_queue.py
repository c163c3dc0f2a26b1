"""The "Add to queue" button of every tab: queue one job at batch priority and say so.

Problems (no queue in this studio, an engine it lacks, parameters the task's own `validate`
refuses) become a warning toast and the status line, never a traceback, and nothing is queued.
The queue validates at enqueue time (docs/queue.md), so no check is repeated here.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import gradio as gr

if TYPE_CHECKING:
    from studio.context import StudioContext


def refuse(message: str) -> str:
    """Show `message` as a warning and return it as the status line (nothing was queued)."""
    gr.Warning(message)
    return f"⚠️ {message}"


def try_enqueue(ctx: "StudioContext", task: str, params: dict,
                lands: str = "") -> tuple[int | None, str]:
    """Queue one `task` job: (its id, "Queued job #N…" and where its output lands), or (None, the
    reason, also shown as a warning) when it was refused."""
    from studio.jobs.runner import BATCH

    if getattr(ctx, "runner", None) is None:
        return None, refuse("The queue is not running in this studio: nothing was queued.")
    try:  # an uploaded picture is stored by the queue's check, once, as an id in the job row
        job_id = ctx.runner.submit(task, params, priority=BATCH).id
    except ValueError as error:  # unknown task, missing engine, a field the task refuses
        return None, refuse(f"Not queued: {error}")
    gr.Info(f"Queued job #{job_id}.")
    return job_id, f"Queued job #{job_id}; see the Queue tab." + (f" {lands}" if lands else "")


def add_job(ctx: "StudioContext", task: str, params: dict, lands: str = "") -> str:
    """The status line of `try_enqueue`."""
    return try_enqueue(ctx, task, params, lands)[1]
