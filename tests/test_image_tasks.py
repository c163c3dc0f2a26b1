"""Image tasks end to end on a StudioContext: gallery rows, PNG parameters, lineage, errors."""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from engines.base import CancelToken, Cancelled
from studio.gallery.pnginfo import read_png_metadata
from studio.gallery.store import GalleryQuery
from studio.tasks import run_task, task_names, validate_task


@pytest.fixture(scope="module")
def model_id(tmp_path_factory):
    from engines.diffusion.random_weights import embedded_or_random

    return embedded_or_random(tmp_path_factory.mktemp("diffusion-model"))


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def count(ctx) -> int:
    return ctx.gallery.query(GalleryQuery()).total


def test_tasks_are_registered():
    assert {"txt2img", "img2img", "inpaint", "outpaint"} <= set(task_names())


def test_txt2img_saves_every_image_with_a1111_parameters(ctx, model_id):
    result = run_task(ctx, "txt2img", {"prompt": "a blue triangle", "negative_prompt": "dark",
                                       "steps": 3, "seed": 41, "batch_size": 2, "guidance_scale": 5,
                                       "scheduler": "DPM++ 2M Karras", "model": model_id})
    assert len(result.item_ids) == 2 and result.info["seeds"] == [41, 42]
    for item_id, seed in zip(result.item_ids, (41, 42)):
        item = ctx.gallery.get(item_id)
        assert (item.task, item.engine, item.seed, item.prompt) == ("txt2img", "diffusion", seed,
                                                                    "a blue triangle")
        assert item.params["seed"] == seed and item.params["guidance_scale"] == 5
        meta = read_png_metadata(str(item.file_path))
        parsed = meta["parsed"]
        assert parsed["Prompt"] == "a blue triangle" and parsed["Negative prompt"] == "dark"
        assert parsed["Steps"] == "3" and parsed["Seed"] == str(seed)
        assert parsed["Sampler"] == "DPM++ 2M" and parsed["Schedule type"] == "Karras"
        assert parsed["CFG scale"] == "5" and parsed["Size"] == f"{item.width}x{item.height}"
        assert len(parsed["Model hash"]) == 10
        assert meta["genstudio"]["params"]["seed"] == seed


def test_reusing_saved_params_reproduces_the_pixels(ctx, model_id):
    first = run_task(ctx, "txt2img", {"prompt": "an orange dot", "steps": 3, "seed": 8,
                                      "model": model_id})
    item = ctx.gallery.get(first.item_ids[0])
    again = run_task(ctx, "txt2img", dict(item.params, prompt=item.prompt))
    assert np.array_equal(np.asarray(ctx.gallery.open_image(first.item_ids[0])),
                          np.asarray(ctx.gallery.open_image(again.item_ids[0])))


def test_img2img_inpaint_outpaint_record_lineage(ctx, model_id):
    root = run_task(ctx, "txt2img", {"prompt": "a tree", "steps": 2, "seed": 1,
                                     "model": model_id}).item_ids[0]
    child = run_task(ctx, "img2img", {"prompt": "a tree at night", "steps": 4, "seed": 2,
                                      "strength": 0.5, "init_image_id": root,
                                      "model": model_id}).item_ids[0]
    original = ctx.gallery.open_image(child)
    mask = Image.new("L", original.size, 0)
    mask.paste(255, (8, 8, 32, 32))
    painted = np.asarray(mask) > 127
    inpainted = run_task(ctx, "inpaint", {"prompt": "a moon", "steps": 4, "seed": 3,
                                          "init_image_id": child, "mask": b64(mask),
                                          "inpainting_fill": "fill", "model": model_id}).item_ids[0]
    out = np.asarray(ctx.gallery.open_image(inpainted))
    assert np.array_equal(out[~painted], np.asarray(original)[~painted])
    outpainted = run_task(ctx, "outpaint", {"prompt": "more sky", "steps": 2, "seed": 4,
                                            "init_image_id": inpainted, "sides": ["up"],
                                            "pixels": 24, "model": model_id}).item_ids[0]
    item = ctx.gallery.get(outpainted)
    assert (item.width, item.height) == (original.width, original.height + 24)
    assert [i.id for i in ctx.gallery.lineage(outpainted)] == [root, child, inpainted, outpainted]
    parsed = read_png_metadata(str(ctx.gallery.get(inpainted).file_path))["parsed"]
    assert parsed["Denoising strength"] == "0.75" and parsed["Mask blur"] == "4"
    assert ctx.gallery.get(inpainted).params["mask"]  # kept, so the edit can be repeated


def test_uploaded_image_has_no_parent(ctx, model_id):
    image = Image.new("RGB", (64, 64), (200, 30, 30))
    result = run_task(ctx, "img2img", {"prompt": "x", "steps": 2, "strength": 0.6,
                                       "init_image": "data:image/png;base64," + b64(image),
                                       "model": model_id})
    assert ctx.gallery.get(result.item_ids[0]).parent_id is None


