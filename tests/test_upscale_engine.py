"""Upscale engine: spandrel loads real key layouts (ESRGAN .pth, SRVGG .safetensors, random
weights) and the embedded Real-ESRGAN networks; tiling matches an untiled run without seams;
clear errors for bad images, bad files and unknown names."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from engines.base import EngineError, ParamError
from engines.upscale import catalog
from engines.upscale.engine import UpscaleEngine, import_spandrel
from engines.upscale.params import UpscaleParams


def photo(side: int = 64) -> Image.Image:
    from skimage import data

    return Image.fromarray(data.astronaut()).resize((side, side), Image.BICUBIC)


def random_state(module: torch.nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=generator) * 0.05
            for k, v in module.state_dict().items()}


@pytest.fixture
def user_models(tmp_path):
    """An ESRGAN-layout .pth (old 'model.1.sub...' keys, as A1111's models/ESRGAN files) and a
    Real-ESRGAN compact (SRVGG) .safetensors, both with random weights."""
    from safetensors.torch import save_file

    spandrel = import_spandrel()
    from spandrel.architectures.Compact import Compact
    from spandrel.architectures.ESRGAN import ESRGAN

    esrgan = ESRGAN(in_nc=3, out_nc=3, num_filters=16, num_blocks=2, scale=4)
    compact = Compact(num_in_ch=3, num_out_ch=3, num_feat=16, num_conv=4, upscale=2)
    (tmp_path / "ESRGAN").mkdir()
    (tmp_path / "RealESRGAN").mkdir()
    esrgan_path = tmp_path / "ESRGAN" / "4x_tiny_esrgan.pth"
    torch.save(random_state(esrgan), esrgan_path)
    compact_path = tmp_path / "RealESRGAN" / "tiny_compact_x2.safetensors"
    save_file(random_state(compact, 1), str(compact_path))
    assert spandrel.MAIN_REGISTRY  # the real library, not a stand-in
    return tmp_path, esrgan_path, compact_path


def test_catalog_lists_resizers_embedded_and_user_files(user_models):
    root, esrgan_path, compact_path = user_models
    names = {u.name: u for u in catalog.list_upscalers((root,))}
    assert {"Lanczos", "Nearest", "R-ESRGAN AnimeVideo", "R-ESRGAN 4x+", "GenStudio 4x PSNR",
            "GenStudio 4x+ PSNR"} <= set(names)
    assert names["4x_tiny_esrgan"].path == esrgan_path and names["4x_tiny_esrgan"].scale == 4
    assert names["tiny_compact_x2"].scale == 2
    assert catalog.resolve("r-esrgan 4x+").kind == "embedded"


def test_esrgan_pth_layout_loads_and_upscales_x4(user_models):
    _, esrgan_path, _ = user_models
    engine = UpscaleEngine(str(esrgan_path))
    result = engine.generate(UpscaleParams(image=photo(24), tile=0))
    assert engine.descriptor.architecture.id == "ESRGAN" and engine.scale == 4
    assert result.images[0].size == (96, 96) and result.info["passes"] == 1


def test_srvgg_safetensors_layout_loads_and_passes_twice_for_x4(user_models):
    _, _, compact_path = user_models
    engine = UpscaleEngine(str(compact_path))
    result = engine.generate(UpscaleParams(image=photo(24), scale=4, tile=0))
    assert engine.descriptor.architecture.id == "Compact" and engine.scale == 2
    assert result.images[0].size == (96, 96) and result.info["passes"] == 2


@pytest.mark.parametrize("name,arch,blocks", [("R-ESRGAN AnimeVideo", "Compact", None),
                                              ("R-ESRGAN 4x+", "ESRGAN", "23nb")])
def test_embedded_networks_restore_detail(name, arch, blocks):
    """Real trained weights: a 4x-downscaled photo comes back faithful (PSNR > 20 dB against
    the original; random weights give ~10) and sharper than bicubic makes it, with edge energy
    closer to the original's. (GAN-trained Real-ESRGAN does not beat bicubic on PSNR itself:
    see benchmarks/upscale.py and docs/upscale.md.)"""
    from skimage import data

    original = Image.fromarray(data.astronaut()).crop((128, 128, 384, 384))
    small = original.resize((64, 64), Image.BICUBIC)
    engine = UpscaleEngine(name)
    result = engine.generate(UpscaleParams(image=small, scale=4, tile=0)).images[0]
    assert engine.descriptor.architecture.id == arch and result.size == original.size
    if blocks:
        assert blocks in engine.descriptor.tags
    reference = np.asarray(original, dtype=np.float64)
    mse = np.mean((np.asarray(result, dtype=np.float64) - reference) ** 2)
    assert 10 * np.log10(255 ** 2 / mse) > 20

    def edges(image):
        gray = np.asarray(image.convert("L"), dtype=np.float64)
        return np.abs(np.diff(gray, axis=0)).mean() + np.abs(np.diff(gray, axis=1)).mean()

    bicubic = small.resize(original.size, Image.BICUBIC)
    assert abs(edges(result) - edges(original)) < abs(edges(bicubic) - edges(original))


@pytest.mark.parametrize("name", ["GenStudio 4x PSNR", "GenStudio 4x+ PSNR"])
def test_fidelity_networks_beat_bicubic_on_held_out_photos(name):
    """GenStudio 4x PSNR and 4x+ PSNR (the compact and the x4plus network fine-tuned here with
    an L1 loss) are more faithful than bicubic on photos they never saw: higher PSNR and SSIM."""
    from skimage import data
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    engine = UpscaleEngine(name)
    for array in (data.astronaut(), data.rocket()):
        w, h = array.shape[1], array.shape[0]
        original = Image.fromarray(array).crop((w // 2 - 96, h // 2 - 96, w // 2 + 96, h // 2 + 96))
        small = original.resize((48, 48), Image.BICUBIC)
        ours = np.asarray(engine.generate(UpscaleParams(image=small, scale=4)).images[0])
        bicubic = np.asarray(small.resize(original.size, Image.BICUBIC))
        reference = np.asarray(original)
        assert peak_signal_noise_ratio(reference, ours) > peak_signal_noise_ratio(reference, bicubic)
        assert structural_similarity(reference, ours, channel_axis=2) > \
            structural_similarity(reference, bicubic, channel_axis=2)


def test_tiled_equals_untiled_without_seams():
    engine = UpscaleEngine("R-ESRGAN AnimeVideo")
    image = photo(112)
    whole = np.asarray(engine.upscale_once(image, tile=0), dtype=np.float64)
    tiled = np.asarray(engine.upscale_once(image, tile=48, overlap=16), dtype=np.float64)
    difference = np.abs(whole - tiled)
    assert difference.max() <= 2 and difference.mean() < 0.05
    # No seam: along the tile borders (x = 32, 64 ... in input pixels) the tiled image is no
    # less smooth than the untiled one.
    for column in (32 * 4, 64 * 4):
        def jump(a):
            return np.abs(a[:, column] - a[:, column - 1]).mean()
        assert jump(tiled) <= jump(whole) + 0.5


def test_lanczos_nearest_target_size_crop_and_alpha():
    image = photo(40).convert("RGBA")
    nearest = UpscaleEngine("Nearest").generate(UpscaleParams(image=image, scale=2))
    assert nearest.images[0].size == (80, 80) and nearest.images[0].mode == "RGBA"
    assert np.array_equal(np.asarray(nearest.images[0])[::2, ::2], np.asarray(image))
    cropped = UpscaleEngine("Lanczos").generate(UpscaleParams(image=photo(40), width=120,
                                                              height=60))
    assert cropped.images[0].size == (120, 60)
    one_side = UpscaleEngine("Lanczos").generate(UpscaleParams(image=photo(40), width=100))
    assert one_side.images[0].size == (100, 100)


@pytest.mark.parametrize("kwargs,field", [
    ({"image": None}, "image"),
    ({"image": Image.new("RGB", (4, 4))}, "image"),
    ({"image": "not an image"}, "image"),
    ({"scale": 0.5}, "scale"),
    ({"scale": 9}, "scale"),
    ({"tile": 8}, "tile"),
    ({"tile": 64, "tile_overlap": 32}, "tile_overlap"),
    ({"width": 9000}, "width"),
])
def test_bad_params_name_the_field(kwargs, field):
    values = {"image": photo(32), **kwargs}
    with pytest.raises(ParamError) as caught:
        UpscaleParams(**values)
    assert caught.value.field == field


def test_unknown_upscaler_names_the_known_ones():
    with pytest.raises(ParamError, match="unknown `upscaler` 'ESRGAN_9x'.*Lanczos") as caught:
        catalog.resolve("ESRGAN_9x")
    assert caught.value.field == "upscaler"


class Payload:  # a pickled object (code), which weights_only=True refuses
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickles_with_code_and_non_upscalers_are_refused(tmp_path):
    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(EngineError, match="cannot read upscaler evil.pth"):
        UpscaleEngine(str(evil)).load()
    junk = tmp_path / "junk.pth"
    torch.save({"foo.weight": torch.zeros(3)}, junk)
    with pytest.raises(EngineError, match="does not recognise"):
        UpscaleEngine(str(junk)).load()
    with pytest.raises(EngineError, match="not found"):
        UpscaleEngine(str(tmp_path / "missing.pth")).load()
