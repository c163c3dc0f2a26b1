"""The diffusion engine on the embedded model (a random tiny SD folder until it exists)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from engines.base import CancelToken, Cancelled, EngineError
from engines.diffusion.engine import (DiffusionEngine, Img2ImgParams, InpaintParams, OutpaintParams,
                               Txt2ImgParams)
from engines.diffusion.masks import binary_mask


@pytest.fixture(scope="module")
def model_id(tmp_path_factory):
    from engines.diffusion.random_weights import embedded_or_random

    return embedded_or_random(tmp_path_factory.mktemp("diffusion-model"))


@pytest.fixture(scope="module")
def engine(model_id):
    engine = DiffusionEngine(model_id=model_id, device="cpu")
    engine.load()
    yield engine
    engine.unload()


@pytest.fixture(scope="module")
def picture(engine):
    return engine.generate(Txt2ImgParams(prompt="a red circle on a blue background", seed=7,
                                         steps=4)).images[0]


def square_mask(size, box):
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    return mask


def test_same_seed_same_pixels(engine):
    params = Txt2ImgParams(prompt="a green square", negative_prompt="blurry", seed=123, steps=4,
                           batch_size=2, scheduler="Euler a")
    first, second = engine.generate(params), engine.generate(params)
    assert first.seeds == second.seeds == [123, 124]
    for a, b in zip(first.images, second.images):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    other = engine.generate(Txt2ImgParams(prompt="a green square", negative_prompt="blurry",
                                          seed=999, steps=4, scheduler="Euler a"))
    assert not np.array_equal(np.asarray(first.images[0]), np.asarray(other.images[0]))


def test_batch_count_and_size_give_seed_plus_i(engine):
    result = engine.generate(Txt2ImgParams(prompt="x", seed=10, steps=2, batch_size=2,
                                           batch_count=2))
    assert result.seeds == [10, 11, 12, 13]
    assert len(result.images) == 4


@pytest.mark.parametrize("name", DiffusionEngine.SCHEDULERS)
def test_every_scheduler_runs(engine, name):
    result = engine.generate(Txt2ImgParams(prompt="a star", seed=1, steps=3, scheduler=name))
    assert result.images[0].size == engine.native_size


@pytest.mark.parametrize("fill", ["original", "fill", "latent noise", "latent nothing"])
@pytest.mark.parametrize("only_masked", [False, True])
def test_inpaint_leaves_unmasked_pixels_identical(engine, picture, fill, only_masked):
    mask = square_mask(picture.size, (20, 12, 44, 40))
    result = engine.generate(InpaintParams(
        prompt="a yellow star", seed=3, steps=4, init_image=picture, mask=mask, mask_blur=4,
        inpainting_fill=fill, inpaint_full_res=only_masked, inpaint_full_res_padding=8))
    out, before, painted = np.asarray(result.images[0]), np.asarray(picture), binary_mask(mask)
    assert result.images[0].size == picture.size
    assert np.array_equal(out[~painted], before[~painted])
    assert not np.array_equal(out[painted], before[painted])


def test_inpaint_image_not_multiple_of_8(engine, picture):
    odd = picture.resize((70, 61))
    mask = square_mask(odd.size, (10, 10, 30, 30))
    out = engine.generate(InpaintParams(prompt="x", seed=1, steps=2, init_image=odd, mask=mask))
    painted = binary_mask(mask)
    assert out.images[0].size == (70, 61)
    assert np.array_equal(np.asarray(out.images[0])[~painted], np.asarray(odd)[~painted])


def test_outpaint_returns_enlarged_image_with_original_inside(engine, picture):
    result = engine.generate(OutpaintParams(prompt="a wide landscape", seed=2, steps=4,
                                            init_image=picture, sides=("left", "down"), pixels=16))
    out = result.images[0]
    assert out.size == (picture.width + 16, picture.height + 16)
    assert np.array_equal(np.asarray(out)[0:picture.height, 16:16 + picture.width],
                          np.asarray(picture))


def test_img2img_keeps_size_and_depends_on_strength(engine, picture):
    low = engine.generate(Img2ImgParams(prompt="x", seed=4, steps=10, init_image=picture,
                                        strength=0.2))
    high = engine.generate(Img2ImgParams(prompt="x", seed=4, steps=10, init_image=picture,
                                         strength=0.9))
    assert low.images[0].size == picture.size
    assert low.info["total_steps"] == 2 and high.info["total_steps"] == 9
    before = np.asarray(picture).astype(int)
    assert (np.abs(np.asarray(low.images[0]) - before).mean()
            < np.abs(np.asarray(high.images[0]) - before).mean())


def test_cancel_stops_within_one_step(engine):
    cancel, steps = CancelToken(), []

    def on_progress(progress):
        steps.append(progress.step)
        if progress.step == 2:
            cancel.cancel()

    with pytest.raises(Cancelled):
        engine.generate(Txt2ImgParams(prompt="x", seed=1, steps=20, batch_count=3),
                        on_progress, cancel)
    assert steps == [1, 2]


def test_previews_arrive_every_few_steps(engine):
    previews = []
    engine.generate(Txt2ImgParams(prompt="x", seed=1, steps=6, preview_every=2),
                    lambda p: previews.append((p.step, p.preview)))
    shown = [step for step, image in previews if image is not None]
    assert shown == [2, 4]
    assert all(isinstance(image, Image.Image) for _, image in previews if image is not None)


@pytest.mark.parametrize("kwargs, word", [
    ({"width": 0}, "width"), ({"width": 7}, "width"), ({"height": 100000}, "height"),
    ({"width": 100}, "multiple of 8"), ({"scheduler": "Heun++"}, "Heun++"),
    ({"prompt": "word " * 2000}, "prompt"), ({"steps": 0}, "steps"), ({"seed": -5}, "seed"),
    ({"guidance_scale": "high"}, "guidance_scale"), ({"candidates": 2, "keep": 3}, "keep"),
    ({"batch_size": 16, "batch_count": 16}, "batch_count"),
])
def test_bad_params_name_the_value(kwargs, word):
    with pytest.raises(ValueError, match=word):
        Txt2ImgParams(**{"prompt": "x", **kwargs})


def test_bad_image_params(picture):
    with pytest.raises(ValueError, match="mask"):
        InpaintParams(prompt="x", init_image=picture, mask=Image.new("L", (32, 32)))
    with pytest.raises(ValueError, match="init_image"):
        Img2ImgParams(prompt="x", init_image="not an image")
    with pytest.raises(ValueError, match="strength"):
        Img2ImgParams(prompt="x", init_image=picture, strength=1.5)
    with pytest.raises(ValueError, match="no denoising step"):
        Img2ImgParams(prompt="x", init_image=picture, steps=2, strength=0.2)
    with pytest.raises(ValueError, match="sides"):
        OutpaintParams(prompt="x", init_image=picture, sides=("north",))
    with pytest.raises(ValueError, match="inpainting_fill"):
        InpaintParams(prompt="x", init_image=picture, mask=Image.new("L", picture.size),
                      inpainting_fill="sky")


def test_empty_mask_is_an_error(engine, picture):
    with pytest.raises(ValueError, match="empty"):
        engine.generate(InpaintParams(prompt="x", init_image=picture,
                                      mask=Image.new("L", picture.size, 0)))


@pytest.mark.parametrize("name", ["model.ckpt", "model.pt", "weights.bin"])
def test_pickled_checkpoints_are_refused(tmp_path, name):
    (tmp_path / name).write_bytes(b"\x80\x04not really a pickle")
    engine = DiffusionEngine(model_id=str(tmp_path / name), device="cpu")
    with pytest.raises(EngineError, match="pickle"):
        engine.load()
    assert not engine.loaded


def test_unknown_model_is_a_clear_error(tmp_path):
    with pytest.raises(EngineError, match="not a diffusers model"):
        DiffusionEngine(model_id=str(tmp_path), device="cpu").load()


def test_long_prompt_within_limit_is_chunked_not_truncated(engine):
    """A1111's way (docs/diffusion.md): every token is read, in chunks of the text window."""
    result = engine.generate(Txt2ImgParams(prompt="red " * 300, seed=1, steps=1))
    assert result.info["prompt_tokens"] >= 300 and not result.info["warnings"]


