"""A1111's Extras API on the upscale task: base64 in, base64 PNG out, A1111's field names in
422s, results in the gallery as children of the uploaded inputs."""
from __future__ import annotations

import base64
import io

import pytest
from PIL import Image
from wiring import api_client

from studio.api import a1111_extras
from studio.api.a1111_extras import hires_params
from studio.gallery.pnginfo import read_png_metadata
from studio.gallery.store import GalleryQuery


def photo_b64(side: int = 32) -> str:
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(data.astronaut()).resize((side, side), Image.BICUBIC).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


@pytest.fixture
def client(studio):  # the app's own wiring and worker (tests/wiring.py); client.ctx is it
    with api_client(studio, a1111_extras) as client:
        yield client


def test_upscalers_list_answers_like_a1111(client):
    folder = client.ctx.config.models_dir / "ESRGAN"
    folder.mkdir(parents=True)
    (folder / "4x_Custom.pth").write_bytes(b"listed by name, loaded only when used")
    body = client.get("/sdapi/v1/upscalers").json()
    names = [u["name"] for u in body]
    assert names[:3] == ["None", "Lanczos", "Nearest"]
    assert {"R-ESRGAN AnimeVideo", "R-ESRGAN 4x+", "4x_Custom"} <= set(names)
    custom = next(u for u in body if u["name"] == "4x_Custom")
    assert custom["scale"] == 4 and custom["model_path"].endswith("4x_Custom.pth")
    assert set(body[0]) == {"name", "model_name", "model_path", "model_url", "scale"}
    modes = [m["name"] for m in client.get("/sdapi/v1/latent-upscale-modes").json()]
    assert modes[0] == "Latent" and "Latent (nearest-exact)" in modes


def test_extra_single_image_round_trip(client):
    response = client.post("/sdapi/v1/extra-single-image", json={
        "image": photo_b64(32), "upscaler_1": "R-ESRGAN AnimeVideo", "upscaling_resize": 2})
    assert response.status_code == 200, response.text
    body = response.json()
    png = base64.b64decode(body["image"])
    image = Image.open(io.BytesIO(png))
    assert image.size == (64, 64)
    assert "Postprocess upscaler: R-ESRGAN AnimeVideo" in read_png_metadata(png)["parameters"]
    assert body["html_info"].startswith("<p>") and "Postprocess upscale by: 2" in body["html_info"]
    items = client.ctx.gallery.query(GalleryQuery(task="upscale")).items
    assert len(items) == 1 and client.ctx.gallery.get(items[0].parent_id).task == "upload"


def test_extra_batch_images_to_a_target_size(client):
    response = client.post("/sdapi/v1/extra-batch-images", json={
        "imageList": [{"data": photo_b64(32), "name": "a.png"},
                      {"data": "data:image/png;base64," + photo_b64(48), "name": "b.png"}],
        "resize_mode": 1, "upscaling_resize_w": 80, "upscaling_resize_h": 40,
        "upscaling_crop": True, "upscaler_1": "Lanczos"})
    assert response.status_code == 200, response.text
    sizes = [Image.open(io.BytesIO(base64.b64decode(i))).size for i in response.json()["images"]]
    assert sizes == [(80, 40), (80, 40)]


@pytest.mark.parametrize("body,field,message", [
    ({"upscaler_1": "ESRGAN_9x"}, "upscaler_1", "unknown `upscaler` 'ESRGAN_9x'"),
    ({"image": "not base64!"}, "image", "not valid base64"),
    ({"upscaling_resize": 12}, "upscaling_resize", "between 1.0 and 8.0"),
    ({"gfpgan_visibility": 1}, "gfpgan_visibility", "no face restorer"),
])
def test_refusals_name_the_a1111_field_and_leave_nothing(client, body, field, message):
    response = client.post("/sdapi/v1/extra-single-image", json={"image": photo_b64(16), **body})
    assert response.status_code == 422
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["body", field] and message in detail["msg"]
    assert client.ctx.gallery.query().total == 0


def test_hires_params_for_the_txt2img_route():
    from studio.api.a1111_extras import HiresFields

    class Request(HiresFields):
        denoising_strength: float | None = None

    assert hires_params(Request()) is None
    params = hires_params(Request(enable_hr=True, hr_scale=1.5, hr_upscaler="R-ESRGAN 4x+",
                                  hr_second_pass_steps=5, denoising_strength=0.4))
    assert params == {"enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "R-ESRGAN 4x+",
                      "hr_second_pass_steps": 5, "hr_resize_x": 0, "hr_resize_y": 0,
                      "denoising_strength": 0.4}
