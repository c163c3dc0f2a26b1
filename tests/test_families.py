"""Every diffusers family the studio runs, through the studio by folder: small random pipelines
of each (diffusers' own test configs, tests/family_pipelines.py) saved in the models folder and
run as tasks: txt2img reproducible by seed, previews, cancel between steps, gallery rows with
their infotext, img2img and inpaint where the family has them, refusals by field and family."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engines.base import CancelToken, Cancelled, EngineError, ParamError
from studio.gallery.pnginfo import read_png_metadata
from studio.tasks import run_task, validate_task

BUILDERS = {
    "kandinsky22": "build_kandinsky22",
    "pixart-alpha": "build_pixart",
    "pixart-sigma": "build_pixart_sigma",
    "sd3": "build_sd3",
    "stable-unclip": "build_stable_unclip",
    "stable-unclip-img2img": "build_unclip_img2img",
    "lcm": "build_lcm",
    "sd-turbo": "build_sd_turbo",
    "sdxl": "build_sdxl_shaped",
    "sd-inpaint": "build_sd_inpaint",
}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """Each family's folder, built once for the module (a second or so each)."""
    import family_pipelines
    import small_pipelines

    root = tmp_path_factory.mktemp("families")
    return {family: (getattr(family_pipelines, builder, None)
                     or getattr(small_pipelines, builder))(root / family)
            for family, builder in BUILDERS.items()}


@pytest.fixture
def models(ctx, built) -> dict[str, str]:
    """The built folders copied into this studio's A1111 checkpoint folder, by family."""
    target = Path(ctx.config.models_dir) / "Stable-diffusion"
    target.mkdir(parents=True, exist_ok=True)
    out = {}
    for family, folder in built.items():
        shutil.copytree(folder, target / f"tiny-{family}")
        out[family] = str(target / f"tiny-{family}")
    return out


def _pixels(ctx, item_id: int) -> np.ndarray:
    return np.asarray(ctx.gallery.open_image(item_id).convert("RGB"), dtype=np.int16)


def test_families_are_read_from_configs_only(built, tmp_path):
    from engines.diffusion.families import detect_family

    for family, folder in built.items():
        assert detect_family(str(folder)).id == family
    from engines.diffusion.families import family_info

    assert family_info(str(built["pixart-alpha"]))["side"] == 32  # 8 latent px x 4
    assert family_info(str(built["kandinsky22"]))["side"] == 16  # movq: 2 levels
    assert family_info("genstudio-tiny-sd")["side"] is None  # an alias, not a folder
    assert detect_family("genstudio-tiny-sd").id == "sd1"
    flux = tmp_path / "my-flux"
    flux.mkdir()
    (flux / "model_index.json").write_text('{"_class_name": "FluxPipeline"}')
    with pytest.raises(EngineError, match="my-flux is a FluxPipeline model, a family this studio "
                                          "does not run"):
        detect_family(str(flux))


def test_an_unsupported_family_is_refused_in_one_sentence(ctx):
    folder = Path(ctx.config.models_dir) / "Stable-diffusion" / "wuerstchen"
    folder.mkdir(parents=True)
    (folder / "model_index.json").write_text('{"_class_name": "WuerstchenCombinedPipeline"}')
    with pytest.raises(ParamError) as error:
        validate_task(ctx, "txt2img", {"prompt": "x", "model": str(folder)})
    assert error.value.field == "model"
    message = str(error.value)
    assert "WuerstchenCombinedPipeline" in message and message.count(". ") == 0


@pytest.mark.parametrize("family", ["kandinsky22", "pixart-alpha", "pixart-sigma", "sd3",
                                    "stable-unclip", "lcm", "sd-turbo", "sdxl"])
