"""The A1111-compatible API through plain HTTP against the real studio (launch.py, with auth and
its queue worker), the way an A1111 client uses it."""
from __future__ import annotations

import base64
import io
import json
import shutil
import threading
import time

import numpy as np
import pytest
import requests
from PIL import Image

from conftest import StudioProcess

AUTH = ("ada", "s3cret")
MODEL_DIR_NAME = "tiny-test"


@pytest.fixture(scope="module")
def model_source(tmp_path_factory):
    from engines.diffusion.random_weights import embedded_or_random

    return embedded_or_random(tmp_path_factory.mktemp("a1111-model"))


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_source):
    """One studio for the module (starting one costs seconds on a shared CPU). Without the
    embedded model, a random tiny one sits in the models folder and is picked via /options."""
    data_dir = tmp_path_factory.mktemp("a1111") / "data"
    (data_dir / "models").mkdir(parents=True)
    if model_source != "genstudio-tiny-sd":
        shutil.copytree(model_source, data_dir / "models" / MODEL_DIR_NAME)
    studio = StudioProcess(data_dir=data_dir, args=("--auth", f"{AUTH[0]}:{AUTH[1]}"))
    studio.start()
    # "/" answers as soon as Gradio serves; the HTTP APIs are mounted a moment later.
    deadline = time.monotonic() + 60
    while requests.get(f"{studio.url}/sdapi/v1/samplers", timeout=10).status_code == 404:
        assert time.monotonic() < deadline, "the A1111 API was never mounted"
        time.sleep(0.2)
    studio.model_id = (None if model_source == "genstudio-tiny-sd"
                       else str(data_dir / "models" / MODEL_DIR_NAME))
    yield studio
    studio.stop()


def api(server, method: str, path: str, **kwargs) -> requests.Response:
    return requests.request(method, f"{server.url}/sdapi/v1/{path}", auth=AUTH, timeout=300,
                            **kwargs)


@pytest.fixture(scope="module")
def selected(server):
    """The test model chosen through /options, as a client would."""
    models = api(server, "GET", "sd-models").json()
    wanted = MODEL_DIR_NAME if server.model_id else "genstudio-tiny-sd"
    titles = [m["title"] for m in models if m["model_name"] == wanted]
    assert titles, models
    response = api(server, "POST", "options", json={"sd_model_checkpoint": wanted})
    assert response.status_code == 200, response.text
    assert api(server, "GET", "options").json()["sd_model_checkpoint"] == titles[0]
    return titles[0]


