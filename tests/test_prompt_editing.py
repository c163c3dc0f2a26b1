"""A1111's prompt editing `[from:to:when]`, alternating words `[a|b]`, composable `AND` and clip
skip: the schedule parser on A1111's documented examples, then their effect on real generations
(embedded model, and the SDXL-shaped small pipeline), checked against diffusers' own runs."""
from __future__ import annotations

import time

import numpy as np
import pytest

from engines.base import ParamError
from engines.diffusion.prompt_schedule import prompt_schedule, split_and, text_at


# ------------------------------------------------------------------ the schedule parser
# A1111's modules/prompt_parser.py docstring examples (10 steps), verbatim results.
@pytest.mark.parametrize("prompt, expected", [
    ("test", [[10, "test"]]),
    ("a [b:3]", [[3, "a "], [10, "a b"]]),
    ("a [b: 3]", [[3, "a "], [10, "a b"]]),
    ("a [[[b]]:2]", [[2, "a "], [10, "a [[b]]"]]),
    ("[(a:2):3]", [[3, ""], [10, "(a:2)"]]),
    ("a [b : c : 1] d", [[1, "a b  d"], [10, "a  c  d"]]),
    ("a[b:[c:d:2]:1]e", [[1, "abe"], [2, "ace"], [10, "ade"]]),
    ("a [unbalanced", [[10, "a [unbalanced"]]),
    ("a [b:.5] c", [[5, "a  c"], [10, "a b c"]]),
    ("((a][:b:c [d:3]", [[3, "((a][:b:c "], [10, "((a][:b:c d"]]),
    ("[a|(b:1.1)]", [[1, "a"], [2, "(b:1.1)"], [3, "a"], [4, "(b:1.1)"], [5, "a"],
                     [6, "(b:1.1)"], [7, "a"], [8, "(b:1.1)"], [9, "a"], [10, "(b:1.1)"]]),
    ("[fe|]male", [[1, "female"], [2, "male"], [3, "female"], [4, "male"], [5, "female"],
                   [6, "male"], [7, "female"], [8, "male"], [9, "female"], [10, "male"]]),
    ("[fe|||]male", [[1, "female"], [2, "male"], [3, "male"], [4, "male"], [5, "female"],
                     [6, "male"], [7, "male"], [8, "male"], [9, "female"], [10, "male"]]),
])
def test_a1111_documented_schedules(prompt, expected):
    assert [list(entry) for entry in prompt_schedule(prompt, 10)] == expected


def test_wiki_examples_at_20_steps():
    # A1111 wiki, Features > Prompt editing
    assert prompt_schedule("a [fantasy:cyberpunk:16] landscape", 20) == [
        (16, "a fantasy landscape"), (20, "a cyberpunk landscape")]
    assert prompt_schedule("a [fantasy:cyberpunk:0.25] landscape", 20) == [
        (5, "a fantasy landscape"), (20, "a cyberpunk landscape")]
    assert prompt_schedule("a [mountain:lake:0.25] and [an oak:a christmas tree:0.75]"
                           "[ in foreground::0.6][ in background:0.25] [shoddy:masterful:0.5]",
                           100) == [
        (25, "a mountain and an oak in foreground shoddy"),
        (50, "a lake and an oak in foreground in background shoddy"),
        (60, "a lake and an oak in foreground in background masterful"),
        (75, "a lake and an oak in background masterful"),
        (100, "a lake and a christmas tree in background masterful")]
    # the to-part may carry weights; past the last step nothing switches
    assert prompt_schedule("a [(red:1.3):[blue]:5] ball", 10) == [
        (5, "a (red:1.3) ball"), (10, "a [blue] ball")]
    assert prompt_schedule("a [red:blue:30] ball", 20) == [(20, "a red ball")]