def test_txt2img_by_folder_is_reproducible_with_previews_and_infotext(ctx, models, family):
    model = models[family]
    progress = []
    negative = "" if family == "lcm" else "blurry"  # LCM takes no negative prompt
    params = {"prompt": "a red cube", "negative_prompt": negative, "steps": 3, "seed": 7,
              "width": 64, "height": 64, "guidance_scale": 4.0, "preview_every": 1,
              "model": model}
    validate_task(ctx, "txt2img", params)
    first = run_task(ctx, "txt2img", params, on_progress=progress.append)
    again = run_task(ctx, "txt2img", params)
    other = run_task(ctx, "txt2img", dict(params, seed=8))
    # 1. Same seed, same pixels; another seed, other pixels.
    assert np.array_equal(_pixels(ctx, first.item_ids[0]), _pixels(ctx, again.item_ids[0]))
    assert not np.array_equal(_pixels(ctx, first.item_ids[0]), _pixels(ctx, other.item_ids[0]))
    # 2. Every step reported, previews decoded by the family's own autoencoder.
    steps = [p.step for p in progress if p.step]
    assert steps[-1] == 3 and sorted(steps) == steps
    previews = [p.preview for p in progress if p.preview is not None]
    assert previews and all(isinstance(p, Image.Image) for p in previews)
    # 3. The gallery row and the PNG carry the A1111 infotext of this model.
    item = ctx.gallery.get(first.item_ids[0])
    assert item.seed == 7 and item.task == "txt2img" and item.model == f"tiny-{family}"
    text = read_png_metadata(str(item.file_path))["parameters"]
    assert ("Negative prompt: blurry" in text) == (family != "lcm")
    for fragment in ("a red cube", "Steps: 3", "Seed: 7",
                     "Size: 64x64", f"Model: tiny-{family}", "CFG scale: 4.0", "Model hash: "):
        assert fragment in text, (fragment, text)
    assert "Sampler: " in text and first.info["family"]


@pytest.mark.parametrize("family", ["kandinsky22", "sd3"])
def test_cancel_between_steps_writes_nothing(ctx, models, family):
    cancel, seen = CancelToken(), []

    def on_progress(p):
        seen.append(p.step)
        if p.step >= 1:
            cancel.cancel()

    with pytest.raises(Cancelled):
        run_task(ctx, "txt2img", {"prompt": "x", "steps": 6, "seed": 1, "width": 64,
                                  "height": 64, "model": models[family]},
                 on_progress=on_progress, cancel=cancel)
    assert max(seen) < 6
    from studio.gallery.store import GalleryQuery

    assert ctx.gallery.query(GalleryQuery()).total == 0


@pytest.mark.parametrize("family", ["kandinsky22", "sd3", "lcm", "sd-inpaint"])
def test_img2img_and_inpaint_where_the_family_has_them(ctx, models, family):
    """Kandinsky 2.2 inpaints with its own 9-channel decoder only, LCM not at all: both refuse;
    an SD inpainting checkpoint only inpaints."""
    model = models[family]
    noise = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    parent = ctx.gallery.add_image(Image.fromarray(noise), task="upload", engine="", model="").id
    params = {"prompt": "a tree at night", "steps": 4, "seed": 2, "strength": 0.5,
              "init_image_id": parent, "model": model}
    if family == "sd-inpaint":
        for task in ("txt2img", "img2img"):
            with pytest.raises(ParamError, match=f"does not do {task}"):
                validate_task(ctx, task, params if task == "img2img" else {"prompt": "x",
                                                                         "model": model})
    else:
        _img2img_is_reproducible(ctx, params, parent)
    _inpaint_where_the_family_has_it(ctx, family, model, parent)


def _img2img_is_reproducible(ctx, params: dict, parent: int) -> None:
    child = run_task(ctx, "img2img", params)
    twin = run_task(ctx, "img2img", params)
    assert np.array_equal(_pixels(ctx, child.item_ids[0]), _pixels(ctx, twin.item_ids[0]))
    item = ctx.gallery.get(child.item_ids[0])
    assert item.parent_id == parent
    assert "Denoising strength: 0.5" in read_png_metadata(str(item.file_path))["parameters"]