def decode(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


def encode(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_auth_like_the_ui(server):
    assert requests.get(f"{server.url}/sdapi/v1/samplers", timeout=30).status_code == 401
    assert requests.get(f"{server.url}/sdapi/v1/samplers", auth=("ada", "no"), timeout=30).status_code == 401
    samplers = api(server, "GET", "samplers").json()
    assert {"Euler a", "DPM++ 2M", "DDIM"} <= {s["name"] for s in samplers}
    assert {s["name"] for s in api(server, "GET", "schedulers").json()} >= {"automatic", "karras"}


def test_openapi_schema_lists_the_routes(server):
    # the schema and the docs need the same login as everything else
    assert requests.get(f"{server.url}/openapi.json", timeout=30).status_code == 401
    schema = requests.get(f"{server.url}/openapi.json", auth=AUTH, timeout=30).json()
    for path in ("txt2img", "img2img", "progress", "interrupt", "skip", "png-info", "options",
                 "sd-models", "samplers", "schedulers"):
        assert f"/sdapi/v1/{path}" in schema["paths"]
    body = schema["components"]["schemas"]["Txt2ImgRequest"]["properties"]
    assert {"prompt", "cfg_scale", "sampler_name", "n_iter", "override_settings"} <= set(body)
    assert requests.get(f"{server.url}/docs", auth=AUTH, timeout=30).status_code == 200


def test_txt2img_reproduces_the_task_pixels_and_lands_in_the_gallery(server, selected, ctx):
    payload = {"prompt": "a red circle", "negative_prompt": "blurry", "seed": 1234, "steps": 8,
               "cfg_scale": 6.5, "sampler_name": "Euler a", "batch_size": 2, "n_iter": 1,
               "send_images": True, "save_images": True, "restore_faces": False,
               "some_unknown_field": {"ignored": True}}
    response = api(server, "POST", "txt2img", json=payload)
    assert response.status_code == 200, response.text
    body = response.json()
    info = json.loads(body["info"])
    assert info["seed"] == 1234 and info["all_seeds"] == [1234, 1235]
    assert info["queued"] is True and len(info["job_ids"]) == 1  # went through the queue
    assert len(body["images"]) == 2 and body["parameters"]["cfg_scale"] == 6.5
    assert "Seed: 1234" in info["infotexts"][0] and "Sampler: Euler a" in info["infotexts"][0]

    # The same parameters through the task, as the UI runs it: identical pixels.
    from studio.tasks import run_task

    params = {"prompt": "a red circle", "negative_prompt": "blurry", "seed": 1234, "steps": 8,
              "guidance_scale": 6.5, "scheduler": "Euler a", "batch_size": 2}
    if server.model_id:
        params["model"] = server.model_id
    direct = run_task(ctx, "txt2img", params)
    for b64, image in zip(body["images"], direct.images):
        assert np.array_equal(np.asarray(decode(b64).convert("RGB")), np.asarray(image))

    # In the gallery with its parameters, like a UI image.
    for item_id, seed in zip(info["gallery_ids"], (1234, 1235)):
        item = requests.get(f"{server.url}/api/gallery/{item_id}", auth=AUTH, timeout=30).json()
        assert item["task"] == "txt2img" and item["seed"] == seed
        assert item["prompt"] == "a red circle" and item["params"]["guidance_scale"] == 6.5
    job = requests.get(f"{server.url}/api/queue/{info['job_ids'][0]}", auth=AUTH, timeout=30).json()
    assert job["status"] == "completed" and sorted(job["item_ids"]) == sorted(info["gallery_ids"])


def test_png_info_gives_back_the_parameters(server, selected):
    body = api(server, "POST", "txt2img", json={"prompt": "a blue square, flat", "seed": 77,
                                                "steps": 5, "cfg_scale": 5}).json()
    info = json.loads(body["info"])
    # The returned image and the gallery's file both carry the parameters.
    gallery_file = requests.get(f"{server.url}/api/gallery/{info['gallery_ids'][0]}/file",
                                auth=AUTH, timeout=30).content
    for image in (body["images"][0], base64.b64encode(gallery_file).decode()):
        result = api(server, "POST", "png-info", json={"image": image}).json()
        assert result["info"] == info["infotexts"][0]
        parsed = result["parameters"]
        assert parsed["Prompt"] == "a blue square, flat"
        assert parsed["Seed"] == "77" and parsed["Steps"] == "5" and parsed["CFG scale"] == "5.0"
        assert "genstudio" in result["items"]
    plain = api(server, "POST", "png-info", json={"image": encode(Image.new("RGB", (8, 8)))})
    assert plain.json() == {"info": "", "items": {}, "parameters": {}}


def test_img2img_inpaints_only_the_masked_area(server, selected):
    base = api(server, "POST", "txt2img", json={"prompt": "a landscape", "seed": 5, "steps": 5}).json()
    original = decode(base["images"][0]).convert("RGB")
    mask = Image.new("L", original.size, 0)
    mask.paste(255, (16, 16, 48, 48))
    response = api(server, "POST", "img2img", json={
        "prompt": "a yellow star", "init_images": [base["images"][0]], "mask": encode(mask),
        "mask_blur": 2, "inpainting_fill": 1, "inpaint_full_res": False,
        "denoising_strength": 0.9, "steps": 8, "seed": 9})
    assert response.status_code == 200, response.text
    body = response.json()
    info = json.loads(body["info"])
    assert info["task"] == "inpaint" and body["parameters"]["init_images"] is None
    out = np.asarray(decode(body["images"][0]).convert("RGB"))
    painted = np.asarray(mask) > 127
    assert out.shape == np.asarray(original).shape
    assert np.array_equal(out[~painted], np.asarray(original)[~painted])
    assert not np.array_equal(out[painted], np.asarray(original)[painted])
    item = requests.get(f"{server.url}/api/gallery/{info['gallery_ids'][0]}", auth=AUTH, timeout=30).json()
    assert item["task"] == "inpaint" and item["params"]["strength"] == 0.9
    assert "Denoising strength: 0.9" in info["infotexts"][0]
    # Without a mask it is plain img2img.
    plain = api(server, "POST", "img2img", json={"prompt": "x", "init_images": [base["images"][0]],
                                                 "denoising_strength": 0.5, "steps": 4, "seed": 1})
    assert plain.status_code == 200 and json.loads(plain.json()["info"])["task"] == "img2img"


def _start(server, payload):
    """POST txt2img in a thread; returns (thread, holder) where holder gets the response."""
    holder = {}

    def call():
        started = time.monotonic()
        holder["response"] = api(server, "POST", "txt2img", json=payload)
        holder["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    return thread, holder


def _wait_for(server, condition, timeout=120):
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        progress = api(server, "GET", "progress").json()
        seen.append(progress)
        if condition(progress):
            return progress, seen
        time.sleep(0.1)
    raise AssertionError(f"progress never met the condition; last: {seen[-1:]}")


def test_progress_then_interrupt_stops_the_run(server, selected):
    assert api(server, "GET", "progress").json()["state"]["job_count"] == 0  # idle
    thread, holder = _start(server, {"prompt": "a long one", "seed": 3, "steps": 150, "n_iter": 3})
    progress, seen = _wait_for(server, lambda p: p["state"]["sampling_step"] >= 12
                               and p["current_image"])
    assert 0 < progress["progress"] < 1 and progress["eta_relative"] > 0
    assert progress["state"]["job_count"] == 3 and progress["state"]["sampling_steps"] == 150
    preview = decode(progress["current_image"])
    assert preview.size[0] > 0
    fractions = [p["progress"] for p in seen if p["state"]["job_count"]]
    assert fractions == sorted(fractions)  # progress only goes forward
    assert api(server, "POST", "interrupt").json() == {"interrupted": True}
    interrupted_at = time.monotonic()
    thread.join(60)
    assert not thread.is_alive(), "interrupt did not stop the request"
    assert time.monotonic() - interrupted_at < 10  # the rest of 3 x 150 steps is not run
    response = holder["response"]
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    assert info["interrupted"] is True and response.json()["images"] == []
    for job_id in info["job_ids"]:  # every job of the request is canceled, none saved
        job = requests.get(f"{server.url}/api/queue/{job_id}", auth=AUTH, timeout=30).json()
        assert job["status"] == "canceled" and job["item_ids"] == []
    assert api(server, "GET", "progress").json()["state"]["job_count"] == 0


def test_skip_drops_the_current_run_only(server, selected):
    thread, holder = _start(server, {"prompt": "two runs", "seed": 40, "steps": 60, "n_iter": 2,
                                     "batch_size": 1})
    _wait_for(server, lambda p: p["state"]["job_no"] == 0 and p["state"]["sampling_step"] >= 3)
    assert api(server, "POST", "skip").json() == {"skipped": True}
    thread.join(120)
    info = json.loads(holder["response"].json()["info"])
    assert info["all_seeds"] == [41] and info["skipped_runs"] == 1 and not info["interrupted"]
    assert len(holder["response"].json()["images"]) == 1


@pytest.mark.parametrize("path, payload, field", [
    ("txt2img", {"prompt": "x", "steps": "many"}, "steps"),
    ("txt2img", {"prompt": "x", "cfg_scale": [1]}, "cfg_scale"),
    ("txt2img", {"prompt": ["x"]}, "prompt"),
    ("txt2img", {"prompt": "x", "steps": 1000}, "steps"),
    ("txt2img", {"prompt": "x", "cfg_scale": 99}, "cfg_scale"),
    ("txt2img", {"prompt": "x", "width": 100}, "width"),
    ("txt2img", {"prompt": "x", "sampler_name": "Heun"}, "sampler_name"),
    ("txt2img", {"prompt": "x", "sampler_name": "Euler", "scheduler": "Karras"}, "scheduler"),
    ("txt2img", {"prompt": "x", "n_iter": 40, "batch_size": 4}, "n_iter"),
    ("txt2img", {"prompt": "x", "override_settings": {"sd_model_checkpoint": "nope"}},
     "override_settings"),
    ("img2img", {"prompt": "x"}, "init_images"),
    ("img2img", {"prompt": "x", "init_images": ["not base64!"]}, "init_images"),
    ("img2img", {"prompt": "x", "init_images": [encode(Image.new("RGB", (64, 64)))],
                 "denoising_strength": 2}, "denoising_strength"),
    ("img2img", {"prompt": "x", "init_images": [encode(Image.new("RGB", (64, 64)))],
                 "mask": encode(Image.new("L", (64, 64), 0))}, "mask"),
    ("img2img", {"prompt": "x", "init_images": [encode(Image.new("RGB", (64, 64)))],
                 "mask": encode(Image.new("L", (64, 64), 255)), "mask_blur": "soft"}, "mask_blur"),
    ("options", {"sd_model_checkpoint": "no-such-model"}, "sd_model_checkpoint"),
    ("png-info", {"image": 12}, "image"),
])
def test_bad_payloads_get_422_naming_the_field(server, path, payload, field):
    response = api(server, "POST", path, json=payload)
    assert response.status_code == 422, response.text
    locations = [error["loc"] for error in response.json()["detail"]]
    assert any(loc[-1] == field or field in loc for loc in locations), locations
