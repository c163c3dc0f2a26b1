"""A1111's Refiner on /sdapi/v1/txt2img: `refiner_checkpoint` (a checkpoint title or name) and
`refiner_switch_at` run the txt2img_refiner task on the studio's runner; the infotext records it;
an unknown refiner, or a refiner with the hires fix or img2img, is a 422 naming the field."""
from __future__ import annotations

import base64
import io

import pytest
from PIL import Image
from wiring import api_client

from studio.api import a1111


@pytest.fixture
def client(studio):
    with api_client(studio, a1111) as client:
        yield client


def test_txt2img_with_an_sdxl_refiner(client):
    from family_pipelines import build_sdxl_refiner
    from small_pipelines import build_sdxl_shaped

    folder = client.ctx.config.models_dir / "Stable-diffusion"
    build_sdxl_shaped(folder / "tiny-sdxl")
    build_sdxl_refiner(folder / "tiny-refiner")
    assert client.post("/sdapi/v1/refresh-checkpoints").status_code == 200
    body = {"prompt": "a red cube", "steps": 4, "seed": 3, "width": 64, "height": 64,
            "override_settings": {"sd_model_checkpoint": "tiny-sdxl"}}
    made = client.post("/sdapi/v1/txt2img", json=dict(body, refiner_checkpoint="tiny-refiner",
                                                      refiner_switch_at=0.5))
    assert made.status_code == 200, made.text
    info = made.json()["info"]
    assert "Refiner: tiny-refiner [" in info and "Refiner switch at: 0.5" in info
    plain = client.post("/sdapi/v1/txt2img", json=dict(body, refiner_checkpoint="None"))
    assert plain.status_code == 200 and "Refiner" not in plain.json()["info"]
    first, second = (Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0])))
                     for r in (made, plain))
    assert first.tobytes() != second.tobytes()  # the refiner changed the image
    for bad in ({"refiner_checkpoint": "no-such-refiner"},
                {"refiner_checkpoint": "tiny-refiner", "enable_hr": True}):
        refused = client.post("/sdapi/v1/txt2img", json=dict(body, **bad))
        assert refused.status_code == 422, refused.text
        assert "refiner_checkpoint" in refused.text