def test_best_of_n_keeps_the_best_by_clip_score(engine):
    params = Txt2ImgParams(prompt="a red circle", seed=5, steps=3, candidates=4, keep=2)
    if not (engine.source.kind == "folder"
            and (__import__("pathlib").Path(engine.source.location) / "clip_scorer").is_dir()):
        with pytest.raises(EngineError, match="CLIP scorer"):
            engine.generate(params)
        return
    result = engine.generate(params)
    assert len(result.images) == 2 and result.scores == sorted(result.scores, reverse=True)
    assert max(result.info["candidate_scores"]) == pytest.approx(result.scores[0], abs=1e-4)
    assert set(result.seeds) <= {5, 6, 7, 8}


def test_runtime_options_from_environment(monkeypatch):
    from engines.diffusion.loading import RuntimeOptions

    monkeypatch.setenv("GENSTUDIO_FP16", "0")
    monkeypatch.setenv("GENSTUDIO_VAE_TILING", "1")
    options = DiffusionEngine(model_id="genstudio-tiny-sd", device="cuda").options
    assert options == RuntimeOptions(half_precision=False, vae_tiling=True)


def small_attention_unet():
    """A seeded two-level UNet with self-attention at full resolution (the embedded one has
    none there), for the speed options' tests."""
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(sample_size=16, block_out_channels=(32, 64), layers_per_block=1,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                                cross_attention_dim=32, attention_head_dim=4,
                                norm_num_groups=8).eval()