def test_hires_pass_counts_on_from_the_first_pass():
    # A1111's doctests for a hires pass of 10 steps after a first pass of 10
    assert prompt_schedule("a [b:.5] c", 10, hires_base=10) == [(10, "a b c")]
    assert prompt_schedule("a [b:1.5] c", 10, hires_base=10) == [(5, "a  c"), (10, "a b c")]
    assert prompt_schedule("a [b:15] c", 10, hires_base=10) == [(5, "a  c"), (10, "a b c")]


# A1111's use_old_scheduling ("Use old prompt editing timelines"), from its collect_steps:
# v = v * steps if v < 1 else v; no hires offsets, the first pass's steps; then min(steps, int(v)).
@pytest.mark.parametrize("prompt, new, old", [
    ("a [b:c:1.0] d", [(10, "a b d")], [(1, "a b d"), (10, "a c d")]),  # 1.0: all vs step 1
    ("a [b:c:2.5] d", [(10, "a b d")], [(2, "a b d"), (10, "a c d")]),  # 25 -> 10 vs int(2.5)
    ("a [b:c:0.5] d", [(5, "a b d"), (10, "a c d")], [(5, "a b d"), (10, "a c d")]),
    ("a [b:c:.25] d", [(2, "a b d"), (10, "a c d")], [(2, "a b d"), (10, "a c d")]),
    ("a [b:c:3] d", [(3, "a b d"), (10, "a c d")], [(3, "a b d"), (10, "a c d")]),
    ("a [b:c:0] d", [(10, "a c d")], [(10, "a c d")]),
    ("a [b:c:30] d", [(10, "a b d")], [(10, "a b d")]),
    ("a [b:[c:d:0.2]:1.0]e", [(2, "a be"), (10, "a be")],  # new: the inner edit never shows
     [(1, "a be"), (2, "a ce"), (10, "a de")]),
])
def test_old_prompt_editing_timelines(prompt, new, old):
    assert prompt_schedule(prompt, 10) == new
    assert prompt_schedule(prompt, 10, old=True) == old


def test_old_timelines_in_a_hires_pass_read_the_first_pass_steps():
    # first pass 10 steps, second pass 10: the new clock counts on (1.5 = half the second
    # pass, 15 = its step 5); the old one reads every `when` on the first pass's 10, from 0
    assert prompt_schedule("a [b:.5] c", 10, hires_base=10, old=True) == [
        (5, "a  c"), (10, "a b c")]
    assert prompt_schedule("a [b:1.5] c", 10, hires_base=10, old=True) == [
        (1, "a  c"), (10, "a b c")]
    assert prompt_schedule("a [b:15] c", 10, hires_base=10, old=True) == [(10, "a  c")]
    # a 20-step first pass, a 5-step second: the schedule ends at 20, every step reads entry 0
    schedule = prompt_schedule("a [b:c:0.5]", 5, hires_base=20, old=True)
    assert schedule == [(10, "a b"), (20, "a c")]
    assert [text_at(schedule, s) for s in range(5)] == [0] * 5
    assert prompt_schedule("a [b|c", 5, hires_base=20, old=True) == [(20, "a [b|c")]  # no parse


def test_old_timelines_are_recorded_only_when_they_change_something():
    from engines.diffusion.prompt_schedule import old_timelines_differ

    # A1111 writes "Old prompt editing timelines: True" only when the schedules differ
    assert old_timelines_differ(["a [b:c:1.0] d", ""], 10)
    assert old_timelines_differ(["x", "[ugly:2.0]"], 10)  # the negative prompt counts too
    assert not old_timelines_differ(["a [b:c:0.5] d", "a [b|c]", "plain"], 10)
    assert old_timelines_differ(["a [b:c:0.5] d"], 10, hires_base=10)


def test_steps_use_the_entry_a1111s_denoiser_picks():
    schedule = prompt_schedule("a [fantasy:cyberpunk:16] landscape", 20)
    # 0-based steps 0..16 (17 steps, as A1111 counts) read the first prompt, 17..19 the second
    assert [text_at(schedule, s) for s in range(20)] == [0] * 17 + [1] * 3
    alternate = prompt_schedule("[cat|dog]", 4)
    assert [alternate[text_at(alternate, s)][1] for s in range(4)] == ["cat", "cat", "dog", "cat"]


