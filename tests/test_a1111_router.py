"""The A1111 router on a FastAPI app of its own over a studio on the app's own wiring (the
`studio` fixture: queue, runner and worker included); plus the sampler/scheduler mapping."""
from __future__ import annotations

import json
import shutil
import threading
import time

import pytest
from wiring import api_client

from studio.api import a1111, a1111_extras, a1111_lora
from studio.api.a1111_names import scheduler_name
from studio.gallery.store import GalleryQuery


@pytest.fixture(scope="module")
def model_source(tmp_path_factory):
    from engines.diffusion.random_weights import embedded_or_random

    return embedded_or_random(tmp_path_factory.mktemp("a1111-direct-model"))


@pytest.fixture
def client(studio, model_source):
    if model_source != "genstudio-tiny-sd":
        studio.config.models_dir.mkdir(parents=True, exist_ok=True)
        shutil.copytree(model_source, studio.config.models_dir / "tiny-test")
    with api_client(studio, a1111, a1111_extras, a1111_lora) as client:
        if model_source != "genstudio-tiny-sd":
            assert client.post("/sdapi/v1/options",
                               json={"sd_model_checkpoint": "tiny-test"}).status_code == 200
        yield client


def test_scheduler_mapping():
    assert scheduler_name(None, None) is None
    assert scheduler_name(None, "Automatic") is None
    assert scheduler_name("Euler a", None) == "Euler a"
    assert scheduler_name("DPM++ 2M", "Karras") == "DPM++ 2M Karras"
    assert scheduler_name("DPM++ 2M", "karras") == "DPM++ 2M Karras"
    assert scheduler_name("DPM++ 2M Karras", None) == "DPM++ 2M Karras"
    assert scheduler_name("DPM++ 2M Karras", "Karras") == "DPM++ 2M Karras"
    assert scheduler_name("DPM++ 2M", "automatic") == "DPM++ 2M"
    assert scheduler_name(None, "Karras") == "DPM++ 2M Karras"  # the default sampler


def test_options_persist_and_models_list(client):
    models = client.get("/sdapi/v1/sd-models").json()
    assert models and all({"title", "model_name", "hash", "filename"} <= set(m) for m in models)
    title = client.get("/sdapi/v1/options").json()["sd_model_checkpoint"]
    assert title in {m["title"] for m in models}
    assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": title}).status_code == 200
    saved = json.loads((client.ctx.config.data_dir / "a1111-options.json").read_text())
    assert saved["sd_model_checkpoint"] == title
    client.post("/sdapi/v1/options", json={"samples_format": "png", "my_option": 3})
    assert client.get("/sdapi/v1/options").json()["my_option"] == 3


def test_generation_interrupt_and_skip(client):
    # Plain run: one job per n_iter, and the images are in the gallery.
    body = client.post("/sdapi/v1/txt2img", json={"prompt": "a", "seed": 3, "steps": 3,
                                                  "n_iter": 2}).json()
    info = json.loads(body["info"])
    assert len(info["job_ids"]) == 2 and info["all_seeds"] == [3, 4] and len(body["images"]) == 2
    assert [client.ctx.gallery.get(i).seed for i in info["gallery_ids"]] == [3, 4]

    def run(payload, holder):
        holder["response"] = client.post("/sdapi/v1/txt2img", json=payload)

    def wait_step(minimum):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            state = client.get("/sdapi/v1/progress").json()["state"]
            if state["sampling_step"] >= minimum:
                return state
            time.sleep(0.05)
        raise AssertionError("no progress")

    # Skip: the first of two runs is dropped, the second is kept.
    holder: dict = {}
    thread = threading.Thread(target=run, args=({"prompt": "b", "seed": 10, "steps": 80,
                                                 "n_iter": 2}, holder))
    thread.start()
    assert wait_step(2)["job_no"] == 0
    assert client.post("/sdapi/v1/skip").json() == {"skipped": True}
    thread.join(120)
    info = json.loads(holder["response"].json()["info"])
    assert info["all_seeds"] == [11] and info["skipped_runs"] == 1

    # Interrupt: nothing is kept, and it stops at once.
    holder = {}
    thread = threading.Thread(target=run, args=({"prompt": "c", "seed": 20, "steps": 150,
                                                 "n_iter": 3}, holder))
    thread.start()
    wait_step(2)
    count = client.ctx.gallery.query(GalleryQuery()).total
    assert client.post("/sdapi/v1/interrupt").json() == {"interrupted": True}
    thread.join(30)
    assert not thread.is_alive()
    body = holder["response"].json()
    assert json.loads(body["info"])["interrupted"] is True and body["images"] == []
    assert client.ctx.gallery.query(GalleryQuery()).total == count
    assert client.post("/sdapi/v1/interrupt").json() == {"interrupted": False}  # idle now


def test_connect_time_endpoints_answer(client):
    for path in ("sd-vae", "upscalers", "loras", "prompt-styles", "embeddings", "scripts",
                 "cmd-flags", "samplers", "schedulers", "sd-models", "options"):
        assert client.get(f"/sdapi/v1/{path}").status_code == 200, path
    assert client.post("/sdapi/v1/refresh-checkpoints").status_code == 200


def test_txt2img_hires_fix_doubles_the_size_and_records_itself(client):
    body = client.post("/sdapi/v1/txt2img", json={
        "prompt": "a red star", "seed": 5, "steps": 3, "width": 64, "height": 64,
        "enable_hr": True, "hr_scale": 2, "hr_upscaler": "Lanczos", "hr_second_pass_steps": 2,
        "denoising_strength": 0.5})
    assert body.status_code == 200, body.text
    info = json.loads(body.json()["info"])
    item = client.ctx.gallery.get(info["gallery_ids"][0])
    assert (item.width, item.height) == (128, 128) and info["task"] == "hires"
    assert "Hires upscale: 2" in info["infotexts"][0] and "Hires upscaler: Lanczos" in info["infotexts"][0]
