"""A trivial engine and tasks for the queue's tests and benchmark; the app never registers them.

    add_null_engine(ctx.engines); register_test_tasks()
    ctx = make_context(data_dir)          # a whole studio minus the UI, with both
    python -m studio.jobs.testing DATA    # one worker process until the queue is empty

`queue_test` "generates" one small solid-colour image per `images`, one step every `step_s`
seconds, with progress and cancel between steps, and writes them to the gallery in one call at
the end (the task contract) — or one call per image with `"write": "each"`. `queue_noop` does
nothing but take the engine lock (the benchmark's job).
"""
from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from engines.base import ParamError
from engines.base import (CancelToken, EngineError, EngineSpec, Progress, ProgressCallback,
                          check_int, check_range)
from studio.gallery.store import NewImage
from studio.tasks import TaskResult, TaskSpec, register


class NullEngine:
    kind = "null"

    def __init__(self, model_id: str = "null", device: str = "cpu") -> None:
        self.model_id, self.device, self._loaded = model_id, device, False

    @property
    def loaded(self) -> bool:
        return self._loaded

    def load(self) -> None:
        self._loaded = True

    def unload(self) -> None:
        self._loaded = False

    def memory_bytes(self) -> int:
        return 0

    def generate(self, params: dict, on_progress: ProgressCallback | None = None,
                 cancel: CancelToken | None = None) -> list[Any]:
        from PIL import Image

        total = params["steps"] * params["images"]
        images = []
        for step in range(1, total + 1):
            if cancel is not None:
                cancel.raise_if_cancelled()
            if params["step_s"]:
                time.sleep(params["step_s"])
            if params["fail_at"] == step:
                raise EngineError(f"the test engine failed at step {step} as asked")
            if params.get("die_at_step") == step:  # a crash: the whole process dies now
                os.kill(os.getpid(), signal.SIGKILL)
            if on_progress is not None:
                preview = (Image.new("RGB", (4, 4), (step % 256, 0, 0))  # red = the step
                           if params.get("previews") else None)
                on_progress(Progress(step, total, f"step {step}/{total}", preview=preview))
            if step % params["steps"] == 0:
                index = len(images)
                colour = ((params["seed"] * 37 + index * 91) % 256, (params["seed"] * 11) % 256, 128)
                images.append(Image.new("RGB", (8, 8), colour))
                if params.get("_on_image"):
                    params["_on_image"](images[-1], index)
        return images


def add_null_engine(manager) -> None:
    manager.register(EngineSpec("null", "studio.jobs.testing:NullEngine", "null"))


def _validate(ctx, params: dict) -> None:
    check_int("steps", params.get("steps", 3), 1, 10_000)
    check_int("images", params.get("images", 1), 1, 16)
    check_range("step_s", params.get("step_s", 0.0), 0.0, 10.0)
    check_int("seed", params.get("seed", 0), 0, 2**32 - 1)
    if params.get("fail_at") is not None:
        check_int("fail_at", params["fail_at"], 1, 10_000)
    if not isinstance(params.get("prompt", ""), str):
        raise ParamError("prompt", f"`prompt` must be text, got {params.get('prompt')!r}")
    if params.get("die_at_step") is not None:
        check_int("die_at_step", params["die_at_step"], 1, 10_000)
    if params.get("write", "end") not in ("end", "each"):
        raise ParamError("write", f"`write` must be end or each, got {params.get('write')!r}")


def _run(ctx, params: dict, on_progress: ProgressCallback, cancel: CancelToken) -> TaskResult:
    started = time.perf_counter()
    full = {"steps": 3, "images": 1, "step_s": 0.0, "seed": 0, "fail_at": None, **params}
    prompt = full.get("prompt", "")

    def entry(image, index):
        return NewImage(image=image, task="queue_test", engine="null", model="null", prompt=prompt,
                        params=params, seed=full["seed"] + index,
                        duration_s=time.perf_counter() - started)

    ids: list[int] = []
    if full.get("write") == "each":  # a task that saves as it goes (keeps outputs on cancel)
        full["_on_image"] = lambda image, index: ids.extend(
            v.id for v in ctx.gallery.add_images([entry(image, index)], job_id=ctx.job_id))
    with ctx.engines.use("null") as engine:
        images = engine.generate(full, on_progress, cancel)
    if full.get("write") != "each":
        ids = [v.id for v in ctx.gallery.add_images([entry(im, i) for i, im in enumerate(images)], job_id=ctx.job_id)]
    if full.get("die_after_save"):  # a crash between the gallery's commit and the job's
        os.kill(os.getpid(), signal.SIGKILL)
    return TaskResult(item_ids=ids, images=images, info={"seed": full["seed"]})


def _run_noop(ctx, params: dict, on_progress: ProgressCallback, cancel: CancelToken) -> TaskResult:
    with ctx.engines.use("null"):
        on_progress(Progress(1, 1))
    return TaskResult()


def register_test_tasks() -> None:
    register(TaskSpec("queue_test", "null", _validate, _run, "queue tests: tiny images"))
    register(TaskSpec("queue_noop", "null", lambda ctx, params: None, _run_noop,
                      "queue benchmark: does nothing"))


def make_context(data_dir: Path, database: str | None = None):
    """What studio/app.py does at start, minus the UI: migrate, sweep, engines. A file database:
    the worker is another thread, and an in-memory SQLite database is one shared connection.
    `database`: a URL instead (PostgreSQL), as `launch.py --database` gives it."""
    from engines.base import EngineManager
    from studio.config import StudioConfig
    from studio.context import StudioContext
    from studio.db.database import Database
    from studio.gallery.store import GalleryStore

    db = Database(database or Path(data_dir) / "studio.sqlite3")
    db.migrate()
    gallery = GalleryStore(db, Path(data_dir))
    gallery.sweep()
    engines = EngineManager(device="cpu")
    add_null_engine(engines)
    register_test_tasks()
    return StudioContext(StudioConfig(data_dir=Path(data_dir)), db, gallery, engines)


def run_worker_process(data_dir: str, database: str | None = None) -> int:
    """One studio process with a queue worker, until nothing is left to do (the SIGKILL test)."""
    from studio.jobs.queue import JobQueue

    ctx = make_context(Path(data_dir), database)
    queue = JobQueue(ctx)
    ctx.queue = queue
    queue.start_worker()
    print("recovered", queue.recovered, flush=True)
    idle = queue.wait_idle(timeout=600)
    queue.stop()
    return 0 if idle else 3


if __name__ == "__main__":
    sys.exit(run_worker_process(*sys.argv[1:3]))
