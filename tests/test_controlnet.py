"""ControlNet in the diffusion engine and the image tasks, on real (tiny, random-weight) models:
a ControlNet made from the embedded UNet (diffusers folder) and one in the public SD 1.5
single-file layout; preprocessors, resize modes, infotext, and the errors users meet."""
from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from engines.base import ParamError
from engines.diffusion import control_modules
from engines.diffusion.params import ControlUnit, Img2ImgParams, InpaintParams, Txt2ImgParams

from controlnet_files import build_sd15_pipeline_128, controlnet_from_unet, write_ldm_controlnet


def square(size: int = 64, box=(12, 12, 40, 40), outline=True) -> Image.Image:
    image = Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(image)
    if outline:
        draw.rectangle(box, outline="white", width=2)
    else:
        draw.rectangle(box, fill="white")
    return image


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.float32)


@pytest.fixture(scope="module")
def model_id(tmp_path_factory):
    from engines.diffusion.random_weights import embedded_or_random

    return embedded_or_random(tmp_path_factory.mktemp("cn-model"))


@pytest.fixture(scope="module")
def cn_dir(tmp_path_factory, model_id):
    """models/ControlNet with a ControlNet made from the test model's UNet (a diffusers folder)."""
    from diffusers import UNet2DConditionModel

    from engines.diffusion.loading import resolve_model

    folder = tmp_path_factory.mktemp("cn-models") / "ControlNet"
    unet = UNet2DConditionModel.from_pretrained(Path(resolve_model(model_id).location) / "unet")
    scale = 2 ** (len(unet.config.block_out_channels) - 1)  # the tiny model's latents are 1/4
    channels = (16, 32, 96, 256)[:int(np.log2(scale)) + 1]
    controlnet_from_unet(unet, conditioning_embedding_out_channels=channels).save_pretrained(
        folder / "tiny-canny")
    return folder


@pytest.fixture(scope="module")
def engine(model_id):
    from engines.diffusion.engine import DiffusionEngine

    return DiffusionEngine(model_id=model_id)


def unit(**kwargs) -> ControlUnit:
    return ControlUnit(**{"model": "tiny-canny", "image": square(), "module": "canny", **kwargs})


# ------------------------------------------------------------------ preprocessors and fitting
def test_modules_and_resize_modes():
    photo = square(80, outline=False)
    edges = control_modules.preprocess("canny", photo, processor_res=80)
    assert edges.size == (80, 80) and edges.getextrema()[0] == (0, 255)
    assert control_modules.preprocess("none", photo).size == (80, 80)  # a ready map, as is
    assert control_modules.preprocess("invert", photo, 80).getpixel((0, 0)) == (255, 255, 255)
    assert control_modules.preprocess("lineart_standard", photo, 64).size == (64, 64)
    assert control_modules.preprocess("canny", photo).size == (512, 512)  # default resolution
    wide = Image.new("RGB", (128, 64), "white")
    assert control_modules.fit(wide, 64, 64, "Just Resize").size == (64, 64)
    cropped = control_modules.fit(wide, 64, 64, "Crop and Resize")
    assert cropped.getextrema()[0] == (255, 255)  # covers the target: all image
    filled = pixels(control_modules.fit(wide, 64, 64, "Resize and Fill"))
    assert filled[0, 0].max() == 0 and filled[32, 32].min() == 255  # black bands above/below
    with pytest.raises(ParamError, match="unknown ControlNet module 'depth_midas'"):
        control_modules.preprocess("depth_midas", photo)


# ------------------------------------------------------------------ engine
def test_controlnet_steers_txt2img_and_leaves_no_trace(engine, cn_dir):
    common = dict(prompt="a red star", seed=3, steps=4, controlnet_dirs=(str(cn_dir),))
    base = engine.generate(Txt2ImgParams(**common)).images[0]
    edges = engine.generate(Txt2ImgParams(**common, controlnet=(unit(),)))
    assert np.abs(pixels(edges.images[0]) - pixels(base)).mean() > 1.0
    assert edges.info["controlnet"][0]["model"].startswith("tiny-canny [")
    left, right = (engine.generate(Txt2ImgParams(**common, controlnet=(unit(
        module="none", image=square(box=box, outline=False)),))).images[0]
        for box in ((0, 0, 31, 63), (32, 0, 63, 63)))
    # Where the control is matters: a random ControlNet moves a few pixels a lot (0.44 mean,
    # 13 levels at most with sd-tiny's decoder), not every pixel a little.
    moved = np.abs(pixels(left) - pixels(right))
    assert moved.mean() > 0.25 and moved.max() >= 8
    weak = engine.generate(Txt2ImgParams(**common, controlnet=(unit(weight=0.0),))).images[0]
    assert np.abs(pixels(weak) - pixels(base)).max() <= 2  # weight 0: no control
    after = engine.generate(Txt2ImgParams(**common)).images[0]
    assert np.array_equal(pixels(after), pixels(base))  # the next job sees no ControlNet
    assert len(engine._controlnets) == 1  # loaded once, cached


