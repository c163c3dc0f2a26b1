"""/sdapi/v1/loras, /refresh-loras, /embeddings and /sd-vae (studio/api/a1111_lora.py), and
A1111's `sd_vae` override reaching the image task."""
from __future__ import annotations

import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient
from safetensors.torch import save_file


@pytest.fixture
def client(ctx):
    from studio.api import a1111_lora

    app = FastAPI()
    app.include_router(a1111_lora.router(ctx))
    return TestClient(app)


def test_lists_loras_embeddings_and_vaes(ctx, client):
    models = ctx.config.models_dir
    lora = models / "Lora" / "sub" / "inky.safetensors"
    lora.parent.mkdir(parents=True)
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 4)}, str(lora),
              metadata={"ss_output_name": "Inky", "ss_tag_frequency": '{"img": {"inky": 3}}'})
    (models / "embeddings").mkdir()
    save_file({"emb_params": torch.zeros(3, 128)}, str(models / "embeddings" / "fits.safetensors"))
    save_file({"emb_params": torch.zeros(1, 768)}, str(models / "embeddings" / "sd15.safetensors"))
    (models / "VAE").mkdir()
    save_file({"x": torch.zeros(1)}, str(models / "VAE" / "vae-ft-mse.safetensors"))

    loras = client.get("/sdapi/v1/loras").json()
    assert [(l["name"], l["alias"], l["path"]) for l in loras] == [("inky", "Inky", str(lora))]
    assert loras[0]["metadata"]["ss_tag_frequency"] == '{"img": {"inky": 3}}'
    assert client.post("/sdapi/v1/refresh-loras").status_code == 200
    embeddings = client.get("/sdapi/v1/embeddings").json()
    # the embedded model's text encoder is 128 wide: the SD 1.5 embedding is skipped
    assert embeddings["loaded"] == {"fits": {"step": None, "sd_checkpoint": None,
                                             "sd_checkpoint_name": None, "shape": 128, "vectors": 3}}
    assert list(embeddings["skipped"]) == ["sd15"]
    assert client.get("/sdapi/v1/sd-vae").json() == [
        {"model_name": "vae-ft-mse.safetensors", "filename": str(models / "VAE" / "vae-ft-mse.safetensors")}]


def test_sd_vae_override_reaches_the_task(ctx):
    from fastapi.exceptions import RequestValidationError

    from studio.api.a1111 import build_run
    from studio.api.a1111_models import Txt2ImgRequest

    request = Txt2ImgRequest(prompt="a red circle", steps=2)
    with pytest.raises(RequestValidationError) as error:
        build_run(ctx, request, "txt2img", None, "missing.safetensors")
    assert error.value.errors()[0]["loc"] == ("body", "sd_vae")
    run = build_run(ctx, request, "txt2img", None, "Automatic")
    assert "vae" not in run.iterations[0]
