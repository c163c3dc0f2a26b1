"""Style training is a queue job like any other: listed, resumable across a restart, cancelable,
and its style is usable as soon as the job completes."""
from __future__ import annotations

import numpy as np
from PIL import Image

from studio.jobs.runner import BATCH


def _images(ctx) -> tuple[list[int], list[int]]:
    """Content: smooth colour fields; style: dark stripes (a tiny CycleGAN learns some quickly).
    They enter as gallery uploads, as the Style tab stores them."""
    rng = np.random.default_rng(0)
    style, content = [], []
    for _ in range(4):
        base = rng.integers(40, 220, 3)
        field = Image.fromarray(np.broadcast_to(base, (48, 48, 3)).astype(np.uint8))
        stripes = np.zeros((48, 48, 3), np.uint8)
        stripes[::4] = rng.integers(0, 255, 3)
        for image, ids in ((field, content), (Image.fromarray(stripes), style)):
            ids.append(ctx.gallery.add_image(image, task="upload", engine="", prompt="upload").id)
    return style, content


def _params(ctx, name, iterations):
    style, content = _images(ctx)
    return {"name": name, "style_image_ids": style, "content_image_ids": content, "size": 32,
            "iterations": iterations, "width": 8, "blocks": 1}


def test_a_training_job_saves_a_style_usable_at_once(studio):
    from engines.style.engine import list_styles

    handle = studio.runner.submit("train_style", _params(studio, "My Stripes", 12), priority=BATCH)
    result = handle.result(timeout=180)
    assert result["info"]["style_id"] == "user:my-stripes" and result["info"]["iterations"] == 12
    assert studio.queue.get(handle.id).task == "train_style"  # listed like any job
    styles = {s.id: s for s in list_styles(studio.config.styles_dir)}
    assert styles["user:my-stripes"].settings["training"]["iterations_done"] == 12
    assert not (studio.config.styles_dir / ".runs" / "my-stripes").exists()
    photo = studio.gallery.add_image(Image.new("RGB", (40, 32), (90, 140, 200)), task="upload",
                                     engine="", prompt="photo").id
    styled = studio.runner.submit("style", {"style": "user:my-stripes", "image_id": photo}).result(60)
    assert studio.gallery.get(styled["item_ids"][0]).model == "user:my-stripes"


def test_training_resumes_after_a_restart_and_cancels(studio):
    from studio.jobs.queue import JobQueue
    from studio.jobs.runner import Runner

    handle = studio.runner.submit("train_style", _params(studio, "Resumable", 10_000), priority=BATCH)
    for update in handle.updates(timeout=120):
        if update.step >= 3:
            break
    studio.queue.stop(30)  # the studio shuts down: the job goes back to the queue
    stopped = studio.queue.get(handle.id)
    assert stopped.status == "pending"
    checkpoint = studio.config.styles_dir / ".runs" / "resumable" / "checkpoint.pt"
    assert checkpoint.exists()

    # "Restart": a new queue over the same database picks the job up and resumes it.
    studio.queue = JobQueue(studio)
    studio.runner = Runner(studio.queue)
    studio.queue.start_worker()
    first = next(u for u in studio.runner.handle(handle.id).updates(timeout=120)
                 if u.status == "running" and u.step)
    assert first.step > 3  # resumed from the checkpoint, not from iteration 1
    studio.runner.handle(handle.id).cancel()  # what the Queue tab's Cancel does
    assert studio.queue.wait(handle.id, 60).status == "canceled"
    assert checkpoint.exists()  # kept, so starting the same name again resumes
