"""The A1111 API over the families and the models inventory: /sd-models and
/refresh-checkpoints reflect an import and a deletion; a Kandinsky 2.2 checkpoint generates
through /sdapi/v1/txt2img and a field it does not take is a 4xx naming the field."""
from __future__ import annotations

import pytest
from wiring import api_client

from studio.api import a1111


@pytest.fixture
def client(studio):  # the app's own wiring and worker (tests/wiring.py); client.ctx is it
    with api_client(studio, a1111) as client:
        yield client


def test_import_generate_refuse_and_delete_through_the_a1111_api(client, tmp_path):
    from family_pipelines import build_kandinsky22

    from studio.jobs.runner import API
    from studio.model_inventory import delete_model

    ctx = client.ctx
    source = build_kandinsky22(tmp_path / "tiny-kandinsky")
    ctx.runner.submit("import_model", {"path": str(source)}, priority=API).result(timeout=120)
    models = {m["model_name"]: m for m in client.get("/sdapi/v1/sd-models").json()}
    assert "tiny-kandinsky" in models and models["tiny-kandinsky"]["hash"]
    assert client.post("/sdapi/v1/options",
                       json={"sd_model_checkpoint": "tiny-kandinsky"}).status_code == 200
    refused = client.post("/sdapi/v1/txt2img", json={"prompt": "a cat", "steps": 2, "width": 64,
                                                     "height": 64, "sampler_name": "Euler a"})
    assert 400 <= refused.status_code < 500
    assert "scheduler" in refused.text or "sampler" in refused.text
    assert "Kandinsky 2.2" in refused.text
    made = client.post("/sdapi/v1/txt2img", json={"prompt": "a cat", "steps": 2, "width": 64,
                                                  "height": 64, "seed": 4})
    assert made.status_code == 200, made.text
    assert made.json()["images"] and "Model: tiny-kandinsky" in made.json()["info"]
    # A DiT family's hash is its transformer's, as in the infotext and the Models tab.
    from family_pipelines import build_pixart
    from studio.models import list_offered

    build_pixart(ctx.config.models_dir / "Stable-diffusion" / "tiny-pixart")
    listed = {m["model_name"]: m for m in client.get("/sdapi/v1/sd-models").json()}
    entry = next(e for e in list_offered(ctx, "checkpoint") if e.name == "tiny-pixart")
    assert listed["tiny-pixart"]["hash"] == entry.short_hash
    delete_model(ctx, str(ctx.config.models_dir / "Stable-diffusion" / "tiny-kandinsky"))
    assert client.post("/sdapi/v1/refresh-checkpoints").status_code == 200
    names = {m["model_name"] for m in client.get("/sdapi/v1/sd-models").json()}
    assert "tiny-kandinsky" not in names
