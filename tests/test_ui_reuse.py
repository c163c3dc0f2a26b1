""""Reuse parameters" in the Inpaint tab (studio/ui/inpaint.py, sharing studio/ui/reuse.py with
Text to image): a result's prompt, sampling, mask and outpaint settings come back into the tab's
controls as the tab sent them, its ControlNet units into the panel; bad picks are a gr.Error."""
from __future__ import annotations

import gradio as gr
import pytest
from PIL import Image

from studio.ui import controlnet_panel, inpaint, txt2img
from studio.ui.widgets import DEFAULT_MODEL


def _editor():
    painted = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    painted.paste((255, 255, 255, 255), (16, 16, 48, 48))
    return {"background": Image.new("RGB", (64, 64), (40, 90, 200)), "layers": [painted]}


def _settings(**changes) -> dict:
    """The Inpaint tab's values by inpaint.SETTINGS name, none of them its default."""
    values = {"source_id": None, "prompt": "a yellow star", "negative": "blurry", "steps": 2,
              "cfg": 5.5, "scheduler": "Euler", "seed": 7, "strength": 0.6, "mask_blur": 2,
              "fill": "latent noise", "only_masked": True, "padding": 16, "batch_size": 1,
              "model": DEFAULT_MODEL, "sides": ["left", "up"], "pixels": 16, "clip_skip": 2}
    return dict(values, **changes)


def _generate(ctx, action: str, settings: dict):
    units = ([False] + [None] * (len(controlnet_panel.FIELDS) - 1)) * controlnet_panel.UNITS
    values = [settings[name] for name in inpaint.SETTINGS] + units
    *_, (_, status, _, _, ids) = inpaint.generate(ctx, action, _editor(), *values)
    assert "Saved 1 image(s)" in status, status
    return ids


@pytest.mark.slow
def test_inpaint_reuse_gives_back_what_the_tab_sent(studio):
    sent = _settings()
    ids = _generate(studio, "inpaint", sent)
    reused = dict(zip(inpaint.APPLIED, inpaint.reuse(studio, ids, 0)))
    # an inpaint has no sides or pixels: the tab's own stay as they are
    assert reused.pop("sides") == gr.skip() and reused.pop("pixels") == gr.skip()
    assert reused == {name: sent[name] for name in reused}
    # Text to image reads the same item through the same helper (studio/ui/reuse.py)
    again = dict(zip(txt2img.APPLIED, txt2img.apply_item(studio, ids[0])))
    assert {k: again[k] for k in ("prompt", "seed", "cfg", "clip_skip")} == \
        {k: sent[k] for k in ("prompt", "seed", "cfg", "clip_skip")}


@pytest.mark.slow
def test_outpaint_reuse_gives_back_its_sides(studio):
    sent = _settings(fill="fill", strength=0.9)
    ids = _generate(studio, "outpaint", sent)
    reused = dict(zip(inpaint.APPLIED, inpaint.reuse(studio, ids, 0)))
    # an outpaint has no "only masked" settings: the tab's own stay as they are
    assert reused.pop("only_masked") == gr.skip() and reused.pop("padding") == gr.skip()
    assert reused == {name: sent[name] for name in reused}


def test_reuse_refuses_nothing_to_pick_and_other_engines(ctx):
    with pytest.raises(gr.Error, match="Generate something first"):
        inpaint.reuse(ctx, [], None)
    text = ctx.gallery.add_image(Image.new("RGB", (8, 8)), task="style", engine="style",
                                 prompt="")
    with pytest.raises(gr.Error, match="not made by the diffusion engine"):
        inpaint.reuse(ctx, [text.id], 0)
    with pytest.raises(gr.Error, match="No gallery item #99999"):
        txt2img.apply_item(ctx, 99999)


def test_the_button_fills_the_controls_and_the_controlnet_panel(ctx):
    with gr.Blocks() as demo:
        handles = inpaint.build(ctx)
    button = handles["_panel"].extra["Reuse parameters"]
    ids = {getattr(b, "elem_id", None): i for i, b in demo.blocks.items()}
    clicks = [d for d in demo.config["dependencies"] if d["targets"][0][0] == button._id]
    outputs = [set(d["outputs"]) for d in clicks]
    assert len(clicks) == 2
    assert any({ids["inpaint-prompt"], ids["inpaint-clip-skip"]} <= o and len(o) ==
               len(inpaint.APPLIED) for o in outputs)
    assert any(ids["inpaint-cn0-control-mode"] in o for o in outputs)
