"""The upscale and train_lora tasks take their images in once (studio/uploads.py ImageIntake), as
every image task does: a job queued with inline base64 keeps ids only in its row — upscale's
sources become gallery upload items (the results' parents, as when the task saved them itself),
LoRA training images upload ids outside the gallery — and runs to the same result. A bad image is
refused naming its field and leaves nothing behind; the sweep keeps a waiting, held, running or
restarted training job's images."""
from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image, ImageDraw
from sqlalchemy import select, update
from test_lora_training import rings
from wiring import api_client, running_studio

from studio.gallery.store import GalleryQuery
from studio.jobs.models import Job
from studio.tasks import run_task
from studio.uploads import sweep_uploads, uploads_dir


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def picture(seed: int, side: int = 24, mode: str = "RGB") -> Image.Image:
    """A small image with edges (so Lanczos and Nearest draw different pixels)."""
    image = Image.new("RGB", (side, side), (20 + 40 * seed, 90, 200 - 30 * seed))
    draw = ImageDraw.Draw(image)
    draw.ellipse((3 + seed, 4, side - 5, side - 3 - seed), fill=(240, 210, 30))
    draw.line((0, side - 1, side - 1, 0), fill=(10, 10, 10), width=2)
    return image.convert(mode)


def stored_row(ctx, job_id: int) -> dict:
    """The job's params as the queue database holds them."""
    with ctx.db.session() as session:
        text = session.execute(select(Job.params_json).where(Job.id == job_id)).scalar_one()
    assert len(text) < 2000 and "iVBOR" not in text, text[:300]  # no base64 PNG in the row
    return json.loads(text)


def gallery_uploads(ctx) -> list:
    return ctx.gallery.query(GalleryQuery(task="upload")).items


def pixels(ctx, item_id: int) -> np.ndarray:
    return np.asarray(ctx.gallery.open_image(item_id))


def queue_post(ctx, body: dict):
    from studio.api import queue

    with api_client(ctx, queue) as client:
        return client.post("/api/queue", json=body)


def inline_result(ctx, params: dict) -> list[np.ndarray]:
    """The same upscale run directly with its images inline, as before the intake took them."""
    result = run_task(ctx, "upscale", params)
    return [pixels(ctx, item_id) for item_id in result.item_ids]


# ------------------------------------------------------------------ upscale
def test_queued_upscale_keeps_gallery_ids_and_draws_the_same_pixels(studio):
    single = {"image": b64(picture(0)), "upscaler": "Lanczos", "scale": 2}
    batch = {"images": [b64(picture(1)), "data:image/png;base64," + b64(picture(2, 20, "RGBA"))],
             "upscaler": "Nearest", "scale": 3}
    answer = queue_post(studio, {"jobs": [{"task": "upscale", "params": single},
                                          {"task": "upscale", "params": batch}]})
    assert answer.status_code == 200, answer.text
    first, second = answer.json()["ids"]
    one, many = stored_row(studio, first), stored_row(studio, second)
    assert "image" not in one and isinstance(one["image_id"], int)
    assert "images" not in many and len(many["image_ids"]) == 2
    uploads = {item.id: item for item in gallery_uploads(studio)}
    assert sorted(uploads) == sorted([one["image_id"], *many["image_ids"]])
    assert {item.prompt for item in uploads.values()} == {"uploaded image"}
    for job_id, row in ((first, one), (second, many)):
        job = studio.queue.wait(job_id, 120)
        assert job.status == "completed", job.error
        parents = [studio.gallery.get(i).parent_id for i in job.item_ids]
        assert parents == row.get("image_ids", [row.get("image_id")])  # children of the sources
    made = [pixels(studio, i) for job_id in (first, second)
            for i in studio.queue.get(job_id).item_ids]
    expected = inline_result(studio, single) + inline_result(studio, batch)
    assert [m.shape for m in made] == [(48, 48, 3), (72, 72, 3), (60, 60, 4)]
    assert all(np.array_equal(m, e) for m, e in zip(made, expected))
    # A rerun from the Queue tab queues the row as it is: the same parents, nothing new stored.
    again = studio.runner.submit("upscale", many)
    assert again.result()["item_ids"] and stored_row(studio, again.id) == many
    assert len(gallery_uploads(studio)) == 3 + 3  # the queued three, the inline runs' three


def test_upscale_without_save_input_keeps_the_sources_out_of_the_gallery(studio):
    params = {"images": [b64(picture(1)), b64(picture(3))], "upscaler": "Lanczos", "scale": 2,
              "save_input": False}
    handle = studio.runner.submit("upscale", params)
    made = [pixels(studio, i) for i in handle.result()["item_ids"]]
    row = stored_row(studio, handle.id)
    assert "image_ids" not in row and all(ref.startswith("upload:") for ref in row["images"])
    assert gallery_uploads(studio) == []
    assert [studio.gallery.get(i).parent_id for i in handle.result()["item_ids"]] == [None, None]
    assert all(np.array_equal(m, e) for m, e in zip(made, inline_result(studio, params)))
    single = studio.runner.submit("upscale", {"image": b64(picture(0)), "upscaler": "Nearest",
                                              "save_input": False})
    assert single.result()["item_ids"] and stored_row(studio, single.id)["image"].startswith("upload:")