def test_and_weights_and_what_is_left_alone():
    assert split_and("a cat AND a dog :0.7") == [("a cat", 1.0), (" a dog", 0.7)]
    assert split_and("a cat:1.5 AND a dog") == [("a cat", 1.5), (" a dog", 1.0)]
    assert split_and("a (cat:1.2), ANDROID") == [("a (cat:1.2), ANDROID", 1.0)]
    assert prompt_schedule("a | b [c:3]", 10) == [(10, "a | b [c:3]")]  # A1111: no parse
    start = time.perf_counter()
    hostile = "([" * 2000 + "[a:" * 1000
    assert prompt_schedule(hostile, 150) == [(150, hostile)]  # too deep: read as plain text
    assert split_and("a" + " " * 3998 + "b :2") == [("a" + " " * 3998 + "b", 2.0)]
    assert time.perf_counter() - start < 1
    from engines.diffusion.params import Txt2ImgParams

    Txt2ImgParams(prompt=" AND ".join(["a"] * 8))
    with pytest.raises(ParamError, match="at most 8"):  # each part is one more UNet row
        Txt2ImgParams(prompt=" AND ".join(["a"] * 9))


# ------------------------------------------------------------------ generations
@pytest.fixture(scope="module")
def engine(tiny_engine):  # tests/wiring.py
    return tiny_engine


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    from small_pipelines import build_sdxl_shaped

    from engines.diffusion.engine import DiffusionEngine

    engine = DiffusionEngine(str(build_sdxl_shaped(tmp_path_factory.mktemp("xl"))), device="cpu")
    engine.load()
    yield engine
    engine.unload()


def _image(engine, prompt, negative="", guidance=4.0, **extra):
    from engines.diffusion.engine import Txt2ImgParams

    result = engine.generate(Txt2ImgParams(prompt=prompt, negative_prompt=negative, seed=3,
                                           steps=4, guidance_scale=guidance, **extra))
    return np.asarray(result.images[0]).astype(int), result.info


A, B = "a red circle on a blue background", "a green star on a yellow background"


def _diffusers_swap(engine, first: str, second: str, after_step: int, negative: str = ""):
    """diffusers' own run that switches from `first` to `second` after 0-based step
    `after_step`, with the studio's encodings: the reference for prompt editing."""
    import torch

    from engines.diffusion.extras import encode_pair
    from engines.diffusion.loading import make_scheduler

    pipe = engine._pipes["txt2img"]
    pipe.scheduler = make_scheduler(engine._scheduler_config, "DPM++ 2M")
    one, two = encode_pair(pipe, first, negative, []), encode_pair(pipe, second, negative, [])

    def swap(_pipe, i, _t, tensors):
        if i == after_step:
            return {"prompt_embeds": torch.cat([two.negative_embeds, two.prompt_embeds])}
        return {}

    with torch.inference_mode():
        image = pipe(prompt_embeds=one.prompt_embeds, negative_prompt_embeds=one.negative_embeds,
                     num_inference_steps=4, guidance_scale=4.0,
                     generator=[torch.Generator().manual_seed(3)], callback_on_step_end=swap,
                     callback_on_step_end_tensor_inputs=["prompt_embeds"]).images[0]
    return np.asarray(image).astype(int)


