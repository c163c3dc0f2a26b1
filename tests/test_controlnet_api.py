"""The sd-webui-controlnet API against the real studio (launch.py, auth, queue worker): the
payload of the extension's README example, its model and module lists, detect, and errors."""
from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image, ImageDraw

from conftest import StudioProcess
from controlnet_files import controlnet_from_unet

AUTH = ("ada", "s3cret")
MODEL_DIR_NAME = "tiny-test"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A studio whose models/ControlNet holds a ControlNet made from the test model's UNet."""
    from diffusers import UNet2DConditionModel

    from engines.diffusion.loading import resolve_model
    from engines.diffusion.random_weights import embedded_or_random

    source = embedded_or_random(tmp_path_factory.mktemp("cn-api-model"))
    data_dir = tmp_path_factory.mktemp("cn-api") / "data"
    (data_dir / "models").mkdir(parents=True)
    unet = UNet2DConditionModel.from_pretrained(Path(resolve_model(source).location) / "unet")
    levels = len(unet.config.block_out_channels)
    controlnet_from_unet(unet, conditioning_embedding_out_channels=(16, 32, 96, 256)[:levels]) \
        .save_pretrained(data_dir / "models" / "ControlNet" / "tiny-canny")
    if source != "genstudio-tiny-sd":
        shutil.copytree(source, data_dir / "models" / MODEL_DIR_NAME)
    studio = StudioProcess(data_dir=data_dir, args=("--auth", f"{AUTH[0]}:{AUTH[1]}"))
    studio.start()
    studio.model = None if source == "genstudio-tiny-sd" else MODEL_DIR_NAME
    yield studio
    studio.stop()


def call(server, method: str, path: str, **kwargs) -> requests.Response:
    return requests.request(method, f"{server.url}{path}", auth=AUTH, timeout=300, **kwargs)


