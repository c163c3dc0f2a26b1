"""ControlNet preprocessors that need no download: canny edges, scribble lines, invert.

numpy + PIL only. `canny` follows OpenCV's `cv2.Canny(image, low, high)` as the
sd-webui-controlnet "canny" module calls it: 3x3 Sobel, L1 gradient magnitude, the channel with
the strongest gradient on colour images, no blur before, thresholds in the same units (so the
A1111 defaults 100 / 200 mean the same here). Every function returns an RGB image of the input's
size, white lines on black, the form ControlNet models are trained on.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from engines.base import ParamError

# tan(22.5°) and tan(67.5°): the sector boundaries of gradient direction for thinning.
_TAN_22 = 0.41421356
_TAN_67 = 2.41421356


def _as_rgb(image: Image.Image) -> Image.Image:
    if not isinstance(image, Image.Image):
        raise ParamError("image", f"expected a PIL image, got {type(image).__name__}")
    if image.width < 3 or image.height < 3:
        raise ParamError("image", f"control image is {image.width}x{image.height}; need 3x3 or more")
    return image.convert("RGB")


def _sobel(channel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """3x3 Sobel derivatives with replicated borders (OpenCV uses reflect-101; edges differ only
    on the outermost pixel row)."""
    p = np.pad(channel, 1, mode="edge")
    dx = (p[:-2, 2:] + 2 * p[1:-1, 2:] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[1:-1, :-2] + p[2:, :-2])
    dy = (p[2:, :-2] + 2 * p[2:, 1:-1] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[:-2, 1:-1] + p[:-2, 2:])
    return dx, dy


def _gradients(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """dx, dy and L1 magnitude, taken per pixel from the channel whose magnitude is largest."""
    per = [_sobel(rgb[..., c]) for c in range(rgb.shape[-1])]
    dx = np.stack([d[0] for d in per])
    dy = np.stack([d[1] for d in per])
    mag = np.abs(dx) + np.abs(dy)
    best = np.argmax(mag, axis=0)[None]
    pick = lambda a: np.take_along_axis(a, best, axis=0)[0]
    return pick(dx), pick(dy), pick(mag)


def _thin(dx: np.ndarray, dy: np.ndarray, mag: np.ndarray) -> np.ndarray:
    """Non-maximum suppression: keep a pixel only where it beats its two neighbours across the
    edge (strictly on one side, as OpenCV does, so plateaus keep one pixel)."""
    h, w = mag.shape
    p = np.pad(mag, 1)
    at = lambda oy, ox: p[1 + oy:1 + oy + h, 1 + ox:1 + ox + w]
    ax, ay = np.abs(dx), np.abs(dy)
    horizontal = ay <= _TAN_22 * ax  # gradient mostly along x: compare left and right
    vertical = ay > _TAN_67 * ax
    same_sign = (dx * dy) > 0  # diagonal direction: down-right vs down-left (y grows downward)
    keep = np.zeros_like(mag, dtype=bool)
    keep |= horizontal & (mag > at(0, -1)) & (mag >= at(0, 1))
    keep |= vertical & (mag > at(-1, 0)) & (mag >= at(1, 0))
    diag = ~horizontal & ~vertical
    keep |= diag & same_sign & (mag > at(-1, -1)) & (mag >= at(1, 1))
    keep |= diag & ~same_sign & (mag > at(-1, 1)) & (mag >= at(1, -1))
    return keep


def _hysteresis(weak: np.ndarray, strong: np.ndarray) -> np.ndarray:
    """Weak pixels 8-connected (through weak pixels) to a strong one. Connected components by
    label hooking with pointer jumping (Shiloach-Vishkin): each pass hooks the root of every
    label to the smallest label next to it, then flattens the pointers, so a long edge chain
    takes a handful of vectorised passes instead of one pass per pixel of its length."""
    h, w = weak.shape
    n = h * w
    idx = np.flatnonzero(weak)
    parent = np.full(n + 1, n)  # parent[i]: a smaller (or equal) weak pixel in i's component
    parent[idx] = idx
    while True:
        label = parent[:-1].reshape(h, w)
        p = np.pad(label, 1, constant_values=n)
        low = label.copy()
        for oy in (-1, 0, 1):
            for ox in (-1, 0, 1):
                low = np.minimum(low, p[1 + oy:1 + oy + h, 1 + ox:1 + ox + w])
        hooked = parent.copy()
        np.minimum.at(hooked, parent[idx], low.ravel()[idx])  # hook roots to smaller labels
        while True:  # jump every pointer to its pointer's pointer until none moves
            jumped = hooked[hooked]
            if np.array_equal(jumped, hooked):
                break
            hooked = jumped
        if np.array_equal(hooked, parent):
            break
        parent = hooked
    label = parent[:-1].reshape(h, w)
    kept = np.unique(label[strong & weak])
    return weak & np.isin(label, kept)


def canny(image: Image.Image, low: float = 100, high: float = 200) -> Image.Image:
    """Canny edges as white 1-pixel lines on black (OpenCV semantics, see the module doc)."""
    if not 0 <= low <= high:
        raise ParamError("threshold_a", f"canny needs 0 <= low <= high, got low={low}, high={high}")
    rgb = np.asarray(_as_rgb(image), dtype=np.int32)
    dx, dy, mag = _gradients(rgb)
    thin = _thin(dx, dy, mag)
    weak = thin & (mag > low)
    strong = thin & (mag > high)
    edges = _hysteresis(weak, strong)
    out = np.where(edges, 255, 0).astype(np.uint8)
    return Image.fromarray(np.stack([out] * 3, axis=-1), "RGB")


def scribble(image: Image.Image, threshold: int = 32) -> Image.Image:
    """Scribble lines from the image (the "scribble_xdog" idea: a difference of Gaussians,
    thresholded), white on black. Lower threshold = more lines."""
    if not 1 <= threshold <= 255:
        raise ParamError("threshold_a", f"scribble threshold must be 1..255, got {threshold}")
    rgb = _as_rgb(image)
    fine = np.asarray(rgb.filter(ImageFilter.GaussianBlur(0.5)), dtype=np.float32)
    coarse = np.asarray(rgb.filter(ImageFilter.GaussianBlur(5.0)), dtype=np.float32)
    # Dark lines on a lighter surround: the fine image is darker than its blurred neighbourhood.
    # The factor 2 and the default 32 are the sd-webui-controlnet scribble_xdog ones.
    dog = np.min(coarse - fine, axis=2)
    out = np.where(2 * dog > threshold, 255, 0).astype(np.uint8)
    return Image.fromarray(np.stack([out] * 3, axis=-1), "RGB")


def invert(image: Image.Image) -> Image.Image:
    """255 - pixel: turns a black-on-white sketch into the white-on-black form models expect."""
    return ImageOps.invert(_as_rgb(image))