def test_multicontrolnet_img2img_and_inpaint(engine, cn_dir):
    start = square(outline=False)
    common = dict(prompt="a red star", seed=5, steps=4, init_image=start, strength=0.8,
                  controlnet_dirs=(str(cn_dir),))
    two = (unit(guidance_end=0.5), unit(module="none", image=square(box=(5, 40, 30, 60)),
                                        resize_mode="Just Resize", weight=0.5))
    plain = engine.generate(Img2ImgParams(**common)).images[0]
    multi = engine.generate(Img2ImgParams(**common, controlnet=two))
    assert multi.images[0].size == (64, 64) and len(multi.info["controlnet"]) == 2
    assert np.abs(pixels(multi.images[0]) - pixels(plain)).mean() > 0.5
    mask = Image.new("L", (64, 64))
    ImageDraw.Draw(mask).rectangle((0, 0, 31, 63), fill=255)
    painted = engine.generate(InpaintParams(**common, mask=mask, controlnet=(unit(),),
                                            inpaint_full_res=True)).images[0]
    assert np.array_equal(pixels(painted)[:, 40:], pixels(start)[:, 40:])  # outside: untouched


def test_unit_values_are_checked_up_front():
    with pytest.raises(ParamError) as error:
        unit(module="openpose_full")
    assert error.value.field == "module" and "openpose_full" in str(error.value)
    with pytest.raises(ParamError, match="must be an image"):
        unit(image="not an image")
    with pytest.raises(ParamError, match="16"):
        unit(image=Image.new("RGB", (4, 4)))
    with pytest.raises(ParamError, match="guidance_start"):
        unit(guidance_start=0.6, guidance_end=0.4)
    with pytest.raises(ParamError, match="resize_mode"):
        unit(resize_mode="Stretch")
    with pytest.raises(ParamError, match="threshold_a"):
        unit(threshold_a=999)
    with pytest.raises(ParamError, match="'Prompt first'") as error:
        unit(control_mode="Prompt first")
    assert error.value.field == "control_mode" and "My prompt is more important" in str(error.value)