def test_prompt_editing_swaps_at_a1111s_step(engine):
    first, _ = _image(engine, A)
    second, _ = _image(engine, B)
    edited, info = _image(engine, "[a red circle on a blue background:"
                                  "a green star on a yellow background:1]")
    assert not np.array_equal(edited, first) and not np.array_equal(edited, second)
    # A1111 reads `1` as "up to and including 0-based step 1", then the second prompt
    assert np.array_equal(edited, _diffusers_swap(engine, A, B, after_step=1))
    assert not info["warnings"]
    # when past the last step: exactly the first prompt; 0: exactly the second
    assert np.array_equal(_image(engine, f"[{A}:{B}:30]")[0], first)
    assert np.array_equal(_image(engine, f"[{A}:{B}:0]")[0], second)
    # to-only and from-only forms, in the negative prompt too
    assert not np.array_equal(_image(engine, "a red circle [on a blue background:2]")[0], first)
    assert not np.array_equal(_image(engine, A, negative="[green::2]")[0],
                              _image(engine, A, negative="green")[0])


def test_alternating_words_change_every_step(engine):
    red, _ = _image(engine, "a red circle")
    green, _ = _image(engine, "a green circle")
    both, _ = _image(engine, "a [red|green] circle")
    assert not np.array_equal(both, red) and not np.array_equal(both, green)


def test_hires_second_pass_is_already_switched(engine):
    from PIL import Image

    from engines.diffusion.engine import Img2ImgParams

    init = Image.new("RGB", (64, 64), (200, 30, 30))

    def second_pass(prompt, base):
        return np.asarray(engine.generate(Img2ImgParams(
            prompt=prompt, seed=1, steps=8, init_image=init, strength=0.5,
            hires_base_steps=base)).images[0]).astype(int)

    edited = f"[{A}:{B}:0.5]"  # switched halfway through the first pass
    assert np.array_equal(second_pass(edited, 4), second_pass(B, 4))
    assert not np.array_equal(second_pass(edited, 0), second_pass(B, 0))  # plain img2img


def test_old_timelines_in_generations(engine):
    from PIL import Image

    from engines.diffusion.engine import Img2ImgParams

    # `1.0`: the new timelines read it as the whole run (never switches), the old as step 1
    first, _ = _image(engine, A)
    new, info = _image(engine, f"[{A}:{B}:1.0]")
    assert np.array_equal(new, first) and "old_prompt_editing" not in info
    old, info = _image(engine, f"[{A}:{B}:1.0]", use_old_scheduling=True)
    assert np.array_equal(old, _diffusers_swap(engine, A, B, after_step=1))
    assert info["old_prompt_editing"] is True
    same, info = _image(engine, f"[{A}:{B}:2]", use_old_scheduling=True)  # nothing changes
    assert np.array_equal(same, _image(engine, f"[{A}:{B}:2]")[0])
    assert "old_prompt_editing" not in info
    with pytest.raises(ParamError, match="use_old_scheduling"):
        _image(engine, A, use_old_scheduling="yes")

    init = Image.new("RGB", (64, 64), (200, 30, 30))

    def second_pass(prompt, old=False):  # a hires second pass of 4 steps after 4
        return np.asarray(engine.generate(Img2ImgParams(
            prompt=prompt, seed=1, steps=8, init_image=init, strength=0.5, hires_base_steps=4,
            use_old_scheduling=old)).images[0]).astype(int)

    # `5` on the old clock: step 5 of the first pass's 4, so the second pass never switches
    assert np.array_equal(second_pass(f"[{A}:{B}:5]", old=True), second_pass(A))
    assert not np.array_equal(second_pass(f"[{A}:{B}:5]"), second_pass(A))  # new: its step 1
    # `0.5` on the old clock: step 2 of 4, read again in the second pass (not already switched)
    assert not np.array_equal(second_pass(f"[{A}:{B}:0.5]", old=True), second_pass(B))