BAD = [
    ("txt2img", {"width": 0}, "width"),
    ("txt2img", {"width": 7}, "width"),
    ("txt2img", {"height": 100000}, "height"),
    ("txt2img", {"scheduler": "Heun++"}, "scheduler"),
    ("txt2img", {"prompt": " ".join(["word"] * 2000)}, "prompt"),
    ("txt2img", {"colour": "red"}, "colour"),
    ("img2img", {"init_image": "not base64 at all!"}, "init_image"),
    ("img2img", {"init_image": base64.b64encode(b"GIF89a broken").decode()}, "readable image"),
    ("img2img", {"init_image_id": 99999}, "99999"),
    ("img2img", {}, "init_image"),
    ("inpaint", {"init_image": "IMAGE", "mask": "SMALL_MASK"}, "mask"),
    ("inpaint", {"init_image": "IMAGE"}, "mask"),
    ("inpaint", {"init_image": "IMAGE", "mask": "EMPTY_MASK"}, "empty"),
    ("outpaint", {"init_image": "IMAGE", "pixels": 12}, "pixels"),
]


@pytest.mark.parametrize("task, extra, word", BAD)
def test_bad_inputs_give_a_clear_error_and_write_nothing(ctx, model_id, task, extra, word):
    picture = b64(Image.new("RGB", (64, 64), "white"))
    replace = {"IMAGE": picture, "SMALL_MASK": b64(Image.new("L", (32, 32), 255)),
               "EMPTY_MASK": b64(Image.new("L", (64, 64), 0))}
    params = {"prompt": "x", "steps": 2, "model": model_id,
              **{k: replace.get(v, v) if isinstance(v, str) else v for k, v in extra.items()}}
    with pytest.raises(ValueError, match=word):
        run_task(ctx, task, params)
    assert count(ctx) == 0
    assert not list((ctx.config.data_dir).rglob("*.png"))


def test_validate_is_cheap_and_loads_nothing(ctx):
    validate_task(ctx, "txt2img", {"prompt": "x", "steps": 5})
    with pytest.raises(ValueError, match="steps"):
        validate_task(ctx, "txt2img", {"prompt": "x", "steps": 500})
    assert ctx.engines.loaded() == []


def test_cancel_writes_nothing(ctx, model_id):
    cancel = CancelToken()

    def on_progress(progress):
        if progress.step >= 1:
            cancel.cancel()

    with pytest.raises(Cancelled):
        run_task(ctx, "txt2img", {"prompt": "x", "steps": 10, "batch_count": 2,
                                  "model": model_id}, on_progress, cancel)
    assert count(ctx) == 0


def test_add_to_queue_validates_and_enqueues(ctx, tmp_path):
    """The tab's controls become one batch job; an upload enters once, as a gallery item the job
    refers to (no image in the job row); the hires fix makes it a "hires" job."""
    from PIL import Image

    from studio.jobs.queue import JobQueue
    from studio.jobs.runner import BATCH, Runner
    from studio.ui.txt2img import _params, add_job

    ctx.queue = JobQueue(ctx)
    ctx.runner = Runner(ctx.queue)
    hires_off = (False, "Latent", 2, 0, 0.7, 0, 0)
    common = ("a red star", "", 20, 7, "Euler a", 64, 64, 5, 1, 2, 0, 1, "genstudio-tiny-sd")
    task, params = _params("txt2img", *common, None, 0.75, None, 0.0, 0, 1, *hires_off)
    assert task == "txt2img" and params["batch_count"] == 2
    assert "job #" in add_job(ctx, task, params)
    (job,) = ctx.queue.list()
    assert (job.task, job.params, job.priority) == ("txt2img", params, BATCH)
    assert "width" in add_job(ctx, "txt2img", dict(params, width=7))
    assert ctx.queue.counts()["pending"] == 1  # the bad one was not queued

    photo = tmp_path / "photo.png"
    Image.new("RGB", (64, 64), (200, 40, 40)).save(photo)
    task, params = _params("img2img", *common, str(photo), 0.6, None, 0.0, 0, 1, *hires_off)
    add_job(ctx, task, params)
    queued = max(ctx.queue.list(statuses=["pending"]), key=lambda job: job.id)
    upload = ctx.gallery.get(queued.params["init_image_id"])
    assert upload.task == "upload" and "init_image" not in queued.params

    task, params = _params("txt2img", *common, None, 0.75, None, 0.0, 0, 1,
                           True, "Lanczos", 2, 5, 0.5, 0, 0)
    assert task == "hires" and params["hr_scale"] == 2.0 and params["enable_hr"] is True
