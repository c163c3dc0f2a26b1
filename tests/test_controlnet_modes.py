"""sd-webui-controlnet's control modes (engines/diffusion/control_modes.py) on the embedded
ControlNet (assets/controlnet/sd-tiny-canny) and the embedded model: each mode gives its own
pixels, a seed reproduces them, the per-net wrapper is diffusers' guess mode where they overlap,
and the infotext names the mode as the extension does."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from engines.base import ParamError
from engines.diffusion.control_modes import (BALANCED, CONTROL, CONTROL_MODES, PROMPT,
                                             controlnet_for_modes)
from engines.diffusion.params import ControlUnit, Txt2ImgParams

EMBEDDED = "sd-tiny-canny"  # found without any folder: assets/controlnet


def shape(box=(10, 14, 44, 48)) -> Image.Image:
    image = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(image).rectangle(box, fill="black")
    return image


def run(engine, modes, seed=7, guidance=5.0):
    units = tuple(ControlUnit(model=EMBEDDED, image=shape(box), module="canny", control_mode=m)
                  for m, box in zip(modes, ((10, 14, 44, 48), (30, 4, 60, 30))))
    params = Txt2ImgParams(prompt="a red circle at the bottom right", seed=seed, steps=6,
                           guidance_scale=guidance, controlnet=units)
    return engine.generate(params)


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0], dtype=np.float32)


def test_each_mode_gives_its_own_pixels_and_a_seed_reproduces(tiny_engine):
    results = {mode: run(tiny_engine, [mode]) for mode in CONTROL_MODES}
    balanced = pixels(results[BALANCED])
    for mode in (PROMPT, CONTROL):
        assert np.abs(pixels(results[mode]) - balanced).mean() > 5, mode
    assert np.abs(pixels(results[PROMPT]) - pixels(results[CONTROL])).mean() > 5
    for mode in CONTROL_MODES:
        assert np.array_equal(pixels(run(tiny_engine, [mode])), pixels(results[mode])), mode
        assert results[mode].info["controlnet"][0]["control_mode"] == mode
    # Mixed modes in one request (the extension takes one per unit).
    mixed = run(tiny_engine, [BALANCED, CONTROL])
    assert np.array_equal(pixels(mixed), pixels(run(tiny_engine, [BALANCED, CONTROL])))
    assert np.abs(pixels(mixed) - pixels(run(tiny_engine, [BALANCED, BALANCED]))).mean() > 5


def test_without_guidance_prompt_only_is_soft_scaling_only(tiny_engine):
    """At CFG 1 there is no negative half: "ControlNet is more important" and "My prompt is
    more important" are both the soft layer scales alone, so they give the same image."""
    prompt_first = pixels(run(tiny_engine, [PROMPT], guidance=1.0))
    control_first = pixels(run(tiny_engine, [CONTROL], guidance=1.0))
    assert np.abs(prompt_first - control_first).max() <= 1


def test_wrapper_matches_diffusers_guess_mode_and_the_extension_scales(tiny_engine):
    from engines.diffusion.controlnet import cached_controlnet, resolve

    pipe = tiny_engine._pipe("txt2img")
    unet = dict(pipe.unet.config)
    net = cached_controlnet(tiny_engine, resolve(EMBEDDED, ()), torch.float32, "cpu", unet)
    torch.manual_seed(0)
    batch = 2  # [negative row, prompt row], diffusers' CFG order
    sample = torch.randn(batch, unet["in_channels"], 16, 16)
    text = torch.randn(batch, 77, unet["cross_attention_dim"])
    hint = torch.rand(batch, 3, 64, 64)
    with torch.no_grad():
        # diffusers' pipeline guess mode: the net on the prompt row, zeros for the negative row
        down, mid = net(sample[1:], 500, text[1:], hint[1:], 0.9, guess_mode=True,
                        return_dict=False)
        guess, wrapper = controlnet_for_modes([net], [CONTROL], cfg=True)
        assert guess is True and wrapper is net  # one mode everywhere: diffusers' own path
        _, wrapped = controlnet_for_modes([net], [CONTROL, BALANCED], cfg=True)
        w_down, w_mid = wrapped(sample, 500, text, [hint, hint], [0.9, 0.0], return_dict=False)
        for got, want in zip([*w_down, w_mid], [*down, mid]):
            assert got[0].abs().max() == 0  # the negative row gets nothing
            # A batch of 2 against a batch of 1: float rounding only (residuals reach ~20).
            assert torch.allclose(got[1], want[0], rtol=1e-4, atol=1e-4)
        # "My prompt is more important": both rows, each layer scaled as the extension does
        plain = net(sample, 500, text, hint, 1.0, return_dict=False)
        _, soft = controlnet_for_modes([net], [PROMPT], cfg=True)
        s_down, s_mid = soft(sample, 500, text, [hint], [1.0], return_dict=False)
    layers = [*plain[0], plain[1]]
    n = len(layers) - 1
    for i, (got, full) in enumerate(zip([*s_down, s_mid], layers)):
        assert torch.allclose(got, full * 10 ** (i / n - 1), atol=1e-5)
    # On SD 1.5's 13 residuals diffusers' scales are the extension's 0.825 ** (12 - i).
    ours = 10 ** (np.arange(13) / 12 - 1)
    theirs = 0.825 ** (12 - np.arange(13))
    assert np.abs(ours / theirs - 1).max() < 0.006


def test_unknown_mode_is_refused_naming_it():
    with pytest.raises(ParamError) as error:
        ControlUnit(model=EMBEDDED, image=shape(), control_mode="Prompt first")
    assert error.value.field == "control_mode" and "'Prompt first'" in str(error.value)
    with pytest.raises(ValueError, match="'Louder'"):
        controlnet_for_modes([object()], ["Louder"], cfg=True)
