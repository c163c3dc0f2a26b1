"""Attention slicing and VAE tiling (RuntimeOptions / GENSTUDIO_ATTENTION_SLICING,
GENSTUDIO_VAE_TILING) run on the CPU too: real generations on the embedded model."""
from __future__ import annotations

import numpy as np
import pytest

from engines.diffusion.engine import DiffusionEngine
from engines.diffusion.loading import RuntimeOptions
from engines.diffusion.params import Txt2ImgParams

PARAMS = Txt2ImgParams(prompt="a large green circle in the middle on a white background",
                       steps=2, seed=4, guidance_scale=2.0, width=576, height=576)


def generate(options: RuntimeOptions):
    engine = DiffusionEngine(options=options)
    engine.load()
    pipe = engine._pipes["txt2img"]
    tiled = []
    decode = pipe.vae.tiled_decode

    def spy(*args, **kwargs):  # counts, then runs the real tiled decode
        tiled.append(args[0].shape)
        return decode(*args, **kwargs)

    pipe.vae.tiled_decode = spy
    image = np.asarray(engine.generate(PARAMS).images[0]).astype(int)
    engine.unload()
    return image, pipe, tiled


@pytest.mark.slow
def test_slicing_keeps_the_image_and_tiling_decodes_in_tiles():
    plain, plain_pipe, plain_tiles = generate(RuntimeOptions())
    sliced, sliced_pipe, _ = generate(RuntimeOptions(attention_slicing=True))
    tiled, tiled_pipe, tiles = generate(RuntimeOptions(vae_tiling=True))
    assert not plain_tiles and not plain_pipe.vae.use_tiling
    # slicing splits the attention batch, the arithmetic per slice is the same
    assert any("Sliced" in type(p).__name__ for p in sliced_pipe.unet.attn_processors.values())
    assert np.abs(sliced - plain).max() <= 1
    # 576 px (tiles are at least 512 px): the decode went through tiles, blended at the seams
    assert tiled_pipe.vae.use_tiling and tiles
    assert tiled.shape == plain.shape == (576, 576, 3)
    # the same picture; tiles normalise their own statistics, so colours shift a little
    assert np.corrcoef(tiled.ravel(), plain.ravel())[0, 1] > 0.98
    assert np.abs(tiled - plain).mean() < 6  # of 255 (measured 3.4)
