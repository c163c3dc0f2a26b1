"""The studio's "Use via API" surface, driven with gradio_client against the real studio: exactly
the named workbench endpoints are listed (no /lambda_3, no param_0), each takes named
parameters, runs as a job through the runner (so it is listed in GET /api/queue) and returns the
saved gallery files or the text."""
from __future__ import annotations

import json
import urllib.request

import pytest
from PIL import Image

pytestmark = pytest.mark.slow

ENDPOINTS = {"/txt2img", "/img2img", "/inpaint", "/outpaint", "/style", "/chat", "/code",
             "/queue_add"}
FAST = {"steps": 2, "seed": 1}  # the embedded 64 px model, two steps


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    from conftest import StudioProcess

    data_dir = tmp_path_factory.mktemp("client") / "data"
    data_dir.mkdir()
    server = StudioProcess(data_dir=data_dir).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(studio):
    from gradio_client import Client

    return Client(studio.url + "/", verbose=False)


def jobs(studio) -> list[dict]:
    with urllib.request.urlopen(studio.url + "/api/queue?limit=200", timeout=10) as response:
        body = json.load(response)
    return body["jobs"] if isinstance(body, dict) else body


def saved_images(result) -> list[Image.Image]:
    assert isinstance(result, list) and result, result
    return [Image.open(entry["image"]) for entry in result]


def test_only_the_named_endpoints_with_named_parameters(client):
    info = client.view_api(return_format="dict", print_info=False)
    assert set(info["named_endpoints"]) == ENDPOINTS
    assert info["unnamed_endpoints"] == {}
    txt2img = [p["parameter_name"] for p in info["named_endpoints"]["/txt2img"]["parameters"]]
    assert txt2img[:4] == ["prompt", "negative_prompt", "steps", "cfg_scale"]
    for name, endpoint in info["named_endpoints"].items():
        assert all(not p["parameter_name"].startswith("param_") for p in endpoint["parameters"]), name


def test_image_endpoints_run_as_jobs_and_return_the_saved_files(client, studio, tmp_path):
    from gradio_client import handle_file

    [image] = saved_images(client.predict(prompt="a red circle", width=64, height=64, **FAST,
                                          api_name="/txt2img"))
    assert image.size == (64, 64)
    photo = tmp_path / "photo.png"
    Image.new("RGB", (64, 64), (40, 90, 200)).save(photo)
    mask = tmp_path / "mask.png"
    mask_image = Image.new("L", (64, 64), 0)
    mask_image.paste(255, (16, 16, 48, 48))
    mask_image.save(mask)

    [again] = saved_images(client.predict(image=handle_file(str(photo)), prompt="a star",
                                          strength=0.5, **FAST, api_name="/img2img"))
    [painted] = saved_images(client.predict(image=handle_file(str(photo)),
                                            mask=handle_file(str(mask)), prompt="a yellow star",
                                            **FAST, api_name="/inpaint"))
    [wider] = saved_images(client.predict(image=handle_file(str(photo)), prompt="the sea",
                                          sides=["right"], pixels=32, **FAST,
                                          api_name="/outpaint"))
    assert again.size == painted.size == (64, 64) and wider.size == (96, 64)
    [styled] = saved_images(client.predict(image=handle_file(str(photo)), style="ink",
                                           api_name="/style"))
    assert styled.size == (64, 64)
    done = {j["task"]: j["params"] for j in jobs(studio) if j["status"] == "completed"}
    assert sorted(done) == ["img2img", "inpaint", "outpaint", "style", "txt2img"]
    # Images entered once: each job row refers to its uploads by id (studio/uploads.py).
    assert all(len(json.dumps(p)) < 1000 and "iVBOR" not in json.dumps(p) for p in done.values())
    assert done["img2img"]["init_image_id"] and done["style"]["image_id"]
    assert done["inpaint"]["mask"].startswith("upload:")


def test_text_endpoints_and_queue_add(client, studio):
    history = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Red."}]
    reply = client.predict(message="And another one?", history=history, max_new_tokens=16,
                           seed=3, api_name="/chat")
    assert isinstance(reply, str) and reply.strip()
    [asked] = [j for j in jobs(studio) if j["task"] == "chat"]
    assert asked["params"]["messages"] == [*history, {"role": "user", "content": "And another one?"}]
    code = client.predict(description="print the sum of 2 and 3", max_new_tokens=48, seed=3,
                          api_name="/code")
    assert isinstance(code, str) and code.strip()
    job_id = client.predict(task="txt2img", params={"prompt": "a green square", **FAST},
                            api_name="/queue_add")
    listed = {j["id"]: j for j in jobs(studio)}
    assert int(job_id) in listed and listed[int(job_id)]["task"] == "txt2img"
    assert {"chat", "code"} <= {j["task"] for j in listed.values()}


def test_bad_values_come_back_as_the_tasks_message(client):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="steps"):
        client.predict(prompt="x", steps=0, api_name="/txt2img")
    with pytest.raises(AppError, match="unknown task"):
        client.predict(task="nope", params={}, api_name="/queue_add")