def _inpaint_where_the_family_has_it(ctx, family: str, model: str, parent: int) -> None:
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    import base64
    import io

    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    inpaint = {"prompt": "a moon", "steps": 4, "seed": 3, "init_image_id": parent,
               "model": model, "mask": base64.b64encode(buffer.getvalue()).decode(),
               "mask_blur": 0}
    if family in ("kandinsky22", "lcm"):
        with pytest.raises(ParamError, match="does not do inpaint") as error:
            validate_task(ctx, "inpaint", inpaint)
        assert error.value.field == "model"
        return
    painted = run_task(ctx, "inpaint", inpaint)
    before, after = _pixels(ctx, parent), _pixels(ctx, painted.item_ids[0])
    assert np.array_equal(before[:8], after[:8])  # outside the mask: untouched
    assert not np.array_equal(before[20:44, 20:44], after[20:44, 20:44])


def test_fields_a_family_lacks_are_refused_by_name(ctx, models):
    kandinsky, unclip = models["kandinsky22"], models["stable-unclip-img2img"]
    cases = [("txt2img", {"model": kandinsky, "token_merging": 0.3}, "token_merging"),
             ("txt2img", {"model": kandinsky, "scheduler": "Euler a"}, "scheduler"),
             ("txt2img", {"model": kandinsky, "step_cache": 2}, "step_cache"),
             ("txt2img", {"model": models["pixart-alpha"], "candidates": 4, "keep": 1},
              "candidates"),
             ("img2img", {"model": models["pixart-alpha"], "init_image_id": 1}, "model"),
             ("txt2img", {"model": unclip}, "model"),
             ("txt2img", {"model": kandinsky, "prompt": "a cat <lora:x:1>"}, "prompt"),
             ("txt2img", {"model": models["lcm"], "negative_prompt": "ugly"}, "negative_prompt"),
             ("inpaint", {"model": models["lcm"], "init_image_id": 1}, "model")]
    for task, extra, field in cases:
        with pytest.raises(ParamError) as error:
            validate_task(ctx, task, dict({"prompt": "a cat"}, **extra))
        assert error.value.field == field, (extra, error.value)
    # The neutral values a tab always sends are accepted.
    validate_task(ctx, "txt2img", {"prompt": "a cat", "model": kandinsky, "token_merging": 0,
                                   "step_cache": 0, "vae": "Automatic", "negative_prompt": ""})


# ------------------------------------------------------------------ variations (DALL·E 2)
@pytest.mark.parametrize("family", ["kandinsky22", "stable-unclip-img2img"])
def test_variations_of_a_gallery_image(ctx, models, family):
    source = ctx.gallery.add_image(Image.new("RGB", (64, 64), (200, 40, 40)), task="upload",
                                   engine="", model="")
    progress = []
    params = {"image_id": source.id, "model": models[family], "count": 2, "steps": 3,
              "seed": 5, "preview_every": 1}
    validate_task(ctx, "variations", params)
    result = run_task(ctx, "variations", params, on_progress=progress.append)
    assert len(result.item_ids) == 2 and result.info["seeds"] == [5, 6]
    first, second = (_pixels(ctx, i) for i in result.item_ids)
    assert first.shape == (64, 64, 3) and not np.array_equal(first, second)  # new noise each
    # Seed 6 alone is the second variation: each is painted from its own generator.
    alone = run_task(ctx, "variations", dict(params, count=1, seed=6))
    assert np.array_equal(_pixels(ctx, alone.item_ids[0]), second)
    item = ctx.gallery.get(result.item_ids[0])
    assert item.task == "variations" and item.parent_id == source.id and item.seed == 5
    text = read_png_metadata(str(item.file_path))["parameters"]
    assert f"Variation of: {source.id}" in text and "Seed: 5" in text and "Steps: 3" in text
    assert [p.step for p in progress if p.step][-1] == 6
    assert any(p.preview is not None for p in progress)


