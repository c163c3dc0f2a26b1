"""Parameters of the upscale engine: a frozen dataclass checked when it is built.

No torch here: tasks build these to validate a request before any weights load. Names follow
AUTOMATIC1111's Extras tab where one exists: `scale` is "upscaling_resize", `width`/`height`
"upscaling_resize_w/h", `crop` "upscaling_crop".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import engines.base
from engines.base import ParamError, check_int, check_range

MAX_INPUT_PIXELS = 4096 * 4096  # what we accept in
MAX_OUTPUT_SIDE = 8192
MAX_OUTPUT_PIXELS = 8192 * 8192 // 2  # ~33.5 MP: an 8-bit RGB result of ~100 MB
MAX_SCALE = 8.0  # A1111's slider goes to 8


def check_image(name: str, value: Any) -> None:
    engines.base.check_image(name, value, MAX_INPUT_PIXELS)


def output_size(width: int, height: int, scale: float, target_w: int | None,
                target_h: int | None) -> tuple[int, int]:
    """The result's size, as A1111 computes it: by scale, or to a target size (one side given:
    the other keeps the aspect ratio)."""
    if target_w and target_h:
        return target_w, target_h
    if target_w:
        return target_w, max(1, round(height * target_w / width))
    if target_h:
        return max(1, round(width * target_h / height)), target_h
    return max(1, round(width * scale)), max(1, round(height * scale))


@dataclass(frozen=True, eq=False)
class UpscaleParams:
    image: Any  # a PIL image; RGBA keeps its alpha (upscaled with Lanczos)
    scale: float = 4.0  # output / input size; ignored when width or height is given
    width: int | None = None  # a target size instead of a scale
    height: int | None = None
    # Both width and height given with another aspect ratio: True fills the target and crops
    # the excess (A1111 "Crop to fit"), False stretches.
    crop: bool = True
    # Large images run in tiles of this many input pixels (0 = the whole image at once), each
    # overlapping its neighbours by `tile_overlap` pixels and blended with a feathered mask.
    tile: int = 192
    tile_overlap: int = 16

    def __post_init__(self) -> None:
        self.check_inputs()

    def check_inputs(self) -> None:
        check_image("image", self.image)
        check_range("scale", self.scale, 1.0, MAX_SCALE)
        for name in ("width", "height"):
            value = getattr(self, name)
            if value is not None:
                check_int(name, value, 8, MAX_OUTPUT_SIDE)
        if not isinstance(self.crop, bool):
            raise ParamError("crop", f"`crop` must be true or false, got {self.crop!r}")
        check_int("tile", self.tile, 0, 4096)
        if 0 < self.tile < 32:
            raise ParamError("tile", f"`tile` must be 0 (no tiling) or at least 32, got {self.tile}")
        check_int("tile_overlap", self.tile_overlap, 0, 256)
        if self.tile and self.tile_overlap * 2 >= self.tile:
            raise ParamError("tile_overlap", f"`tile_overlap` ({self.tile_overlap}) must be less "
                                             f"than half of `tile` ({self.tile})")
        w, h = self.output_size
        if w > MAX_OUTPUT_SIDE or h > MAX_OUTPUT_SIDE or w * h > MAX_OUTPUT_PIXELS:
            field = "width" if self.width or self.height else "scale"
            raise ParamError(field, f"the result would be {w}x{h}, over the output budget "
                                    f"({MAX_OUTPUT_SIDE} per side, {MAX_OUTPUT_PIXELS} pixels)")

    @property
    def output_size(self) -> tuple[int, int]:
        return output_size(self.image.width, self.image.height, self.scale, self.width,
                           self.height)