@pytest.mark.parametrize("params,field,message", [
    ({"images": [b64(picture(0)), "bm90IGFuIGltYWdl"]}, "images", "images[1]"),
    ({"image": "data:image/png;base64,%%%"}, "image", "not valid base64"),
    ({"images": [b64(picture(0)), b64(Image.new("RGB", (4, 4)))]}, "images", "`images[1]` is 4x4"),
    ({"images": [b64(picture(0))], "image_ids": [1]}, "images", "not both"),
])
def test_a_bad_upscale_image_is_refused_naming_the_field_and_stores_nothing(
        studio, params, field, message):
    answer = queue_post(studio, {"task": "upscale", "params": dict(params, upscaler="Lanczos")})
    assert answer.status_code == 422 and message in answer.text, answer.text
    with pytest.raises(ValueError, match=message.replace("[", r"\[")) as refused:
        studio.runner.submit("upscale", dict(params, upscaler="Lanczos"))
    assert getattr(refused.value, "field", field) == field
    assert gallery_uploads(studio) == [] and studio.queue.list() == []


# ------------------------------------------------------------------ train_lora
def lora_params(**extra) -> dict:
    return {"name": "intake-rings", "trigger": "gsring", "images": [b64(i) for i in rings(5)],
            "steps": 2, "rank": 2, "batch": 2, "ensemble": 1, **extra}


def test_queued_lora_training_keeps_upload_ids_that_outlive_a_restart(tmp_path):
    from studio.tasks.lora_training import prepare

    data_dir = tmp_path / "data"
    with running_studio(data_dir, worker=False) as ctx:
        ctx.queue.pause()
        job_id = ctx.queue.enqueue("train_lora", lora_params())
        row = stored_row(ctx, job_id)
        assert len(row["images"]) == 5 and all(r.startswith("upload:") for r in row["images"])
        assert gallery_uploads(ctx) == []  # training images stay out of the gallery
        files = sorted(uploads_dir(ctx).iterdir())
        assert len(files) == 5
        resolved = prepare(ctx, row).images  # the task reads the same pixels back
        assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(resolved, rings(5)))
    # The studio stops with the job running (a crash), and starts again: the files stay.
    with running_studio(data_dir, worker=False) as ctx:
        with ctx.db.session() as session, session.begin():
            session.execute(update(Job).where(Job.id == job_id).values(status="running"))
        assert sweep_uploads(ctx, keep_finished_s=0, min_age_s=0) == 0
        with ctx.db.session() as session, session.begin():
            session.execute(update(Job).where(Job.id == job_id).values(status="pending"))
        ctx.queue.hold(job_id)
        assert ctx.queue.get(job_id).status == "paused"
        assert sweep_uploads(ctx, keep_finished_s=0, min_age_s=0) == 0
        assert sorted(uploads_dir(ctx).iterdir()) == files
        ctx.queue.cancel(job_id)
        assert sweep_uploads(ctx, keep_finished_s=0, min_age_s=0) == 5


@pytest.mark.slow
def test_queued_lora_training_runs_on_its_upload_ids(studio):
    mixed = lora_params(images=[b64(i) for i in rings(3)],
                        image_ids=[studio.gallery.add_image(i, task="txt2img", engine="").id
                                   for i in rings(5)[3:]])
    handle = studio.runner.submit("train_lora", mixed)
    result = handle.result(timeout=600)
    row = stored_row(studio, handle.id)
    assert len(row["images"]) == 3 and row["image_ids"] == mixed["image_ids"]
    assert result["info"]["steps"] == 2 and (studio.config.models_dir / "Lora" /
                                             "intake-rings.safetensors").is_file()
    assert gallery_uploads(studio) == []


def test_a_bad_training_image_is_refused_naming_the_field_and_stores_nothing(studio):
    params = lora_params()
    params["images"][3] = b64(Image.new("RGB", (64, 64))).replace("A", "!", 3)
    answer = queue_post(studio, {"task": "train_lora", "params": params})
    assert answer.status_code == 422 and "images[3]" in answer.text, answer.text
    with pytest.raises(ValueError, match=r"images\[3\]") as refused:
        studio.runner.submit("train_lora", params)
    assert refused.value.field == "images"
    params["images"][3] = "data:text/plain;base64," + base64.b64encode(b"hello").decode()
    with pytest.raises(ValueError, match=r"images\[3\]"):
        studio.runner.submit("train_lora", params)
    folder = uploads_dir(studio)
    assert not folder.exists() or list(folder.iterdir()) == []
    assert gallery_uploads(studio) == [] and studio.queue.list() == []
