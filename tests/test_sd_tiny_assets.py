"""The embedded tiny SD model: shipped folder, data generator, judge and CLIP scorer.

Fast: a few denoising steps at 64 px on CPU. The judge (the benchmark's instrument) ships in
assets/sd-tiny-judge/.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ["HF_HUB_OFFLINE"] = "1"  # the folder must load with no network

from pathlib import Path

import numpy as np
import pytest
import torch

from engines.training.sd_data import (
    BACKGROUNDS, COLOURS, POSITIONS, Scene, eval_scenes, held_out_triples, make_dataset, render,
)

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "assets" / "sd-tiny"
JUDGE = ROOT / "assets" / "sd-tiny-judge" / "judge.safetensors"


@pytest.fixture(scope="module")
def pipe():
    from diffusers import StableDiffusionPipeline

    p = StableDiffusionPipeline.from_pretrained(MODEL, safety_checker=None, feature_extractor=None,
                                                requires_safety_checker=False)
    p.set_progress_bar_config(disable=True)
    return p


def _gen(pipe, seed, prompt="a small red star at the top left on a blue background"):
    g = torch.Generator().manual_seed(seed)
    return pipe(prompt, num_inference_steps=4, guidance_scale=5.0, generator=g, height=64, width=64).images[0]


def test_folder_is_small_and_complete():
    size = sum(f.stat().st_size for f in MODEL.rglob("*") if f.is_file())
    assert size < 40 * 2**20, f"shipped folder is {size / 2**20:.1f} MB"
    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler", "clip_scorer"):
        assert (MODEL / sub).is_dir(), f"missing {sub}/"
    assert not list(MODEL.rglob("*.bin")), "weights must be safetensors"


def test_generates_64px_deterministically_per_seed(pipe):
    a, b, c = _gen(pipe, 1), _gen(pipe, 1), _gen(pipe, 2)
    assert a.size == (64, 64)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))


def test_img2img_and_inpaint_load_the_same_folder(pipe):
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline
    from PIL import Image

    init = render(Scene("circle", "red", "blue", "in the centre", "large"))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    common = dict(num_inference_steps=4, generator=torch.Generator().manual_seed(0))
    i2i = StableDiffusionImg2ImgPipeline(**pipe.components)
    assert i2i("a red circle", image=init, strength=0.6, **common).images[0].size == (64, 64)
    inp = StableDiffusionInpaintPipeline(**pipe.components)
    out = inp("a yellow star", image=init, mask_image=mask, height=64, width=64, **common).images[0]
    assert out.size == (64, 64)


def test_captions_match_rendered_attributes():
    fill_ratio = {"square": (0.9, 1.01), "circle": (0.7, 0.85), "triangle": (0.4, 0.6), "star": (0.25, 0.5)}
    images, scenes = make_dataset(80, seed=5, split="all")
    for img, s in zip(images, scenes):
        img = img.astype(int)
        assert np.abs(img[0, 0] - BACKGROUNDS[s.background]).max() <= 12, s
        obj = np.abs(img - img[0, 0]).sum(-1) > 60
        ys, xs = np.nonzero(obj)
        cx, cy = POSITIONS[s.position]
        assert abs(xs.mean() - cx) < 6 and abs(ys.mean() - cy) < 7, (s, xs.mean(), ys.mean())
        core = img[obj & (np.abs(img - np.median(img[obj], 0)).sum(-1) < 40)]
        assert np.abs(np.median(core, 0) - COLOURS[s.colour]).max() <= 12, s
        box = (xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1)
        lo, hi = fill_ratio[s.shape]
        assert lo <= obj.sum() / box <= hi, (s, obj.sum() / box)
        # Width over the shape's width-to-half-size ratio recovers the drawn half-size
        # (small 9.5, large 14.5, each +-10%).
        half = (xs.max() - xs.min() + 1) / {"circle": 2.0, "square": 1.76, "triangle": 2.16, "star": 2.28}[s.shape]
        assert (half < 11.75) if s.size == "small" else (half > 11.75), (s, half)


def test_training_split_never_shows_held_out_triples():
    held = held_out_triples()
    assert len(held) == 24
    _, scenes = make_dataset(400, seed=1, split="train")
    assert not {(s.shape, s.colour, s.background) for s in scenes} & held
    assert all((s.shape, s.colour, s.background) in held for s in eval_scenes(20, "held_out"))


def test_judge_structure():
    from engines.training.sd_judge import Judge, to_tensor

    images, _ = make_dataset(4, seed=0)
    out = Judge()(to_tensor(images))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "shape": (4, 4), "colour": (4, 8), "background": (4, 6), "position": (4, 5), "size": (4, 2)}


def test_judge_reads_real_images():
    from PIL import Image
    from engines.training.sd_judge import accuracy, load_judge

    images, scenes = make_dataset(64, seed=77, split="all")
    acc = accuracy(load_judge(JUDGE, train_if_missing=False), [Image.fromarray(a) for a in images], scenes)
    assert min(acc.values()) >= 0.95, acc


def test_clip_scorer_prefers_the_true_caption():
    from engines.diffusion.clip_score import ClipScorer

    scorer = ClipScorer.from_folder(MODEL)
    scenes = eval_scenes(16, "train")
    images = [render(s, np.random.default_rng(i)) for i, s in enumerate(scenes)]
    true = scorer.score(images, [s.caption() for s in scenes])
    wrong = scorer.score(images, [s.caption() for s in scenes[1:] + scenes[:1]])
    assert all(-1.0 <= v <= 1.0 for v in true)
    assert np.mean(np.array(true) > np.array(wrong)) >= 0.9
    with pytest.raises(ValueError):
        scorer.score(images[:2], ["one prompt"])