def test_variations_need_a_prior_decoder_family(ctx, models):
    source = ctx.gallery.add_image(Image.new("RGB", (64, 64)), task="upload", engine="", model="")
    with pytest.raises(ParamError, match="does not do variations") as error:
        validate_task(ctx, "variations", {"image_id": source.id, "model": models["sd3"]})
    assert error.value.field == "model"
    # Without `model`, the first variations model of the models folder is used.
    validate_task(ctx, "variations", {"image_id": source.id})
    with pytest.raises(ParamError) as error:
        validate_task(ctx, "variations", {"model": models["kandinsky22"]})
    assert error.value.field == "image_id"


# ------------------------------------------------------------------ SDXL refiner, second stage
def test_sdxl_refiner_finishes_the_base_latents(ctx, models, tmp_path):
    from family_pipelines import build_sdxl_refiner

    refiner = build_sdxl_refiner(Path(ctx.config.models_dir) / "Stable-diffusion" / "refiner")
    params = {"prompt": "a red cube", "steps": 5, "seed": 3, "width": 64, "height": 64,
              "model": models["sdxl"], "refiner_checkpoint": str(refiner),
              "refiner_switch_at": 0.6, "preview_every": 0}
    validate_task(ctx, "txt2img_refiner", params)
    progress = []
    first = run_task(ctx, "txt2img_refiner", params, on_progress=progress.append)
    again = run_task(ctx, "txt2img_refiner", params)
    plain = run_task(ctx, "txt2img", {k: v for k, v in params.items()
                                      if not k.startswith("refiner")})
    assert np.array_equal(_pixels(ctx, first.item_ids[0]), _pixels(ctx, again.item_ids[0]))
    assert not np.array_equal(_pixels(ctx, first.item_ids[0]), _pixels(ctx, plain.item_ids[0]))
    assert progress[-1].step == progress[-1].total
    assert any("refiner" in (p.message or "") for p in progress)
    text = read_png_metadata(str(ctx.gallery.get(first.item_ids[0]).file_path))["parameters"]
    assert "Refiner: refiner [" in text and "Refiner switch at: 0.6" in text
    # A refiner alone is refused in one sentence; so is a base of another family.
    with pytest.raises(ParamError, match="SDXL refiner") as error:
        validate_task(ctx, "txt2img", {"prompt": "x", "model": str(refiner)})
    assert error.value.field == "model"
    with pytest.raises(ParamError) as error:
        run_task(ctx, "txt2img_refiner", dict(params, model=models["pixart-alpha"]))
    assert error.value.field == "model"


def test_tabs_learn_which_controls_a_family_lacks(models):
    from studio.ui.family_controls import control_updates, family_refuses

    label, refused = family_refuses(models["lcm"])
    assert label.startswith("Latent Consistency") and "negative_prompt" in refused
    assert family_refuses(None)[1] == set()
    negative, steps = control_updates(models["lcm"], ("negative_prompt", "steps"))
    assert negative["interactive"] is False and "Latent Consistency" in negative["info"]
    assert negative["value"] == ""  # back to what the family accepts
    assert steps["interactive"] is True
    sampler, = control_updates(models["kandinsky22"], ("scheduler",))
    assert sampler["interactive"] is False and sampler["value"] == "DPM++ 2M"
    assert control_updates(models["sdxl"], ("scheduler",))[0]["interactive"] is True


def test_the_hires_fix_needs_a_family_with_img2img(ctx, models):
    with pytest.raises(ParamError, match="PixArt-α does not do img2img") as error:
        validate_task(ctx, "hires", {"prompt": "x", "model": models["pixart-alpha"]})
    assert error.value.field == "model"
    validate_task(ctx, "hires", {"prompt": "x", "model": models["sd3"]})