def test_params_refuse_unknown_and_corrupt_models(cn_dir, tmp_path):
    with pytest.raises(ParamError, match="unknown ControlNet 'nope'.*tiny-canny"):
        Txt2ImgParams(prompt="x", controlnet=(unit(model="nope"),), controlnet_dirs=(str(cn_dir),))
    broken = tmp_path / "ControlNet"
    broken.mkdir()
    (broken / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ParamError, match="broken.safetensors is not a readable"):
        Txt2ImgParams(prompt="x", controlnet=(unit(model="broken"),), controlnet_dirs=(str(broken),))
    from safetensors.torch import save_file
    import torch

    save_file({"lora_unet_down.lora_up.weight": torch.zeros(4, 4)}, str(broken / "lora.safetensors"))
    with pytest.raises(ParamError, match="lora.safetensors is not a ControlNet"):
        Txt2ImgParams(prompt="x", controlnet=(unit(model="lora"),), controlnet_dirs=(str(broken),))
    whole = (cn_dir / "tiny-canny" / "diffusion_pytorch_model.safetensors").read_bytes()
    (broken / "cut.safetensors").write_bytes(whole[:len(whole) // 2])
    with pytest.raises(ParamError, match="cut.safetensors is not a readable .*truncated"):
        Txt2ImgParams(prompt="x", controlnet=(unit(model="cut"),), controlnet_dirs=(str(broken),))
    with pytest.raises(ParamError, match="step_cache"):
        Txt2ImgParams(prompt="x", step_cache=2, controlnet=(unit(),), controlnet_dirs=(str(cn_dir),))
    assert Txt2ImgParams(prompt="x", controlnet=(unit(model="tiny-canny [0123abcd]"),),
                         controlnet_dirs=(str(cn_dir),)).controlnet  # A1111's "name [hash]"


# ------------------------------------------------------------------ SD 1.5 single file
@pytest.fixture(scope="module")
def sd15(tmp_path_factory):
    """An SD 1.5-shaped pipeline (768-wide cross-attention, 4 levels, latents 1/8) and its
    ControlNet written in the public single-file layout (fp16, `control_model.` keys)."""
    from diffusers import UNet2DConditionModel

    root = tmp_path_factory.mktemp("sd15")
    model = build_sd15_pipeline_128(root / "sd15-shaped")
    unet = UNet2DConditionModel.from_pretrained(model / "unet")
    controlnet = controlnet_from_unet(unet, seed=2)
    import torch

    path = write_ldm_controlnet(controlnet, root / "ControlNet" / "control_v11p_sd15_test.safetensors",
                                dtype=torch.float16)
    return model, path, controlnet


def test_sd15_single_file_loads_exactly_and_steers(sd15):
    import torch

    from engines.diffusion.controlnet import describe, load_controlnet, resolve
    from engines.diffusion.engine import DiffusionEngine

    model, path, original = sd15
    entry = resolve("control_v11p_sd15_test", (str(path.parent),))
    assert entry.kind == "single_file" and describe(entry)["cross_attention_dim"] == 768
    loaded = load_controlnet(entry, torch.float32, "cpu")
    want = original.state_dict()
    for key, value in loaded.state_dict().items():  # every tensor where diffusers has it
        assert torch.equal(value, want[key].half().float()), key
    engine = DiffusionEngine(model_id=str(model))
    engine.load()  # generate() with width and height given reaches _denoise before load()
    common = dict(prompt="a red star", seed=1, steps=3, width=128, height=128,
                  controlnet_dirs=(str(path.parent),))
    base = engine.generate(Txt2ImgParams(**common)).images[0]
    steered = engine.generate(Txt2ImgParams(**common, controlnet=(ControlUnit(
        model="control_v11p_sd15_test", image=square(128), module="none"),))).images[0]
    assert np.abs(pixels(steered) - pixels(base)).mean() > 0.5


def test_full_sd15_layout_gives_the_sd15_config():
    """The real SD 1.5 ControlNet's shapes (on the meta device: no memory) give back its config."""
    import torch
    from diffusers import ControlNetModel

    from controlnet_files import ldm_controlnet_state_dict
    from engines.diffusion.controlnet import _config_from_shapes

    with torch.device("meta"):
        real = ControlNetModel(cross_attention_dim=768)  # diffusers' defaults are SD 1.5's
    shapes = {k: list(v.shape) for k, v in ldm_controlnet_state_dict(real).items()}
    config = _config_from_shapes(shapes)
    for key in ("block_out_channels", "down_block_types", "layers_per_block",
                "cross_attention_dim", "conditioning_embedding_out_channels", "norm_num_groups"):
        assert tuple(np.atleast_1d(config[key])) == tuple(np.atleast_1d(real.config[key])), key
    assert config["attention_head_dim"] == 8 and not config["use_linear_projection"]


def test_another_family_is_refused_naming_it(ctx, model_id, sd15):
    from studio.tasks import validate_task

    _, path, _ = sd15
    models = Path(ctx.config.models_dir) / "ControlNet"
    models.mkdir(parents=True, exist_ok=True)
    (models / path.name).write_bytes(path.read_bytes())
    params = {"prompt": "x", "controlnet": [{"model": "control_v11p_sd15_test",
                                             "image": b64(square()), "module": "canny"}]}
    if model_id != "genstudio-tiny-sd":
        params["model"] = model_id
    with pytest.raises(ParamError) as error:
        validate_task(ctx, "txt2img", params)
    assert error.value.field == "controlnet"
    assert "control_v11p_sd15_test" in str(error.value) and "SD 1.x" in str(error.value)


# ------------------------------------------------------------------ tasks
def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_task_records_units_as_the_extension_does(ctx, model_id, cn_dir):
    import shutil

    from studio.gallery.pnginfo import read_png_metadata
    from studio.tasks import run_task, validate_task

    shutil.copytree(cn_dir, Path(ctx.config.models_dir) / "ControlNet", dirs_exist_ok=True)
    control = ctx.gallery.add_image(square(), task="upload", engine="", prompt="control")
    params = {"prompt": "a red star", "steps": 3, "seed": 2, "controlnet": [
        {"model": "tiny-canny", "image_id": control.id, "module": "canny", "weight": 0.8,
         "guidance_end": 0.9, "resize_mode": "Just Resize"}]}
    if model_id != "genstudio-tiny-sd":
        params["model"] = model_id
    result = run_task(ctx, "txt2img", params)
    item = ctx.gallery.get(result.item_ids[0])
    assert item.params["controlnet"][0]["image_id"] == control.id  # an id, never pixels
    parsed = read_png_metadata(str(item.file_path))["parsed"]
    line = parsed["ControlNet 0"]
    assert line.startswith("Module: canny, Model: tiny-canny [")
    assert ("Weight: 0.8, Resize Mode: Just Resize, Processor Res: 512, Threshold A: 100, "
            "Threshold B: 200, Guidance Start: 0.0, Guidance End: 0.9, Pixel Perfect: False, "
            "Control Mode: Balanced") in line
    rerun = run_task(ctx, "txt2img", dict(item.params, seed=2, batch_size=1))  # reuse params
    assert np.array_equal(pixels(ctx.gallery.open_image(rerun.item_ids[0])),
                          pixels(ctx.gallery.open_image(item.id)))
    for bad, match in (({"image": "bm90IGFuIGltYWdl"}, "ControlNet unit 0"),
                       ({"image_id": 99999}, "no gallery item"),
                       ({"module": "hed"}, "unknown ControlNet module 'hed'"),
                       ({"colour": 1}, "unknown field")):
        unit_params = dict(params["controlnet"][0], **bad)
        if "image" in bad:
            unit_params.pop("image_id")
        with pytest.raises(ParamError, match=match) as error:
            validate_task(ctx, "txt2img", dict(params, controlnet=[unit_params]))
        assert error.value.field == "controlnet"


# ------------------------------------------------------------------ SDXL
def test_sdxl_controlnet_folder_and_diffusers_single_file(tmp_path):
    """SDXL's ControlNet pipelines, with a folder and with a single file in diffusers' key
    layout (how the public SDXL ControlNets are shipped)."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    from engines.diffusion.controlnet import describe, resolve
    from engines.diffusion.engine import DiffusionEngine
    from small_pipelines import build_sdxl_shaped

    model = build_sdxl_shaped(tmp_path / "xl")
    unet = UNet2DConditionModel.from_pretrained(model / "unet")
    controlnet = controlnet_from_unet(unet, conditioning_embedding_out_channels=(16, 32, 96))
    folders = tmp_path / "ControlNet"
    controlnet.save_pretrained(folders / "xl-folder")
    save_file({k: v.contiguous() for k, v in controlnet.state_dict().items()},
              str(folders / "xl-single.safetensors"))
    shapes_config = describe(resolve("xl-single", (str(folders),)), unet=dict(unet.config))
    for key in ("block_out_channels", "transformer_layers_per_block", "addition_time_embed_dim",
                "projection_class_embeddings_input_dim", "use_linear_projection"):
        assert list(np.atleast_1d(shapes_config[key])) == list(np.atleast_1d(controlnet.config[key]))
    engine = DiffusionEngine(model_id=str(model))
    engine.load()
    common = dict(prompt="a red star", seed=1, steps=3, controlnet_dirs=(str(folders),))
    base = engine.generate(Txt2ImgParams(**common)).images[0]
    images = [engine.generate(Txt2ImgParams(**common, controlnet=(ControlUnit(
        model=name, image=square(), module="none"),))).images[0]
        for name in ("xl-folder", "xl-single")]
    assert np.abs(pixels(images[0]) - pixels(base)).mean() > 0.5
    assert np.abs(pixels(images[0]) - pixels(images[1])).max() <= 1  # the same weights
    init = engine.generate(Img2ImgParams(**common, init_image=base, controlnet=(ControlUnit(
        model="xl-single", image=square()),)))
    assert init.images[0].size == (64, 64)


def test_hires_fix_controls_both_passes(ctx, model_id, cn_dir):
    import shutil

    from studio.gallery.pnginfo import read_png_metadata
    from studio.tasks import run_task

    shutil.copytree(cn_dir, Path(ctx.config.models_dir) / "ControlNet", dirs_exist_ok=True)
    params = {"prompt": "a red star", "steps": 3, "seed": 6, "enable_hr": True, "hr_scale": 2,
              "denoising_strength": 0.6, "controlnet": [
                  {"model": "tiny-canny", "image": b64(square()), "module": "canny"}]}
    if model_id != "genstudio-tiny-sd":
        params["model"] = model_id
    item = ctx.gallery.get(run_task(ctx, "hires", params).item_ids[0])
    parsed = read_png_metadata(str(item.file_path))["parsed"]
    assert (item.width, item.height) == (128, 128) and parsed["Hires upscale"] == "2"
    assert parsed["ControlNet 0"].startswith("Module: canny, Model: tiny-canny [")