def encode(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")


def control_picture() -> Image.Image:
    image = Image.new("RGB", (64, 64))
    ImageDraw.Draw(image).rectangle((8, 8, 36, 36), fill="white")
    return image


def readme_payload(server, **unit) -> dict:
    """example/txt2img_example/api_txt2img.py of the extension (its README points there)."""
    payload = {
        "prompt": "a red star", "negative_prompt": "", "batch_size": 1, "steps": 4,
        "cfg_scale": 7, "seed": 11,
        "alwayson_scripts": {"controlnet": {"args": [dict({
            "enabled": True, "module": "none", "model": "canny", "weight": 1.0,
            "image": encode(control_picture()), "resize_mode": "Crop and Resize",
            "lowvram": False, "processor_res": 64, "threshold_a": 64, "threshold_b": 64,
            "guidance_start": 0.0, "guidance_end": 1.0, "control_mode": "Balanced",
            "pixel_perfect": False}, **unit)]}}}
    if server.model:
        payload["override_settings"] = {"sd_model_checkpoint": server.model}
    return payload


def test_model_and_module_lists(server):
    models = call(server, "GET", "/controlnet/model_list").json()
    assert set(models) == {"model_list"}
    mine = [m for m in models["model_list"] if m.startswith("tiny-canny [")]
    assert mine and len(mine[0]) == len("tiny-canny [") + 8 + 1
    modules = call(server, "GET", "/controlnet/module_list").json()
    assert {"none", "canny", "invert", "scribble_xdog", "lineart_standard"} <= set(
        modules["module_list"])
    canny = modules["module_detail"]["canny"]
    assert canny["model_free"] is False
    assert canny["sliders"][1] == {"name": "Canny Low Threshold", "value": 100, "min": 1,
                                   "max": 255, "step": 1}
    aliases = call(server, "GET", "/controlnet/module_list", params={"alias_names": True}).json()
    assert "invert (from white bg & black line)" in aliases["module_list"]
    assert call(server, "GET", "/controlnet/version").json() == {"version": 3}
    assert requests.get(f"{server.url}/controlnet/model_list", timeout=30).status_code == 401


def test_detect_runs_a_preprocessor(server):
    response = call(server, "POST", "/controlnet/detect", json={
        "controlnet_module": "canny", "controlnet_input_images": [encode(control_picture())],
        "controlnet_processor_res": 64, "controlnet_threshold_a": 100,
        "controlnet_threshold_b": 200})
    assert response.status_code == 200, response.text
    body = response.json()
    edges = np.asarray(decode(body["images"][0]))
    assert body["info"] == "Success" and edges.shape == (64, 64, 3)
    assert edges[6:11, 20].max() == 255 and edges[20, 20].max() == 0  # the square's outline only
    bad = call(server, "POST", "/controlnet/detect", json={
        "controlnet_module": "openpose", "controlnet_input_images": [encode(control_picture())]})
    assert bad.status_code == 422


def test_readme_payload_steers_txt2img_and_is_recorded(server):
    plain = readme_payload(server)
    del plain["alwayson_scripts"]
    base = call(server, "POST", "/sdapi/v1/txt2img", json=plain)
    steered = call(server, "POST", "/sdapi/v1/txt2img", json=readme_payload(server))
    assert base.status_code == 200 and steered.status_code == 200, steered.text
    difference = np.abs(np.asarray(decode(base.json()["images"][0]), dtype=np.float32)
                        - np.asarray(decode(steered.json()["images"][0]), dtype=np.float32))
    assert difference.mean() > 0.5
    infotext = json.loads(steered.json()["info"])["infotexts"][0]
    assert 'ControlNet 0: "Module: none, Model: tiny-canny [' in infotext
    assert "Resize Mode: Crop and Resize" in infotext and "Control Mode: Balanced" in infotext
    disabled = readme_payload(server, enabled=False)  # a disabled unit is skipped, as the extension does
    again = call(server, "POST", "/sdapi/v1/txt2img", json=disabled)
    assert again.json()["images"][0] == base.json()["images"][0] or np.array_equal(
        np.asarray(decode(again.json()["images"][0])), np.asarray(decode(base.json()["images"][0])))


def test_img2img_inpaint_with_units_by_int_codes(server):
    payload = readme_payload(server, module="canny", resize_mode=0, control_mode=2,
                             input_image=encode(control_picture()), image=None)
    mask = Image.new("L", (64, 64))
    ImageDraw.Draw(mask).rectangle((0, 0, 31, 63), fill=255)
    payload.update(init_images=[encode(Image.new("RGB", (64, 64), "navy"))], mask=encode(mask),
                   denoising_strength=0.8)
    response = call(server, "POST", "/sdapi/v1/img2img", json=payload)
    assert response.status_code == 200, response.text
    infotext = json.loads(response.json()["info"])["infotexts"][0]
    assert "Module: canny" in infotext and "Resize Mode: Just Resize" in infotext
    assert "Control Mode: ControlNet is more important" in infotext


@pytest.mark.parametrize("unit, words", [
    ({"module": "depth_leres"}, "unknown ControlNet module 'depth_leres'"),
    ({"image": "not base64 at all!"}, "not valid base64"),
    ({"model": "openpose"}, "unknown ControlNet model 'openpose'"),
    ({"weight": 5}, "weight"),
    ({"control_mode": "Louder"}, "unknown `control_mode` 'Louder'"),
    ({"control_mode": 3}, "unknown `control_mode` 3"),
])
def test_bad_units_get_422_naming_alwayson_scripts(server, unit, words):
    response = call(server, "POST", "/sdapi/v1/txt2img", json=readme_payload(server, **unit))
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail[0]["loc"] == ["body", "alwayson_scripts"]
    assert words in detail[0]["msg"] and "ControlNet" in detail[0]["msg"]


def test_detected_maps_follow_the_images_unless_asked_not_to(server):
    """The extension appends each unit's detected map to `images`, once, after the results."""
    payload = readme_payload(server, module="canny", threshold_a=100, threshold_b=200,
                             control_mode="My prompt is more important")
    payload["n_iter"] = 2
    body = call(server, "POST", "/sdapi/v1/txt2img", json=payload).json()
    assert len(body["images"]) == 3  # two results, then the map
    detect = call(server, "POST", "/controlnet/detect", json={
        "controlnet_module": "canny", "controlnet_input_images": [encode(control_picture())],
        "controlnet_processor_res": 64, "controlnet_threshold_a": 100,
        "controlnet_threshold_b": 200}).json()
    assert np.array_equal(np.asarray(decode(body["images"][-1])),
                          np.asarray(decode(detect["images"][0])))  # the canny map itself
    assert "Control Mode: My prompt is more important" in json.loads(body["info"])["infotexts"][0]
    payload["n_iter"] = 1
    quiet = readme_payload(server, save_detected_map=False)
    assert len(call(server, "POST", "/sdapi/v1/txt2img", json=quiet).json()["images"]) == 1
    none = call(server, "POST", "/sdapi/v1/txt2img", json=dict(payload, send_images=False))
    assert none.json()["images"] == []
    assert call(server, "POST", "/sdapi/v1/options",
                json={"control_net_no_detectmap": True}).status_code == 200
    try:
        assert len(call(server, "POST", "/sdapi/v1/txt2img", json=payload).json()["images"]) == 1
    finally:
        call(server, "POST", "/sdapi/v1/options", json={"control_net_no_detectmap": False})
    # Hires fix: the final size's map, then the first pass's (the extension's order).
    hires = dict(payload, enable_hr=True, hr_scale=2, hr_upscaler="Lanczos",
                 hr_second_pass_steps=2, denoising_strength=0.5)
    images = [decode(b) for b in call(server, "POST", "/sdapi/v1/txt2img", json=hires).json()[
        "images"]]
    w, h = decode(body["images"][0]).size
    assert [im.size for im in images] == [(2 * w, 2 * h), (2 * w, 2 * h), (w, h)]