def test_and_combines_as_a1111(engine):
    plain, _ = _image(engine, A)
    assert np.array_equal(_image(engine, A + " :1")[0], plain)  # one part at weight 1: plain
    # uncond + s * sum(w_i (cond_i - uncond)): A AND A at scale 2 is A at scale 4
    doubled, _ = _image(engine, f"{A} AND {A}", guidance=2.0)
    assert np.abs(doubled - plain).max() <= 2
    halved, _ = _image(engine, f"{A} :0.5", guidance=8.0)
    assert np.abs(halved - plain).max() <= 2
    mixed, _ = _image(engine, f"{A} AND {B} :0.7")
    assert np.abs(mixed - plain).max() > 10
    # parts and schedule entries of different chunk counts (padded per step, as A1111)
    long = ", ".join([A] * 8)  # several of the embedded model's 30-token chunks
    assert np.abs(_image(engine, f"{long} AND {B} :0.5")[0] - plain).max() > 10
    assert np.abs(_image(engine, f"[{long}:{B}:1]", negative=long)[0] - plain).max() > 10
    # with editing inside a part, and the UNet left as it was afterwards
    _image(engine, f"{A} AND [a green star:a yellow star:2]")
    assert "forward" not in engine._pipes["txt2img"].unet.__dict__
    assert np.array_equal(_image(engine, A)[0], plain)


