"""A1111's "Clip skip SDXL" (sdxl_clip_l_skip) and "Use old prompt editing timelines"
(use_old_scheduling) options: on the SDXL-shaped small pipeline against the hidden states A1111
reads, as task params with their infotext, as A1111 options (/sdapi/v1/options and
override_settings), and the Inpaint tab's Clip skip slider. The old timelines' schedules are in
tests/test_prompt_editing.py."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from engines.base import ParamError

A = "a red circle on a blue background"


# ------------------------------------------------------------------ SDXL's CLIP-L
@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    """The SDXL-shaped pipeline with a 4-layer CLIP-L, so that clip skip 3 has a layer to read."""
    import torch
    from transformers import CLIPTextModel

    from small_pipelines import build_sdxl_shaped

    from engines.diffusion.engine import DiffusionEngine

    folder = build_sdxl_shaped(tmp_path_factory.mktemp("xl"))
    config = CLIPTextModel.from_pretrained(folder / "text_encoder").config
    config.num_hidden_layers = 4
    torch.manual_seed(1)
    CLIPTextModel(config).save_pretrained(folder / "text_encoder", safe_serialization=True)
    engine = DiffusionEngine(str(folder), device="cpu")
    engine.load()
    yield engine
    engine.unload()


def _image(engine, prompt=A, **extra):
    from engines.diffusion.engine import Txt2ImgParams

    result = engine.generate(Txt2ImgParams(prompt=prompt, seed=3, steps=3, guidance_scale=4.0,
                                           **extra))
    return np.asarray(result.images[0]).astype(int), result.info


def _hidden(encoder, tokenizer, text: str):
    import torch

    ids = tokenizer(text, padding="max_length", max_length=77, truncation=True,
                    return_tensors="pt").input_ids
    with torch.no_grad():
        return encoder(ids, output_hidden_states=True).hidden_states


def test_clip_l_reads_the_layer_a1111_reads(sdxl):
    """A1111 (FrozenCLIPEmbedderForSDXLWithCustomWords): with sdxl_clip_l_skip, CLIP-L's states
    are hidden_states[-CLIP_stop_at_last_layers] as they are; bigG stays on hidden_states[-2]."""
    import torch

    from engines.diffusion.extras import encode

    pipe = sdxl._pipes["txt2img"]
    clip_l = _hidden(pipe.text_encoder, pipe.tokenizer, A)
    big_g = _hidden(pipe.text_encoder_2, pipe.tokenizer_2, A)
    for layer in (1, 2, 3):
        states, pooled, _ = encode(pipe, A, [], 1, layer)
        expected = torch.cat([clip_l[-layer], big_g[-2]], dim=-1)
        assert torch.allclose(states, expected, atol=1e-5), layer
    assert torch.equal(encode(pipe, A, [])[0], encode(pipe, A, [], 1, 2)[0])  # the default


def test_clip_skip_sdxl_changes_sdxl_images(sdxl):
    plain, _ = _image(sdxl)
    off, info = _image(sdxl, clip_skip=3)  # A1111 without the option: SDXL ignores clip skip
    assert np.array_equal(off, plain) and "clip skip 3 is ignored" in info["warnings"][0]
    on, info = _image(sdxl, clip_skip=3, sdxl_clip_l_skip=True)
    assert not np.array_equal(on, plain) and not info["warnings"]
    assert info["sdxl_clip_l_layer"] == 3
    # layer 2 from the end is SDXL's own penultimate: the same image, as in A1111
    assert np.array_equal(_image(sdxl, clip_skip=2, sdxl_clip_l_skip=True)[0], plain)
    # clip skip 1 with the option: the last layer before the final norm (A1111's [-1])
    assert not np.array_equal(_image(sdxl, sdxl_clip_l_skip=True)[0], plain)
    with pytest.raises(ParamError, match="clip_skip"):  # CLIP-L here has 4 layers
        _image(sdxl, clip_skip=5, sdxl_clip_l_skip=True)


def test_clip_skip_sdxl_is_a_no_op_on_sd1(tiny_engine):
    plain, _ = _image(tiny_engine, clip_skip=2)
    same, info = _image(tiny_engine, clip_skip=2, sdxl_clip_l_skip=True)
    assert np.array_equal(same, plain) and info["clip_skip"] == 2
    assert "sdxl_clip_l_layer" not in info
    assert np.array_equal(_image(tiny_engine, sdxl_clip_l_skip=True)[0], _image(tiny_engine)[0])
    with pytest.raises(ParamError, match="sdxl_clip_l_skip"):
        _image(tiny_engine, sdxl_clip_l_skip=1)


# ------------------------------------------------------------------ task params and infotext
def test_task_params_and_the_infotext(ctx):
    from studio.gallery.pnginfo import parse_infotext
    from studio.tasks import run_task
    from studio.tasks.image import prepare

    params = {"prompt": "a [red:green:1.0] circle", "steps": 4, "seed": 2,
              "guidance_scale": 3.0, "use_old_scheduling": True}
    result = run_task(ctx, "txt2img", params)
    parsed = parse_infotext(result.info["infotexts"][0])
    assert parsed["Old prompt editing timelines"] == "True"  # A1111's key and value
    assert ctx.gallery.get(result.item_ids[0]).params["use_old_scheduling"] is True
    new = run_task(ctx, "txt2img", dict(params, use_old_scheduling=False))
    assert "Old prompt editing timelines" not in parse_infotext(new.info["infotexts"][0])
    assert not np.array_equal(np.asarray(result.images[0]), np.asarray(new.images[0]))
    # on, but the schedule is the same either way: A1111 writes nothing
    same = run_task(ctx, "txt2img", dict(params, prompt="a [red:green:2] circle"))
    assert "Old prompt editing timelines" not in parse_infotext(same.info["infotexts"][0])
    with pytest.raises(ParamError, match="use_old_scheduling") as refused:
        prepare(ctx, "txt2img", dict(params, use_old_scheduling="true"))
    assert refused.value.field == "use_old_scheduling"
    with pytest.raises(ParamError, match="sdxl_clip_l_skip"):
        prepare(ctx, "inpaint", {"prompt": "x", "sdxl_clip_l_skip": 2,
                                 "init_image": Image.new("RGB", (64, 64)),
                                 "mask": Image.new("L", (64, 64), 255)})


def test_other_families_refuse_them():
    from engines.diffusion.families import FAMILIES, check_fields

    check_fields(FAMILIES["kandinsky22"], "txt2img", {"use_old_scheduling": False,
                                                     "sdxl_clip_l_skip": False})
    with pytest.raises(ParamError, match="use_old_scheduling"):
        check_fields(FAMILIES["kandinsky22"], "txt2img", {"use_old_scheduling": True})
    check_fields(FAMILIES["sdxl"], "txt2img", {"sdxl_clip_l_skip": True,
                                               "use_old_scheduling": True})


# ------------------------------------------------------------------ A1111 options
def test_a1111_options_and_override_settings(studio):
    from wiring import api_client

    from studio.api import a1111

    body = {"prompt": "a [red:green:1.0] circle", "seed": 4, "steps": 3}
    with api_client(studio, a1111) as client:
        options = client.get("/sdapi/v1/options").json()
        assert options["use_old_scheduling"] is False and options["sdxl_clip_l_skip"] is False
        info = json.loads(client.post("/sdapi/v1/txt2img", json=body).json()["info"])
        assert "Old prompt editing timelines" not in info["infotexts"][0]
        info = json.loads(client.post("/sdapi/v1/txt2img", json=dict(
            body, override_settings={"use_old_scheduling": True})).json()["info"])
        assert "Old prompt editing timelines: True" in info["infotexts"][0]
        # the option, as A1111's settings page sets it (a checkbox: true or false only)
        assert client.post("/sdapi/v1/options", json={"use_old_scheduling": True,
                                                      "sdxl_clip_l_skip": True}).status_code == 200
        assert client.get("/sdapi/v1/options").json()["sdxl_clip_l_skip"] is True
        info = json.loads(client.post("/sdapi/v1/txt2img", json=body).json()["info"])
        assert "Old prompt editing timelines: True" in info["infotexts"][0]
        # the SD 1.x model takes sdxl_clip_l_skip and ignores it, as A1111
        assert "Clip skip" not in info["infotexts"][0]
        refused = client.post("/sdapi/v1/options", json={"use_old_scheduling": "yes"})
        assert refused.status_code == 422 and "use_old_scheduling" in refused.text
        refused = client.post("/sdapi/v1/txt2img", json=dict(
            body, override_settings={"sdxl_clip_l_skip": 1}))
        assert refused.status_code == 422 and "sdxl_clip_l_skip" in refused.text


# ------------------------------------------------------------------ the Inpaint tab
def _tab_values(clip_skip=None) -> list:
    """The Inpaint tab's values after the editor (studio/ui/inpaint.SETTINGS), then its
    ControlNet units, disabled."""
    from studio.ui import controlnet_panel
    from studio.ui.widgets import DEFAULT_MODEL

    units = ([False] + [None] * (len(controlnet_panel.FIELDS) - 1)) * controlnet_panel.UNITS
    own = [None, "a yellow star", "", 2, 7.0, "Euler", 5, 0.75, 2, "fill", False, 32, 1,
           DEFAULT_MODEL, ["right"], 32] + ([] if clip_skip is None else [clip_skip])
    return own + units


def _editor():
    painted = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    painted.paste((255, 255, 255, 255), (16, 16, 48, 48))
    return {"background": Image.new("RGB", (64, 64), (40, 90, 200)), "layers": [painted]}


def test_inpaint_tab_clip_skip(studio):
    import gradio as gr

    from studio.ui import inpaint

    with gr.Blocks() as blocks:
        inpaint.build(studio)
    slider = next(b for b in blocks.blocks.values()
                  if getattr(b, "elem_id", None) == "inpaint-clip-skip")
    assert (slider.minimum, slider.maximum, slider.value) == (1, 12, 1)
    assert inpaint.SETTINGS[-1] == "clip_skip"
    assert "clip_skip" not in inpaint._task(studio, "inpaint", _editor(), _tab_values(1))[1]
    for action in ("inpaint", "outpaint"):
        task, params = inpaint._task(studio, action, _editor(), _tab_values(2))
        assert task == action and params["clip_skip"] == 2
    updates = list(inpaint.generate(studio, "inpaint", _editor(), *_tab_values(2)))
    item = studio.gallery.get(updates[-1][4][0])
    assert item.params["clip_skip"] == 2 and item.task == "inpaint"
    with Image.open(item.file_path) as saved:  # A1111's `parameters` PNG chunk
        assert "Clip skip: 2" in saved.info["parameters"]
