"""The queue with the real txt2img task on the tiny model (embedded, or a random tiny one while
the embedded model is absent): a job completes into the gallery; cancel mid-job stops within one
denoising step and saves nothing; the next job still runs."""
from __future__ import annotations

import time

import pytest

from studio.jobs.models import CANCELED, COMPLETED
from studio.jobs.queue import JobQueue

pytestmark = pytest.mark.slow


@pytest.fixture
def real_ctx(tmp_path):
    from engines.base import EngineManager
    from studio.app import ENGINES
    from studio.config import StudioConfig
    from studio.context import StudioContext
    from studio.db.database import Database
    from studio.gallery.store import GalleryStore

    data_dir = tmp_path / "data"
    db = Database(data_dir / "studio.sqlite3")  # a file: the worker is another thread
    db.migrate()
    engines = EngineManager("cpu")
    for spec in ENGINES:
        engines.register(spec)
    ctx = StudioContext(StudioConfig(data_dir=data_dir, device="cpu", offline=True), db,
                        GalleryStore(db, data_dir), engines)
    yield ctx
    engines.unload()


def test_txt2img_jobs_complete_and_cancel_within_one_step(real_ctx, tmp_path):
    from engines.diffusion.random_weights import embedded_or_random

    model = embedded_or_random(tmp_path / "models")
    base = {"width": 64, "height": 64, "model": model, "preview_every": 0, "seed": 3}
    queue = JobQueue(real_ctx)
    real_ctx.queue = queue
    queue.start_worker()
    try:
        first = queue.enqueue("txt2img", {**base, "prompt": "a red circle", "steps": 2})
        long = queue.enqueue("txt2img", {**base, "prompt": "a long one", "steps": 150})
        last = queue.enqueue("txt2img", {**base, "prompt": "a blue square", "steps": 2})

        deadline = time.monotonic() + 300
        while not (long in queue.live() and queue.live()[long].step >= 2):
            assert time.monotonic() < deadline, "the long job never got going"
            time.sleep(0.01)
        live = queue.live()[long]
        queue.cancel(long)
        step_at_cancel = live.step
        assert queue.wait_idle(300)

        assert live.step <= step_at_cancel + 1
        assert queue.get(long).status == CANCELED and queue.get(long).item_ids == ()
        for job_id, prompt in ((first, "a red circle"), (last, "a blue square")):
            job = queue.get(job_id)
            assert job.status == COMPLETED, job.error
            item = real_ctx.gallery.get(job.item_ids[0])
            assert item.prompt == prompt and item.width == 64 and item.file_path.exists()
        assert real_ctx.gallery.query().total == 2
    finally:
        queue.stop()