def test_clip_skip_is_diffusers_clip_skip_minus_one(engine):
    import torch

    from engines.diffusion.loading import make_scheduler

    plain, _ = _image(engine, A)
    skipped, info = _image(engine, A, clip_skip=2)
    assert info["clip_skip"] == 2 and not np.array_equal(plain, skipped)
    pipe = engine._pipes["txt2img"]
    encoder = pipe.text_encoder

    def diffusers_clip_skip_1(text):
        # diffusers' encode_prompt with clip_skip=1 (its own call reaches for
        # `text_encoder.text_model`, which transformers 5 no longer has)
        ids = pipe.tokenizer(text, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        with torch.no_grad():
            hidden = encoder(ids, output_hidden_states=True).hidden_states[-2]
            return encoder.final_layer_norm(hidden)

    pipe.scheduler = make_scheduler(engine._scheduler_config, "DPM++ 2M")
    theirs = pipe(prompt_embeds=diffusers_clip_skip_1(A),
                  negative_prompt_embeds=diffusers_clip_skip_1(""), num_inference_steps=4,
                  guidance_scale=4.0, generator=[torch.Generator().manual_seed(3)]).images[0]
    assert np.array_equal(skipped, np.asarray(theirs).astype(int))  # A1111 2 == diffusers 1
    layers = pipe.text_encoder.config.num_hidden_layers
    with pytest.raises(ParamError, match="clip_skip"):
        _image(engine, A, clip_skip=layers + 1)
    with pytest.raises(ParamError, match="clip_skip"):
        _image(engine, A, clip_skip=0)


def test_img2img_with_editing(engine):
    from PIL import Image

    from engines.diffusion.engine import Img2ImgParams

    init = Image.new("RGB", (64, 64), (200, 30, 30))
    result = engine.generate(Img2ImgParams(prompt=f"[{A}:{B}:2] AND a star :0.5", seed=1,
                                           steps=6, init_image=init, strength=0.6))
    assert result.images[0].size == (64, 64)


def test_sdxl_editing_and_and_clip_skip(sdxl):
    plain, _ = _image(sdxl, A)
    edited, _ = _image(sdxl, f"[{A}:{B}:1]")
    assert not np.array_equal(edited, plain) and not np.array_equal(edited, _image(sdxl, B)[0])
    assert np.array_equal(_image(sdxl, f"[{A}:{B}:30]")[0], plain)
    doubled, _ = _image(sdxl, f"{A} AND {A}", guidance=2.0)
    assert np.abs(doubled - plain).max() <= 2
    assert np.abs(_image(sdxl, f"{A} AND {B} :0.7")[0] - plain).max() > 0
    # A1111 leaves SDXL's text encoders alone whatever "Clip skip" says; so do we, and say so
    skipped, info = _image(sdxl, A, clip_skip=2)
    assert np.array_equal(skipped, plain) and "clip skip 2 is ignored" in info["warnings"][0]


def test_clip_skip_in_the_infotext(ctx):
    from studio.gallery.pnginfo import parse_infotext
    from studio.tasks import run_task

    params = {"prompt": "a [red:green:2] circle AND a star :0.5", "steps": 4, "seed": 2,
              "guidance_scale": 3.0, "clip_skip": 2}
    result = run_task(ctx, "txt2img", params)
    parsed = parse_infotext(result.info["infotexts"][0])
    assert parsed["Clip skip"] == "2" and parsed["Prompt"] == params["prompt"]
    plain = run_task(ctx, "txt2img", dict(params, clip_skip=1))
    assert "Clip skip" not in parse_infotext(plain.info["infotexts"][0])
    assert not np.array_equal(np.asarray(result.images[0]), np.asarray(plain.images[0]))


@pytest.fixture
def a1111(tmp_path):
    """The A1111 router over the app's own wiring (queue, runner, worker)."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from studio.api.a1111 import router
    from studio.app import build_context
    from studio.config import StudioConfig

    ctx = build_context(StudioConfig(data_dir=tmp_path / "data", device="cpu", offline=True))
    ctx.queue.start_worker()
    app = FastAPI()
    app.include_router(router(ctx))
    try:
        with TestClient(app) as client:
            yield client
    finally:
        ctx.queue.stop(10)
        ctx.engines.unload()


def test_a1111_clip_skip_option_and_override(a1111):
    import json

    body = {"prompt": "a [red|green] circle AND a star :0.5", "seed": 4, "steps": 3}
    info = json.loads(a1111.post("/sdapi/v1/txt2img", json=dict(
        body, override_settings={"CLIP_stop_at_last_layers": 2})).json()["info"])
    assert info["clip_skip"] == 2 and "Clip skip: 2" in info["infotexts"][0]
    # the option, as A1111's settings page sets it; checked like A1111's slider
    assert a1111.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 3}).status_code == 200
    info = json.loads(a1111.post("/sdapi/v1/txt2img", json=body).json()["info"])
    assert info["clip_skip"] == 3 and "Clip skip: 3" in info["infotexts"][0]
    refused = a1111.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 40})
    assert refused.status_code == 422 and "CLIP_stop_at_last_layers" in refused.text
    refused = a1111.post("/sdapi/v1/txt2img", json=dict(
        body, override_settings={"CLIP_stop_at_last_layers": 0}))
    assert refused.status_code == 422 and "CLIP_stop_at_last_layers" in refused.text


def test_and_and_editing_with_controlnet(engine, tmp_path):
    """ControlNet pipelines pass their residuals per row: AND lays them out for every part."""
    from diffusers import UNet2DConditionModel
    from PIL import Image, ImageDraw

    from controlnet_files import controlnet_from_unet
    from engines.diffusion.params import ControlUnit

    unet = engine._pipes["txt2img"].unet
    scale = 2 ** (len(unet.config.block_out_channels) - 1)
    channels = (16, 32, 96, 256)[:int(np.log2(scale)) + 1]
    folder = tmp_path / "ControlNet"
    copy = UNet2DConditionModel.from_config(unet.config)
    copy.load_state_dict(unet.state_dict())
    controlnet_from_unet(copy, conditioning_embedding_out_channels=channels).save_pretrained(
        folder / "tiny-canny")
    hint = Image.new("RGB", (64, 64))
    ImageDraw.Draw(hint).rectangle((12, 12, 40, 40), outline="white", width=2)
    control = dict(controlnet=(ControlUnit(model="tiny-canny", image=hint, module="canny"),),
                   controlnet_dirs=(str(folder),))
    plain, _ = _image(engine, A, **control)
    doubled, _ = _image(engine, f"{A} AND {A}", guidance=2.0, **control)
    assert np.abs(doubled - plain).max() <= 2
    edited, _ = _image(engine, f"[{A}:{B}:1] AND a star :0.5", **control)
    assert np.abs(edited - plain).max() > 10
