"""Offline training data for the embedded GAN styles: content photos from the scikit-image wheel
plus rendered scenes, and style domains rendered procedurally.

The two domains are unpaired: a style picture is a rendering of some other picture (another
crop, another scene, another random seed), never of the content crop the GAN sees next to it.
The GAN has to learn the mapping between the two distributions; nothing here runs at
inference time.

Photo licences (scikit-image `skimage/data/_fetchers.py` docstrings): astronaut, rocket and
hubble_deep_field are public domain (NASA / SpaceX); camera, brick, grass, gravel, chelsea and
coffee are CC0. chelsea and coffee are held out of training and used only for evaluation.
"""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

TRAIN_PHOTOS = ("astronaut.png", "rocket.jpg", "hubble_deep_field.jpg", "camera.png",
                "brick.png", "grass.png", "gravel.png")
EVAL_PHOTOS = ("chelsea.png", "coffee.png")
STYLES = ("ink", "mosaic", "pixel", "pointillism")


def skimage_data_dir() -> Path:
    """The wheel's data folder, found without importing scikit-image (slow, and not needed)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("scikit-image is not installed (pip install 'genstudio[train]')")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def load_photo(name: str, long_side: int = 320) -> Image.Image:
    image = Image.open(skimage_data_dir() / name).convert("RGB")
    image.thumbnail((long_side, long_side), Image.LANCZOS)
    return image


# ---------------------------------------------------------------- rendered content scenes
def render_scene(rng: np.random.Generator, size: int = 256) -> Image.Image:
    """A made-up photo-like scene: sky and ground gradients, shaded blobs and boxes, soft light."""
    h = w = size
    horizon = int(h * rng.uniform(0.35, 0.7))
    sky_top, sky_bottom = rng.uniform(60, 230, 3), rng.uniform(120, 255, 3)
    ground_top, ground_bottom = rng.uniform(30, 200, 3), rng.uniform(10, 150, 3)
    t = np.linspace(0, 1, h)[:, None, None]
    sky = sky_top * (1 - t) + sky_bottom * t
    ground = ground_top * (1 - t) + ground_bottom * t
    rows = np.where(np.arange(h)[:, None, None] < horizon, sky, ground)
    canvas = Image.fromarray(np.broadcast_to(rows, (h, w, 3)).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for _ in range(rng.integers(3, 9)):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        x, y = rng.integers(0, w), rng.integers(h // 5, h)
        r = int(rng.integers(size // 16, size // 4))
        if rng.random() < 0.5:
            # a shaded ball: concentric ellipses from dark rim to light centre
            for k in range(r, 0, -max(1, r // 8)):
                shade = 0.55 + 0.45 * (1 - k / r)
                draw.ellipse((x - k, y - k, x + k, y + k),
                             fill=tuple(min(255, int(c * shade + 40 * (1 - k / r))) for c in colour))
        else:
            draw.rectangle((x - r, y - r // 2, x + r, y + r), fill=colour,
                           outline=tuple(c // 2 for c in colour), width=2)
    canvas = canvas.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    noise = rng.normal(0, 5, (h, w, 3))
    return Image.fromarray(np.clip(np.asarray(canvas, np.float32) + noise, 0, 255).astype(np.uint8))


def random_crop(image: Image.Image, size: int, rng: np.random.Generator) -> Image.Image:
    w, h = image.size
    if min(w, h) < size:
        image = image.resize((max(size, w * size // min(w, h)), max(size, h * size // min(w, h))))
        w, h = image.size
    x, y = rng.integers(0, w - size + 1), rng.integers(0, h - size + 1)
    return image.crop((x, y, x + size, y + size))


# ---------------------------------------------------------------- style renderers
def _luma(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("L"), np.float32) / 255.0


def render_ink(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Pen-and-ink hatching: dark-blue ink on cream paper; more hatch directions where darker,
    plus outlines on strong edges."""
    lum = np.asarray(Image.fromarray((_luma(image) * 255).astype(np.uint8))
                     .filter(ImageFilter.GaussianBlur(1.0)), np.float32) / 255.0
    h, w = lum.shape
    y, x = np.mgrid[0:h, 0:w]
    spacing = rng.integers(4, 6)
    ink = np.zeros((h, w), bool)
    ink |= (lum < 0.72) & (((x + y) % spacing) == 0)
    ink |= (lum < 0.50) & (((x - y) % spacing) == 0)
    ink |= (lum < 0.30) & ((y % spacing) == 0)
    ink |= lum < 0.10
    gy, gx = np.gradient(lum)
    ink |= np.hypot(gx, gy) > 0.09
    paper = np.array([245, 238, 220], np.float32)
    pen = np.array([25, 30, 60], np.float32)
    out = np.where(ink[..., None], pen, paper)
    return Image.fromarray(out.astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.4))


