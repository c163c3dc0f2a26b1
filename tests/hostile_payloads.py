"""Hostile files for the hardening tests: decompression-bomb PNGs, huge text chunks, other formats."""
from __future__ import annotations

import io
import struct
import zlib

from PIL import Image, PngImagePlugin


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(side: int = 20_000) -> bytes:
    """A real, valid 1-bit PNG of side x side black pixels: about 50 kB on the wire at 20,000
    (400 megapixels; Pillow decodes 1-bit to a byte per pixel, 400 MB)."""
    row = b"\x00" + b"\x00" * ((side + 7) // 8)  # filter byte + packed bits
    packer = zlib.compressobj(9)
    body = b"".join(packer.compress(row * 1000) for _ in range(side // 1000)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", body) + _chunk(b"IEND", b"")


def png_with_text(text: str, key: str = "parameters", size: int = 8) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text(key, text)
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), "white").save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def image_bytes(fmt: str, size: int = 8) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), "red").save(buffer, format=fmt)
    return buffer.getvalue()


# A long settings-less line: quadratic for A1111's regular expression (40 kB took 11 s).
SLOW_INFOTEXT = "Steps: 1, " * 3 + "a" * (1 << 20)
