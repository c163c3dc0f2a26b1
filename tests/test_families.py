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


@pytest.mark.parametrize("family", ["kandinsky22", "sd3", "lcm"])
def test_img2img_and_inpaint_where_the_family_has_them(ctx, models, family):
    """Kandinsky 2.2 inpaints with its own 9-channel decoder only, LCM not at: both refuse."""
    model = models[family]
    root = run_task(ctx, "txt2img", {"prompt": "a tree", "steps": 2, "seed": 1, "width": 64,
                                     "height": 64, "model": model})
    parent = root.item_ids[0]
    params = {"prompt": "a tree at night", "steps": 4, "seed": 2, "strength": 0.5,
              "init_image_id": parent, "model": model}
    child = run_task(ctx, "img2img", params)
    twin = run_task(ctx, "img2img", params)
    assert np.array_equal(_pixels(ctx, child.item_ids[0]), _pixels(ctx, twin.item_ids[0]))
    item = ctx.gallery.get(child.item_ids[0])
    assert item.parent_id == parent
    assert "Denoising strength: 0.5" in read_png_metadata(str(item.file_path))["parameters"]
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


# ------------------------------------------------------------------ the models inventory
def test_import_list_hash_use_and_delete_a_folder(ctx, built):
    from studio.model_inventory import delete_model
    from studio.models import list_offered

    source = built["pixart-alpha"]
    validate_task(ctx, "import_model", {"path": str(source)})
    result = run_task(ctx, "import_model", {"path": str(source)})
    assert result.info["kind"] == "checkpoint" and result.info["family"] == "PixArt-α"
    target = Path(ctx.config.models_dir) / "Stable-diffusion" / source.name
    entry = next(e for e in list_offered(ctx, "checkpoint") if e.path == str(target))
    import hashlib

    weights = sorted((target / "transformer").glob("*.safetensors"))[0]
    assert entry.sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert entry.short_hash == entry.sha256[:10] and entry.deletable and entry.size_bytes > 0
    assert any(e.kind == "checkpoint" and e.name == "genstudio-tiny-sd" and not e.deletable
               for e in list_offered(ctx))
    # The imported model is offered to txt2img, and its hash is the infotext's Model hash.
    made = run_task(ctx, "txt2img", {"prompt": "x", "steps": 2, "seed": 1, "width": 64,
                                     "height": 64, "model": str(target)})
    assert ctx.gallery.get(made.item_ids[0]).params["model_hash"] == entry.short_hash
    with pytest.raises(ParamError, match="already in the models folder"):
        validate_task(ctx, "import_model", {"path": str(source)})
    delete_model(ctx, str(target))
    assert not target.exists()
    with pytest.raises(ParamError):
        validate_task(ctx, "txt2img", {"prompt": "x", "model": str(target)})
    with pytest.raises(ParamError, match="offline"):
        validate_task(ctx, "import_model", {"source": "kandinsky-community/kandinsky-2-2-decoder"})
    with pytest.raises(ParamError) as error:
        delete_model(ctx, "/etc/hostname")
    assert error.value.field == "path"


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
    assert steps["interactive"] is True


def test_every_kind_is_listed_and_a_controlnet_folder_imports(ctx, tmp_path):
    import torch
    from diffusers import ControlNetModel

    from studio.models import list_offered

    torch.manual_seed(0)
    folder = tmp_path / "tiny-controlnet"
    ControlNetModel(block_out_channels=(32, 64), layers_per_block=1, in_channels=4,
                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                    cross_attention_dim=768, conditioning_embedding_out_channels=(16, 32),
                    norm_num_groups=8, attention_head_dim=4).save_pretrained(folder)
    result = run_task(ctx, "import_model", {"path": str(folder)})
    assert result.info["kind"] == "controlnet" and result.info["family"] == "SD 1.x"
    assert (Path(ctx.config.models_dir) / "ControlNet" / "tiny-controlnet").is_dir()
    kinds = {e.kind for e in list_offered(ctx)}
    assert {"checkpoint", "controlnet", "upscaler", "llm", "style"} <= kinds
    with pytest.raises(ParamError) as error:
        list_offered(ctx, "hypernetwork")
    assert error.value.field == "kind"
    pickled = tmp_path / "old.ckpt"
    pickled.write_bytes(b"not really")
    with pytest.raises(ParamError, match="pickled") as error:
        validate_task(ctx, "import_model", {"path": str(pickled)})


# ------------------------------------------------------------------ import by URL (resumable)
@pytest.fixture
def file_server(tmp_path):
    """A local HTTP server for tmp_path/served that honours Range (as model hosts do)."""
    import http.server
    import threading

    served, ranges = tmp_path / "served", []
    served.mkdir()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            data = (served / self.path.lstrip("/")).read_bytes()
            start = 0
            if self.headers.get("Range"):
                ranges.append(self.headers["Range"])
                start = int(self.headers["Range"].split("=")[1].split("-")[0])
            self.send_response(206 if start else 200)
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            self.wfile.write(data[start:])

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield served, f"http://127.0.0.1:{server.server_port}", ranges
    server.shutdown()


def test_import_by_url_resumes_and_needs_downloads_allowed(ctx, file_server, monkeypatch):
    import dataclasses

    import torch
    from safetensors.torch import save_file

    served, base, ranges = file_server
    save_file({f"lora_unet_block_{i}.lora_down.weight": torch.randn(4, 64) for i in range(8)},
              str(served / "my-lora.safetensors"))
    url = f"{base}/my-lora.safetensors"
    with pytest.raises(ParamError, match="offline"):  # the test studio is offline
        validate_task(ctx, "import_model", {"source": url})
    ctx.config = dataclasses.replace(ctx.config, offline=False)
    with pytest.raises(ParamError, match="GENSTUDIO_ALLOW_DOWNLOADS"):
        validate_task(ctx, "import_model", {"source": url})
    monkeypatch.setenv("GENSTUDIO_ALLOW_DOWNLOADS", "1")
    with pytest.raises(ParamError, match="pickled"):
        validate_task(ctx, "import_model", {"source": f"{base}/model.ckpt"})
    # A download that broke off halfway: its partial is resumed with a Range request.
    whole = (served / "my-lora.safetensors").read_bytes()
    staging = Path(ctx.config.models_dir) / ".downloads"
    staging.mkdir(parents=True)
    (staging / ".my-lora.safetensors.partial").write_bytes(whole[:1000])
    progress = []
    result = run_task(ctx, "import_model", {"source": url}, on_progress=progress.append)
    assert ranges == ["bytes=1000-"]
    target = Path(ctx.config.models_dir) / "Lora" / "my-lora.safetensors"
    assert target.read_bytes() == whole and result.info["kind"] == "lora"
    assert any("downloading my-lora.safetensors" in (p.message or "") for p in progress)
    assert progress[0].total == len(whole)


def test_the_models_tab_tells_paths_from_downloads(tmp_path):
    from studio.ui.models import import_params

    assert import_params(str(tmp_path), "auto") == {"path": str(tmp_path)}
    assert import_params("https://example.org/a.safetensors", "lora") == {
        "source": "https://example.org/a.safetensors", "kind": "lora"}
    assert import_params("kandinsky-community/kandinsky-2-2-decoder", None) == {
        "source": "kandinsky-community/kandinsky-2-2-decoder"}