def render_mosaic(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Square tesserae of flat colour, slightly jittered, set in light grout."""
    w, h = image.size
    cell = int(rng.integers(7, 10))
    small = np.asarray(image.resize((max(1, w // cell), max(1, h // cell)), Image.BOX), np.float32)
    grout = Image.new("RGB", (w, h), (200, 195, 185))
    draw = ImageDraw.Draw(grout)
    for j in range(small.shape[0]):
        for i in range(small.shape[1]):
            colour = np.clip(small[j, i] * 1.1 + rng.normal(0, 10, 3), 0, 255).astype(int)
            dx, dy = rng.integers(-1, 2, 2)
            x0, y0 = i * cell + 1 + dx, j * cell + 1 + dy
            draw.rectangle((x0, y0, x0 + cell - 3, y0 + cell - 3), fill=tuple(colour))
    return grout


# PICO-8's 16-colour palette: the look of many pixel-art games
_PALETTE = np.array([
    (0, 0, 0), (29, 43, 83), (126, 37, 83), (0, 135, 81), (171, 82, 54), (95, 87, 79),
    (194, 195, 199), (255, 241, 232), (255, 0, 77), (255, 163, 0), (255, 236, 39), (0, 228, 54),
    (41, 173, 255), (131, 118, 156), (255, 119, 168), (255, 204, 170)], np.float32)


def render_pixel(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Pixel art: 4x4 blocks, each snapped to the nearest of 16 palette colours."""
    w, h = image.size
    block = 4
    small = np.asarray(image.resize((w // block, h // block), Image.BOX), np.float32)
    small = np.clip((small - 128) * 1.25 + 128, 0, 255)  # games favour punchy contrast
    nearest = ((small[..., None, :] - _PALETTE) ** 2).sum(-1).argmin(-1)
    return Image.fromarray(_PALETTE[nearest].astype(np.uint8)).resize((w, h), Image.NEAREST)


def render_pointillism(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Seurat-like dots of saturated colour on a white canvas."""
    w, h = image.size
    source = np.asarray(image, np.float32)
    canvas = Image.new("RGB", (w, h), (250, 248, 240))
    draw = ImageDraw.Draw(canvas)
    n = int(w * h / 9)
    xs, ys = rng.integers(0, w, n), rng.integers(0, h, n)
    for x, y in zip(xs, ys):
        colour = source[y, x]
        mean = colour.mean()
        colour = np.clip(mean + (colour - mean) * 1.8 + rng.normal(0, 18, 3), 0, 255).astype(int)
        r = 1.6
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(colour))
    return canvas


RENDERERS = {"ink": render_ink, "mosaic": render_mosaic, "pixel": render_pixel,
             "pointillism": render_pointillism}
DESCRIPTIONS = {
    "ink": "Pen-and-ink hatching on cream paper",
    "mosaic": "Square mosaic tiles set in grout",
    "pixel": "Pixel art in a 16-colour palette",
    "pointillism": "Pointillist dots on a white canvas",
}


# ---------------------------------------------------------------- domains
def content_images(n_scenes: int = 24, seed: int = 0, long_side: int = 320) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    photos = [load_photo(name, long_side) for name in TRAIN_PHOTOS]
    return photos + [render_scene(rng, 256) for _ in range(n_scenes)]


def style_images(style: str, n: int = 48, seed: int = 1, size: int = 192) -> list[Image.Image]:
    """Renderings of random crops of the training photos and of fresh scenes (other seeds than
    the content scenes), so no content image has its own stylised twin."""
    if style not in RENDERERS:
        raise ValueError(f"unknown procedural style {style!r}; known: {', '.join(RENDERERS)}")
    rng = np.random.default_rng(seed + 1000 * STYLES.index(style))
    photos = [load_photo(name, 320) for name in TRAIN_PHOTOS]
    sources = []
    for k in range(n):
        if k % 2 == 0:
            sources.append(random_crop(photos[int(rng.integers(len(photos)))], size, rng))
        else:
            sources.append(render_scene(rng, size))
    return [RENDERERS[style](source, rng) for source in sources]


def eval_images(long_side: int = 256) -> list[Image.Image]:
    return [load_photo(name, long_side) for name in EVAL_PHOTOS]


if __name__ == "__main__":  # a contact sheet of every domain, to eyeball the renderers
    import sys

    out = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/style_data.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = [content_images(4)[:8]] + [style_images(s, 8) for s in STYLES]
    sheet = Image.new("RGB", (8 * 130, len(rows) * 130), "white")
    for r, row in enumerate(rows):
        for c, im in enumerate(row[:8]):
            sheet.paste(random_crop(im, 128, np.random.default_rng(c)), (c * 130, r * 130))
    sheet.save(out)
    print(out)
