"""The tabs' Generate goes through the runner (studio/ui/widgets.py), checked without a browser
or a model: the `queue_test` task on the null engine, a real queue with its worker thread.
A Generate is an interactive job listed in the queue, its results are the committed gallery
items, Cancel by the job id kept in the session's state stops it with nothing saved, and bad
input is refused before anything is queued."""
from __future__ import annotations

import threading
import time

import gradio as gr
import pytest

from studio.jobs.queue import JobQueue
from studio.jobs.runner import INTERACTIVE, Runner
from studio.jobs.testing import make_context
from studio.ui import widgets


@pytest.fixture
def ctx(tmp_path):
    context = make_context(tmp_path / "data")
    context.queue = JobQueue(context)
    context.runner = Runner(context.queue)
    context.queue.start_worker()
    yield context
    context.queue.stop()


def test_generate_is_an_interactive_job_and_shows_the_committed_items(ctx):
    outputs = list(widgets.stream_images(ctx, "queue_test", {"prompt": "two", "images": 2,
                                                             "steps": 3, "step_s": 0.01}))
    job_id = outputs[0][0]  # the first update names the job, for Cancel
    assert isinstance(job_id, int)
    final_job, status, preview, shown, ids = outputs[-1]
    assert final_job is None and status.startswith("Saved 2 image(s) to the gallery")
    job = ctx.queue.get(job_id)
    assert job.status == "completed" and job.priority == INTERACTIVE
    assert list(job.item_ids) == ids and len(ids) == 2
    assert [path for path, _ in shown] == [str(ctx.gallery.get(i).file_path) for i in ids]


def test_cancel_by_the_kept_job_id_stops_it_and_saves_nothing(ctx):
    stream = widgets.stream_images(ctx, "queue_test", {"prompt": "slow", "steps": 200,
                                                       "step_s": 0.02})
    job_id = next(stream)[0]
    seen: list = []
    reader = threading.Thread(target=lambda: seen.extend(stream))
    reader.start()
    deadline = time.monotonic() + 10
    while ctx.queue.get(job_id).status != "running":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert widgets.cancel_job(ctx, job_id).startswith("Cancelling")
    reader.join(10)
    assert seen[-1][1] == "Cancelled: nothing was saved."
    assert ctx.queue.get(job_id).status == "canceled" and ctx.gallery.query().total == 0
    assert widgets.cancel_job(ctx, None) == "Nothing is running."


def test_bad_input_is_refused_before_anything_is_queued(ctx):
    with pytest.raises(gr.Error, match="images"):
        next(widgets.stream_images(ctx, "queue_test", {"images": 99}))
    assert ctx.queue.list() == []
