"""Opening images that a client sent: the size is checked from the header before any pixel is
decoded, and only PNG, JPEG, WEBP, BMP and GIF are opened.

A 20,000 x 20,000 PNG of one colour is a few kilobytes on the wire and 1.6 GB once decoded (a
"decompression bomb"); Pillow's other formats (PSD, TIFF, ICNS, EPS via Ghostscript...) widen
what a hostile file can reach. Pillow reads the size from the header without decoding, so the
check costs nothing.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO, Union

from PIL import Image, UnidentifiedImageError

from engines.base import ParamError

ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")
DEFAULT_MAX_PIXELS = 6144 * 6144  # 37.7 megapixels: a large photo; 113 MB as RGB
MAX_FILE_BYTES = 64 << 20

# Everything else that decodes images in this process (Gradio's uploads) is held to the same
# bound: Pillow warns above MAX_IMAGE_PIXELS and refuses above twice that.
Image.MAX_IMAGE_PIXELS = DEFAULT_MAX_PIXELS

Source = Union[bytes, bytearray, str, Path, BinaryIO]


def open_user_image(source: Source, max_pixels: int = DEFAULT_MAX_PIXELS, name: str = "image") -> Image.Image:
    """A fully loaded PIL image from bytes, a path or a binary file; ValueError naming `name`
    when it is not one of the allowed formats, is larger than `max_pixels` or is damaged."""
    # 1. Bytes in memory (a path is read only up to the size limit).
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
    elif isinstance(source, (str, Path)):
        with open(source, "rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    else:
        data = source.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise ParamError(name, f"`{name}` is larger than {MAX_FILE_BYTES >> 20} MB")
    if not data:
        raise ParamError(name, f"`{name}` is empty")
    # 2. The header only: format and size, no pixels yet.
    try:
        image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as error:  # Pillow's own check, at twice our limit
        raise ParamError(name, f"`{name}` is too large ({_short(error)}); the limit is {max_pixels:,} pixels") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise ParamError(name, f"`{name}` is not a readable image: PNG, JPEG, WEBP, BMP or GIF "
                         f"({_short(error)})") from None
    width, height = image.size
    if width < 1 or height < 1:
        raise ParamError(name, f"`{name}` has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ParamError(name, f"`{name}` is too large: {width}x{height} = {width * height:,} pixels; the limit is "
                         f"{max_pixels:,} (about {int(max_pixels ** 0.5)}x{int(max_pixels ** 0.5)})")
    # 3. Now decoding is bounded by the checked size.
    try:
        image.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, EOFError) as error:
        raise ParamError(name, f"`{name}` is not a readable image: damaged or truncated "
                         f"({_short(error)})") from None
    return image


def _short(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return text if len(text) <= 200 else text[:200] + "..."
