"""The CycleGAN ResNet generator, its checkpoint formats, and tiled inference on any image size.

The module tree copies the layout of the widely used pytorch CycleGAN-and-pix2pix release
(`networks.ResnetGenerator`, `resnet_9blocks`), so its `latest_net_G.pth` state dicts load with
their keys unchanged: `model.1` first 7x7 conv, `model.4`/`model.7` downsampling, `model.10..`
residual blocks (`conv_block.1`, `conv_block.5`), then two transposed convs and the 7x7 output.
Imported only by engines.style.engine when weights are loaded: it imports torch at the top.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from engines.base import EngineError, ParamError


@dataclass(frozen=True)
class GeneratorConfig:
    ngf: int = 64  # channels after the first conv; 256 = 4 * ngf in the residual blocks
    n_blocks: int = 9  # residual blocks; the public CycleGAN models use 9 (resnet_9blocks)
    norm_affine: bool = False  # CycleGAN's instance norm has no weights; vintagify's has


# ---------------------------------------------------------------- network
class InstanceNorm(nn.InstanceNorm2d):
    """nn.InstanceNorm2d (same state-dict keys) that can also record its statistics on one
    image and reuse them on tiles of a bigger one, so tiles are normalised alike and no seams
    appear where they meet."""

    def __init__(self, num_features: int, affine: bool = False) -> None:
        super().__init__(num_features, affine=affine, track_running_stats=False)
        self.mode = "normal"  # "normal" | "record" | "frozen"
        self.stats: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "normal":
            return super().forward(x)
        if self.mode == "record":
            var, mean = torch.var_mean(x, dim=(2, 3), keepdim=True, unbiased=False)
            self.stats = (mean, var)
        mean, var = self.stats
        y = (x - mean) * torch.rsqrt(var + self.eps)
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y


class ResnetBlock(nn.Module):
    def __init__(self, dim: int, affine: bool) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3), InstanceNorm(dim, affine), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3), InstanceNorm(dim, affine),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    """Image in [-1, 1], (N, 3, H, W) with H and W multiples of 4 -> image of the same size."""

    def __init__(self, config: GeneratorConfig = GeneratorConfig()) -> None:
        super().__init__()
        self.config = config
        ngf, affine = config.ngf, config.norm_affine
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3), nn.Conv2d(3, ngf, 7), InstanceNorm(ngf, affine), nn.ReLU(True),
        ]
        for mult in (1, 2):  # downsample twice
            layers += [nn.Conv2d(ngf * mult, ngf * mult * 2, 3, stride=2, padding=1),
                       InstanceNorm(ngf * mult * 2, affine), nn.ReLU(True)]
        layers += [ResnetBlock(ngf * 4, affine) for _ in range(config.n_blocks)]
        for mult in (4, 2):  # and back up
            layers += [nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 3, stride=2, padding=1,
                                          output_padding=1),
                       InstanceNorm(ngf * mult // 2, affine), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, 3, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------- checkpoints
_BLOCK_KEY = re.compile(r"^model\.(\d+)\.(conv_block|block)\.")
_NORM_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def convert_state_dict(state: dict) -> tuple[dict[str, torch.Tensor], GeneratorConfig, str]:
    """Map a generator state dict in any known layout onto ours.

    Known layouts: ours and the CycleGAN-and-pix2pix release (identical keys; old releases also
    stored instance-norm running buffers, which are dropped as the release itself does), models
    saved from nn.DataParallel (`module.` prefix), and vintagify (`block` instead of
    `conv_block`, affine instance norm). Returns (state dict, architecture, layout name)."""
    if not isinstance(state, dict) or not state:
        raise EngineError("the checkpoint holds no state dict")
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise EngineError("the checkpoint is not a plain generator state dict (non-tensor values)")
    layout = "cyclegan"
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("module."):
            key = key[len("module."):]
        if key.rsplit(".", 1)[-1] in _NORM_BUFFERS:
            continue
        match = _BLOCK_KEY.match(key)
        if match and match.group(2) == "block":
            layout = "vintagify"
            key = key.replace(".block.", ".conv_block.", 1)
        out[key] = value.float()
    if "model.1.weight" not in out:
        raise EngineError("not a CycleGAN ResNet generator: no `model.1.weight` (first conv) key")
    blocks = {int(m.group(1)) for k in out if (m := _BLOCK_KEY.match(k))}
    config = GeneratorConfig(ngf=int(out["model.1.weight"].shape[0]), n_blocks=len(blocks),
                             norm_affine="model.2.weight" in out)
    return out, config, layout


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read tensors only: safetensors, or torch.load with weights_only=True (no unpickling of
    arbitrary objects, so a hostile .pth cannot run code)."""
    path = Path(path)
    if not path.is_file():
        raise EngineError(f"style weights not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle errors, truncated files, foreign formats
        raise EngineError(f"cannot read generator weights {path.name}: {error}") from error


def load_generator(path: Path) -> tuple[ResnetGenerator, str]:
    state, config, layout = convert_state_dict(read_state_dict(path))
    generator = ResnetGenerator(config)
    try:
        generator.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise EngineError(f"{Path(path).name} does not fit a {config} generator: {error}") from error
    return generator.eval(), layout


# ---------------------------------------------------------------- inference
def _set_norm_mode(generator: nn.Module, mode: str) -> None:
    for module in generator.modules():
        if isinstance(module, InstanceNorm):
            module.mode = mode
            if mode == "normal":
                module.stats = None


def _run_padded(generator: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Reflect-pad to a multiple of 4 (two stride-2 stages), run, crop back: odd sizes work."""
    h, w = x.shape[-2:]
    pad_h, pad_w = (-h) % 4, (-w) % 4
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect")
    return generator(x)[..., :h, :w]


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, tile - overlap))
    return starts + [length - tile]


def _ramp(length: int, overlap: int, fade_in: bool, fade_out: bool) -> torch.Tensor:
    """Blend weights along one side of a tile. A tile's outer pixels saw reflection padding
    instead of their real neighbours, so the first quarter of the overlap gets weight zero and
    the middle half cross-fades linearly into the neighbour; sides on the image border keep 1."""
    i = torch.arange(length, dtype=torch.float32) + 0.5
    margin = overlap / 4
    weight = torch.ones(length)
    if fade_in:
        weight = torch.minimum(weight, ((i - margin) / max(overlap - 2 * margin, 1)).clamp(0, 1))
    if fade_out:
        weight = torch.minimum(weight, ((length - i - margin) / max(overlap - 2 * margin, 1)).clamp(0, 1))
    return weight


@torch.inference_mode()
def stylize_tensor(generator: nn.Module, x: torch.Tensor, tile: int = 512, overlap: int = 96,
                   stats_side: int = 1024,
                   on_tile: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Run the generator on (1, 3, H, W) in [-1, 1] at any size.

    Images up to `tile` on both sides run in one pass. Bigger ones run in overlapping tiles that
    cross-fade; every tile is normalised with instance-norm statistics recorded on the whole
    image first (downscaled to `stats_side` if larger), so tiles agree with each other and with
    an untiled run. `on_tile(done, total)` is called after each tile (progress, cancel)."""
    h, w = x.shape[-2:]
    if h <= tile and w <= tile:
        out = _run_padded(generator, x)
        if on_tile:
            on_tile(1, 1)
        return out
    if overlap >= tile // 2:
        raise ParamError("tile_overlap", f"`tile_overlap` must be under half the tile ({tile}), got {overlap}")

    # 1. statistics of every norm layer over the whole picture
    scale = min(1.0, stats_side / max(h, w))
    whole = x if scale >= 1.0 else F.interpolate(
        x, size=(max(16, round(h * scale)), max(16, round(w * scale))), mode="area")
    _set_norm_mode(generator, "record")
    try:
        _run_padded(generator, whole)
        _set_norm_mode(generator, "frozen")

        # 2. overlapping tiles, cross-faded
        out = torch.zeros_like(x)
        weight = torch.zeros((1, 1, h, w), dtype=x.dtype, device=x.device)
        boxes = [(top, left) for top in _starts(h, tile, overlap) for left in _starts(w, tile, overlap)]
        for n, (top, left) in enumerate(boxes, start=1):
            th, tw = min(tile, h), min(tile, w)
            piece = _run_padded(generator, x[..., top:top + th, left:left + tw])
            mask = (_ramp(th, overlap, top > 0, top + th < h)[:, None]
                    * _ramp(tw, overlap, left > 0, left + tw < w)[None, :]).to(x)
            out[..., top:top + th, left:left + tw] += piece * mask
            weight[..., top:top + th, left:left + tw] += mask
            if on_tile:
                on_tile(n, len(boxes))
        return out / weight.clamp_min(1e-8)
    finally:
        _set_norm_mode(generator, "normal")
