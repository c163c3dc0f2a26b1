"""ControlNet preprocessors ("modules", as sd-webui-controlnet calls them) and the fit of a
control map to the generation size. numpy + PIL only, so the UI may call `preprocess` for its
"Preview map" button without importing torch.

    control = preprocess("canny", photo, processor_res=512, threshold_a=100, threshold_b=200)
    control = fit(control, 64, 64, "Crop and Resize")

Module names and slider defaults are the extension's (`/controlnet/module_list` lists them):
  none               the image is already a control map
  canny              edges, OpenCV Canny semantics (engines/diffusion/control_maps.py)
  invert             255 - pixel: a black-on-white sketch becomes white on black
  scribble_xdog      scribble lines from a difference of Gaussians (control_maps.scribble)
  lineart_standard   grey line art from a difference of Gaussians, not thresholded
Every map is RGB, white (lines) on black, as ControlNet models are trained.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image

from engines.base import ParamError
from engines.diffusion import control_maps

# sd-webui-controlnet's names (enums.ResizeMode): how the map meets the generation size.
RESIZE_MODES = ("Just Resize", "Crop and Resize", "Resize and Fill")
DEFAULT_PROCESSOR_RES = 512  # the extension's "Preprocessor Resolution" default


@dataclass(frozen=True)
class Slider:
    name: str  # the extension's label, shown in /controlnet/module_list's module_detail
    value: float
    minimum: float
    maximum: float
    step: float = 1

    @property
    def api_json(self) -> dict:
        return {"name": self.name, "value": self.value, "min": self.minimum,
                "max": self.maximum, "step": self.step}


_RESOLUTION = Slider("Resolution", DEFAULT_PROCESSOR_RES, 64, 2048)


@dataclass(frozen=True)
class Module:
    name: str
    run: Callable[[Image.Image, float, float], Image.Image]  # (image, threshold_a, threshold_b)
    resolution: Slider | None = _RESOLUTION  # None: runs at the image's own size
    threshold_a: Slider | None = None
    threshold_b: Slider | None = None

    @property
    def sliders(self) -> list[Slider]:
        return [s for s in (self.resolution, self.threshold_a, self.threshold_b) if s]


def _lineart_standard(image: Image.Image, _a: float, _b: float) -> Image.Image:
    """Dark lines on a lighter surround, kept as grey levels (the extension's lineart_standard:
    blur minus image, normalised by the median line strength)."""
    from PIL import ImageFilter

    rgb = image.convert("RGB")
    x = np.asarray(rgb, dtype=np.float32)
    blurred = np.asarray(rgb.filter(ImageFilter.GaussianBlur(6.0)), dtype=np.float32)
    intensity = np.min(blurred - x, axis=2).clip(0, 255)
    lines = intensity[intensity > 8]
    intensity /= max(16.0, float(np.median(lines)) if lines.size else 16.0)
    out = (intensity * 127).clip(0, 255).astype(np.uint8)
    return Image.fromarray(np.stack([out] * 3, axis=-1), "RGB")


MODULES: dict[str, Module] = {
    "none": Module("none", lambda image, _a, _b: image.convert("RGB"), resolution=None),
    "canny": Module("canny", lambda image, a, b: control_maps.canny(image, a, b),
                    threshold_a=Slider("Canny Low Threshold", 100, 1, 255),
                    threshold_b=Slider("Canny High Threshold", 200, 1, 255)),
    "invert": Module("invert", lambda image, _a, _b: control_maps.invert(image)),
    "scribble_xdog": Module("scribble_xdog",
                            lambda image, a, _b: control_maps.scribble(image, int(a)),
                            threshold_a=Slider("XDoG Threshold", 32, 1, 64)),
    "lineart_standard": Module("lineart_standard", _lineart_standard),
}
# The extension's UI labels for the same modules (accepted as names too).
ALIASES = {"invert (from white bg & black line)": "invert",
           "lineart_standard (from white bg & black line)": "lineart_standard"}


def get_module(name: str, field: str = "module") -> Module:
    """The module called `name` (or one of its extension labels); ParamError otherwise."""
    module = MODULES.get(ALIASES.get(name, name)) if isinstance(name, str) else None
    if module is None:
        raise ParamError(field, f"unknown ControlNet module {name!r}; known: {', '.join(MODULES)}")
    return module


def check_thresholds(module: Module, threshold_a: float, threshold_b: float) -> None:
    """-1 means the module's default; a value the module has no slider for is ignored."""
    for field, slider, value in (("threshold_a", module.threshold_a, threshold_a),
                                 ("threshold_b", module.threshold_b, threshold_b)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParamError(field, f"`{field}` must be a number, got {value!r}")
        if slider and value != -1 and not slider.minimum <= value <= slider.maximum:
            raise ParamError(field, f"`{field}` ({slider.name} of {module.name}) must be "
                             f"{slider.minimum:g}..{slider.maximum:g} or -1, got {value!r}")


def preprocess(name: str, image: Image.Image, processor_res: int = -1, threshold_a: float = -1,
               threshold_b: float = -1) -> Image.Image:
    """The control map of `image`: resized so its short side is `processor_res` (-1: the
    module's default, 512), then run through the module. "none" returns the image as RGB."""
    module = get_module(name)
    check_thresholds(module, threshold_a, threshold_b)
    a = module.threshold_a.value if module.threshold_a and threshold_a == -1 else threshold_a
    b = module.threshold_b.value if module.threshold_b and threshold_b == -1 else threshold_b
    if module.resolution is not None:
        side = processor_res if processor_res and processor_res > 0 else module.resolution.value
        image = _short_side(image.convert("RGB"), int(side))
    return module.run(image, a, b)


def _short_side(image: Image.Image, side: int) -> Image.Image:
    scale = side / min(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return _resize(image, size)


def _resize(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Area averaging to shrink, bicubic to grow (OpenCV's INTER_AREA / INTER_CUBIC, as the
    extension resizes maps): thin edge lines survive shrinking as grey, not as gaps."""
    if image.size == size:
        return image
    shrink = size[0] * size[1] < image.width * image.height
    return image.resize(size, Image.BOX if shrink else Image.BICUBIC)


def fit(image: Image.Image, width: int, height: int, resize_mode: str) -> Image.Image:
    """The map at width x height: stretched ("Just Resize"), scaled to cover and centre-cropped
    ("Crop and Resize"), or scaled to fit inside and padded with black, which is "no control"
    for an edge map ("Resize and Fill")."""
    if resize_mode not in RESIZE_MODES:
        raise ParamError("resize_mode", f"unknown `resize_mode` {resize_mode!r}; known: "
                         f"{', '.join(RESIZE_MODES)}")
    image = image.convert("RGB")
    if resize_mode == "Just Resize":
        return _resize(image, (width, height))
    cover = resize_mode == "Crop and Resize"
    pick = max if cover else min
    scale = pick(width / image.width, height / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    scaled = _resize(image, size)
    if cover:
        left, top = (size[0] - width) // 2, (size[1] - height) // 2
        return scaled.crop((left, top, left + width, top + height))
    canvas = Image.new("RGB", (width, height))
    canvas.paste(scaled, ((width - size[0]) // 2, (height - size[1]) // 2))
    return canvas