def test_token_merging_roundtrip_and_effect():
    import torch

    from engines.diffusion.speed import bipartite_merge, set_token_merging

    x = torch.randn(2, 16 * 16, 8)
    merge, unmerge = bipartite_merge(x, 16, 16, 0.5)
    merged = merge(x)
    assert merged.shape == (2, 16 * 16 - 128, 8)
    restored = unmerge(merged)
    assert restored.shape == x.shape
    assert torch.allclose(merge(restored), merged, atol=1e-6)  # every token back where it was
    unet = small_attention_unet()
    sample, text = torch.randn(2, 4, 16, 16), torch.randn(2, 7, 32)
    with torch.inference_mode():
        exact = unet(sample, 10, encoder_hidden_states=text).sample
        set_token_merging(unet, 0.5)
        merged_a = unet(sample, 10, encoder_hidden_states=text).sample
        merged_b = unet(sample, 10, encoder_hidden_states=text).sample
        set_token_merging(unet, 0.0)
        back = unet(sample, 10, encoder_hidden_states=text).sample
    assert torch.equal(merged_a, merged_b) and torch.equal(back, exact)
    assert not torch.allclose(merged_a, exact)
    assert (merged_a - exact).norm() / exact.norm() < 0.5


def test_step_cache_reuses_deep_features_and_switches_off_exactly(engine):
    import time

    def run(step_cache):
        started = time.perf_counter()
        result = engine.generate(Txt2ImgParams(prompt="a large red star at the top left on a blue "
                                               "background", seed=3, steps=12, guidance_scale=2.0,
                                               step_cache=step_cache, preview_every=0))
        return np.asarray(result.images[0]).astype(np.int16), time.perf_counter() - started

    exact, _ = run(0)
    cached, _ = run(3)
    cached_again, _ = run(3)
    exact_again, _ = run(0)
    assert np.array_equal(cached, cached_again)  # a seed still reproduces
    assert np.array_equal(exact, exact_again)  # off is exact again after it was on
    assert not np.array_equal(exact, cached)  # deep blocks really were skipped on some steps
    assert np.abs(exact - cached).mean() < 8  # ...and the picture stays close (0..255 scale)
    with pytest.raises(ValueError, match="step_cache"):
        Txt2ImgParams(prompt="x", step_cache=9)


def test_step_cache_skips_the_deep_blocks_between_full_calls():
    import torch

    from engines.diffusion.speed import set_step_cache

    unet = small_attention_unet()
    sample, text = torch.randn(2, 4, 16, 16), torch.randn(2, 7, 32)
    set_step_cache(unet, 2)
    with torch.inference_mode():
        outs = [unet(sample + i, 10 - i, encoder_hidden_states=text).sample for i in range(4)]
    assert unet._genstudio_step_cache.calls == 4
    set_step_cache(unet, 0)
    with torch.inference_mode():
        exact = [unet(sample + i, 10 - i, encoder_hidden_states=text).sample for i in range(4)]
    assert torch.equal(outs[0], exact[0]) and torch.equal(outs[2], exact[2])  # full calls
    assert not torch.equal(outs[1], exact[1])  # a cached call reused the deep features


def test_single_file_that_cannot_load_is_an_engine_error(tmp_path):
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "not-a-model.safetensors"
    save_file({"weight": torch.zeros(2, 2)}, str(path))
    engine = DiffusionEngine(model_id=str(path), device="cpu")
    with pytest.raises(EngineError, match="not-a-model.safetensors is not a Stable Diffusion checkpoint"):
        engine.load()
    assert not engine.loaded


@pytest.mark.parametrize("name", DiffusionEngine.SCHEDULERS)
def test_schedulers_keep_the_checkpoint_training_settings(engine, name):
    from engines.diffusion.loading import make_scheduler

    base = engine._scheduler_config
    scheduler = make_scheduler(base, name)
    for key in ("prediction_type", "beta_schedule", "num_train_timesteps"):
        if key in base:
            assert scheduler.config[key] == base[key]


def test_generate_loads_lazily_with_an_explicit_size(model_id, engine):
    # No load() first: generate loads the model itself, as every engine does.
    fresh = DiffusionEngine(model_id=model_id, device="cpu")
    try:
        params = Txt2ImgParams(prompt="a red circle", seed=3, steps=2, width=64, height=64)
        image = fresh.generate(params).images[0]
        assert image.size == (64, 64)
        assert np.array_equal(np.asarray(image), np.asarray(engine.generate(params).images[0]))
    finally:
        fresh.unload()
