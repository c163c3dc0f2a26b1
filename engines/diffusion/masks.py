"""Masks for inpainting and outpainting, in numpy and PIL only (no torch).

The rule that matters: the final image is `original * (1 - alpha) + generated * alpha` where
alpha is 0 on every pixel the user did not paint, so unmasked pixels come back bit for bit. The
mask blur therefore feathers *inwards*: the soft edge lies inside the painted area.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from engines.diffusion.params import MIN_SIDE


def binary_mask(mask: Image.Image) -> np.ndarray:
    """Any mask image -> bool array, True where the user painted (white, or opaque in an alpha
    layer)."""
    if mask.mode in ("RGBA", "LA"):
        return np.asarray(mask.getchannel("A")) > 127
    return np.asarray(mask.convert("L")) > 127


def feathered_alpha(painted: np.ndarray, blur: int) -> np.ndarray:
    """float32 alpha in [0, 1]: 0 outside the painted area, ramping to 1 over ~`blur` pixels
    inside it."""
    alpha = painted.astype(np.float32)
    if blur <= 0:
        return alpha
    soft = Image.fromarray((alpha * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(blur))
    inside = np.clip((np.asarray(soft, dtype=np.float32) / 255 - 0.5) * 2, 0, 1)
    return np.where(painted, inside, 0).astype(np.float32)


def composite(original: Image.Image, generated: Image.Image, alpha: np.ndarray) -> Image.Image:
    """Blend by alpha; where alpha is 0 the original's bytes are copied, not recomputed."""
    a = np.asarray(original.convert("RGB"))
    b = np.asarray(generated.convert("RGB").resize(original.size, Image.LANCZOS))
    blended = np.clip(a * (1 - alpha[..., None]) + b * alpha[..., None] + 0.5, 0, 255)
    out = np.where(alpha[..., None] > 0, blended.astype(np.uint8), a)
    return Image.fromarray(out)


def _box_blur(x: np.ndarray, r: int) -> np.ndarray:
    """Separable box blur of radius r over the first two axes, via cumulative sums."""
    for axis in (0, 1):
        n = x.shape[axis]
        pad = [(0, 0)] * x.ndim
        pad[axis] = (r + 1, r)
        c = np.cumsum(np.pad(x, pad, mode="edge"), axis=axis, dtype=np.float64)
        hi = np.take(c, np.arange(2 * r + 1, 2 * r + 1 + n), axis=axis)
        lo = np.take(c, np.arange(0, n), axis=axis)
        x = (hi - lo) / (2 * r + 1)
    return x


def fill_masked(image: Image.Image, painted: np.ndarray, mode: str, seed: int) -> Image.Image:
    """What the masked area holds before denoising (A1111 "masked content").

    fill: colours of the surroundings spread in (normalised convolution, coarse to fine);
    original: unchanged; latent noise: uniform pixel noise (A1111 draws it in latent space; noise
    in pixels encodes to the same effect); latent nothing: mid grey, which encodes to ~zero.
    """
    if mode == "original" or not painted.any():
        return image
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    if mode == "latent noise":
        noise = np.random.default_rng(seed).uniform(0, 255, rgb.shape).astype(np.float32)
        filled = noise
    elif mode == "latent nothing":
        filled = np.full_like(rgb, 127.5)
    else:  # fill
        known = (~painted).astype(np.float32)
        filled = np.broadcast_to(
            (rgb * known[..., None]).sum((0, 1)) / max(known.sum(), 1.0), rgb.shape).copy()
        size = max(rgb.shape[:2])
        radius = 1
        while radius * 2 < size:
            radius *= 2
        while radius >= 1:  # coarse first, finer passes overwrite where they have support
            weight = _box_blur(known, radius)
            spread = _box_blur(rgb * known[..., None], radius)
            ok = weight > 0.05
            filled[ok] = spread[ok] / weight[ok][..., None]
            radius //= 2
    out = np.where(painted[..., None], filled, rgb)
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))


def crop_region(painted: np.ndarray, padding: int, aspect: float) -> tuple[int, int, int, int]:
    """A1111 "only masked": the mask's bounding box plus padding, widened to the aspect ratio of
    the working size, clamped to the image. Returns (left, top, right, bottom)."""
    h, w = painted.shape
    ys, xs = np.nonzero(painted)
    left, right = max(int(xs.min()) - padding, 0), min(int(xs.max()) + 1 + padding, w)
    top, bottom = max(int(ys.min()) - padding, 0), min(int(ys.max()) + 1 + padding, h)
    bw, bh = right - left, bottom - top
    if bw / bh < aspect:  # too narrow: widen around the centre
        grow = min(int(round(bh * aspect)), w) - bw
        left = max(0, min(left - grow // 2, w - (bw + grow)))
        right = left + bw + grow
    elif bw / bh > aspect:
        grow = min(int(round(bw / aspect)), h) - bh
        top = max(0, min(top - grow // 2, h - (bh + grow)))
        bottom = top + bh + grow
    return left, top, right, bottom


def work_size(width: int, height: int) -> tuple[int, int]:
    """The nearest size the model accepts: multiples of 8, at least MIN_SIDE."""
    return (max(MIN_SIDE, int(round(width / 8)) * 8), max(MIN_SIDE, int(round(height / 8)) * 8))


def outpaint_canvas(image: Image.Image, sides: tuple[str, ...],
                    pixels: int) -> tuple[Image.Image, np.ndarray, tuple[int, int]]:
    """The enlarged canvas (border filled by stretching the edge pixels outwards), the border
    mask (True = to generate) and where the original sits on the canvas."""
    left = pixels if "left" in sides else 0
    top = pixels if "up" in sides else 0
    right = pixels if "right" in sides else 0
    bottom = pixels if "down" in sides else 0
    rgb = np.asarray(image.convert("RGB"))
    canvas = np.pad(rgb, ((top, bottom), (left, right), (0, 0)), mode="edge")
    painted = np.ones(canvas.shape[:2], dtype=bool)
    painted[top:top + image.height, left:left + image.width] = False
    return Image.fromarray(canvas), painted, (left, top)
