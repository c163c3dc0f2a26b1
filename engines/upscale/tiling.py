"""Tiled inference for image-to-image networks: the image is cut into overlapping tiles, each
tile runs alone (memory stays bounded by the tile), and the outputs are blended with a mask
that fades in from each tile's edges, so no seam shows where tiles meet.

Two measures against seams. A convolution near a tile's edge sees zero padding instead of the
neighbouring pixels, so each tile is run with `overlap` extra pixels of real context on every
side (cropped off again afterwards), which makes its core nearly what an untiled run gives.
And where two cores overlap, each pixel is the weighted mean of both, the weight falling
towards each core's own edge, so what difference remains fades smoothly across the band.
"""
from __future__ import annotations

from typing import Callable

import torch


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets that cover 0..length with tiles of `tile` overlapping by >= `overlap`."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)  # the last tile ends at the border (its overlap may grow)
    return starts


def feather(size: int, ramp: int, device, dtype) -> torch.Tensor:
    """1-D weights: rising over `ramp` pixels at both ends, 1 in between (never 0, so a pixel
    covered by one tile only keeps its value after normalising)."""
    weights = torch.ones(size, device=device, dtype=dtype)
    ramp = min(ramp, size // 2)
    if ramp > 0:
        edge = torch.arange(1, ramp + 1, device=device, dtype=dtype) / (ramp + 1)
        weights[:ramp] = edge
        weights[size - ramp:] = edge.flip(0)
    return weights


def run_tiled(run: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, scale: int,
              tile: int, overlap: int,
              on_tile: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """`run` maps (1, C, h, w) -> (1, C', h*scale, w*scale); returns the same for the whole
    (1, C, H, W) `image`. `tile` = 0 or a tile not smaller than the image runs it in one go.
    `on_tile(done, total)` is called after each tile (progress, cancel)."""
    _, _, height, width = image.shape
    if tile <= 0 or (height <= tile and width <= tile):
        out = run(image)
        if on_tile:
            on_tile(1, 1)
        return out
    ys, xs = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    total = len(ys) * len(xs)
    output = weight_sum = None
    done = 0
    for y in ys:
        for x in xs:
            # The network sees `overlap` more pixels of real context on every side the image
            # has them; that margin is cropped off the output, then cores blend where they meet.
            y0, x0 = max(0, y - overlap), max(0, x - overlap)
            y1, x1 = min(height, y + tile + overlap), min(width, x + tile + overlap)
            out = run(image[:, :, y0:y1, x0:x1]).float()
            ch, cw = min(tile, height - y), min(tile, width - x)
            top, left = (y - y0) * scale, (x - x0) * scale
            out = out[:, :, top:top + ch * scale, left:left + cw * scale]
            if output is None:  # channel count known after the first tile
                output = torch.zeros(1, out.shape[1], height * scale, width * scale,
                                     device=out.device)
                weight_sum = torch.zeros(1, 1, height * scale, width * scale, device=out.device)
            h, w = out.shape[2], out.shape[3]
            mask = (feather(h, overlap * scale, out.device, out.dtype)[:, None]
                    * feather(w, overlap * scale, out.device, out.dtype)[None, :])
            oy, ox = y * scale, x * scale
            output[:, :, oy:oy + h, ox:ox + w] += out * mask
            weight_sum[:, :, oy:oy + h, ox:ox + w] += mask
            done += 1
            if on_tile:
                on_tile(done, total)
    return output / weight_sum
