"""Image tasks: txt2img, img2img, inpaint, outpaint (engine "diffusion").

Every caller (the tabs, the queue, the A1111 API) passes a JSON-able dict. Names follow the
diffusers engine; the meaning is AUTOMATIC1111's. A1111's own names (cfg_scale, sampler_name...)
are translated at the boundary, by studio/api/a1111_names.py, never here.

Common to all four:
  prompt, negative_prompt      text (at most 4,000 characters; CLIP reads ~75 tokens)
  steps                        1..150, default 20
  guidance_scale               A1111 "CFG scale", 0..30, default 7
  scheduler                    A1111 sampler + schedule type in one name :
                               Euler, Euler a, DDIM, DPM++ 2M, DPM++ 2M Karras, UniPC, LCM
  seed                         -1 = random; image i of the request gets seed + i
  batch_size, batch_count      images per run, runs; at most 64 images in all
  width, height                multiples of 8, 64..4096, pixel budget 2048x2048; default: the
                               model's native size (txt2img) or the input image's (others)
  model                        engine model id; default "genstudio-tiny-sd"
  preview_every                a preview every N steps (0 = none), default 5
  token_merging                A1111 "Token merging ratio" (ToMe), 0..0.75, default 0 (exact);
                               faster at large sizes, slightly different images
  step_cache                   0..5, default 0 (exact): DeepCache-style, the whole UNet every N
                               steps, its shallowest level in between; faster, approximate
  clip_skip                    A1111 "Clip skip" 1..12, default 1 (the last CLIP layer); SD 1.x
                               only, as in A1111 (SD 2.x and SDXL ignore it, with a warning)
  sdxl_clip_l_skip             A1111 "Clip skip SDXL" (option sdxl_clip_l_skip), default false:
                               SDXL's CLIP-L reads layer `clip_skip` from the end (not its
                               penultimate); no effect on SD 1.x / 2.x
  use_old_scheduling           A1111 "Use old prompt editing timelines", default false: in
                               [from:to:when] a `when` below 1 is a fraction, any other a step
  vae                          a VAE from <data>/models/VAE by file name (A1111's `sd_vae`),
                               or "Automatic" / "None" / absent: the model's own
  <lora:name:weight> in the prompt   a LoRA from <data>/models/Lora (subfolders too); an unknown
                               name, unreadable file or another model family is refused here
  embeddings                   a file name from <data>/models/embeddings in the prompt
txt2img only:
  candidates, keep             DALL-E-style best-of-N: generate `candidates`, keep the `keep`
                               best by CLIP score (0 = off)
img2img, inpaint, outpaint:
  init_image_id | init_image   a gallery item id (becomes the parent), or a base64 PNG/JPEG or
                               data URL string, which the queue stores as a gallery upload
                               item: the job row keeps `init_image_id` (studio/uploads.py)
  strength                     A1111 "Denoising strength" 0..1
inpaint:
  mask_id | mask               white = repaint; the same size as the image; `mask` is an upload
                               id ("upload:<sha256>", studio/uploads.py) or, from a client, a
                               base64 image that the queue stores as one
  mask_blur                    feathering in pixels, inside the mask only (default 4)
  inpaint_full_res             A1111 "Inpaint area: Only masked" (default false)
  inpaint_full_res_padding     context pixels around the mask's box (default 32)
  inpainting_fill              masked content: "fill", "original", "latent noise",
                               "latent nothing" (default "original")
txt2img, img2img, inpaint:
  controlnet                   ControlNet units, a list of {model, image_id | image, module,
                               weight, guidance_start, guidance_end, resize_mode, ...}
                               (studio/tasks/controlnet.py)
outpaint:
  sides                        some of left, right, up, down (default all four)
  pixels                       added per side, a multiple of 8 (default 64)
  mask_blur, inpainting_fill   as inpaint (defaults 8 and "fill"); strength default 1.0

Results land in the gallery in one call once every image exists (a failure or a cancel writes
nothing): full params with each image's own seed, `parent_id` lineage, and the A1111
`parameters` PNG chunk.
"""
from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from engines.base import ParamError
from studio.gallery.pnginfo import format_infotext
from studio.gallery.store import NewImage
from studio.models import check_diffusion_model, check_family
from studio.tasks import TaskResult, TaskSpec, register
from studio.tasks.controlnet import (check_units_fit, control_units, controlnet_dirs,
                                     infotext_settings)
from studio.uploads import is_upload_ref, open_upload

ENGINE = "diffusion"
COMMON = ("prompt", "negative_prompt", "steps", "guidance_scale", "width", "height", "seed",
          "batch_size", "batch_count", "scheduler", "preview_every", "token_merging",
          "step_cache", "vae", "clip_skip", "sdxl_clip_l_skip", "use_old_scheduling")
FIELDS = {
    "txt2img": COMMON + ("candidates", "keep", "controlnet"),
    "img2img": COMMON + ("strength", "controlnet"),
    "inpaint": COMMON + ("strength", "mask_blur", "inpaint_full_res", "inpaint_full_res_padding",
                         "inpainting_fill", "controlnet"),
    "outpaint": COMMON + ("strength", "sides", "pixels", "mask_blur", "inpainting_fill"),
}
PARAMS_CLASS = {"txt2img": "Txt2ImgParams", "img2img": "Img2ImgParams",
                "inpaint": "InpaintParams", "outpaint": "OutpaintParams"}
MAX_UPLOAD_BYTES = 32 << 20
# Written into saved params for the record; accepted back (and ignored) so saved params re-run.
RECORD_ONLY = ("model_hash", "clip_score")


@dataclass
class Prepared:
    engine_params: Any  # the engine's frozen params dataclass
    stored: dict  # what the gallery keeps (images as ids or small masks, never big blobs)
    parent_id: int | None
    model: str | None


# ------------------------------------------------------------------ images in params
def decode_image(value: Any, name: str) -> Image.Image:
    """A PIL image from a PIL image, a base64 string or a data URL; ValueError otherwise."""
    if isinstance(value, Image.Image):
        return value
    if not isinstance(value, str) or not value.strip():
        raise ParamError(name, f"`{name}` must be a base64 image or a data URL, got "
                         f"{type(value).__name__}")
    data = value.strip()
    if data.startswith("data:"):
        data = data.partition(",")[2]
    if len(data) > MAX_UPLOAD_BYTES * 4 // 3 + 4:
        raise ParamError(name, f"`{name}` is larger than {MAX_UPLOAD_BYTES >> 20} MB")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ParamError(name, f"`{name}` is not valid base64: {error}") from None
    from studio.images import open_user_image  # size from the header first; 5 formats only

    return open_user_image(raw, name=name)


def encode_image(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _gallery_image(ctx, item_id: Any, name: str) -> Image.Image:
    if isinstance(item_id, bool) or not isinstance(item_id, int):
        raise ParamError(name, f"`{name}` must be a gallery item id, got {item_id!r}")
    try:
        return ctx.gallery.open_image(item_id)
    except LookupError:
        raise ParamError(name, f"`{name}`: no gallery item with id {item_id}") from None


def _resolve_image(ctx, params: dict, name: str) -> tuple[Image.Image | None, int | None]:
    """(image, gallery id) from `<name>_id` or `<name>` (an upload id, a base64 image or a PIL
    image); (None, None) when neither is given."""
    if params.get(f"{name}_id") is not None:
        item_id = params[f"{name}_id"]
        return _gallery_image(ctx, item_id, f"{name}_id"), item_id
    if is_upload_ref(params.get(name)):  # stored once at the boundary (studio/uploads.py)
        return open_upload(ctx, params[name], name), None
    if params.get(name) is not None:
        return decode_image(params[name], name), None
    return None, None


# ------------------------------------------------------------------ params -> engine params
def _normalise(params: dict) -> dict:
    out = dict(params)
    if isinstance(out.get("sides"), list):
        out["sides"] = tuple(out["sides"])
    if out.get("controlnet") in ([], ()):  # no units: the same as none (any family takes it)
        del out["controlnet"]
    return out


def prepare(ctx, task: str, params: dict) -> Prepared:
    """Check and convert a request; raises ValueError naming the field. Loads no weights."""
    if not isinstance(params, dict):
        raise ValueError(f"parameters must be an object, got {type(params).__name__}")
    p = {k: v for k, v in _normalise(params).items() if k not in RECORD_ONLY}
    allowed = set(FIELDS[task]) | {"model", "init_image", "init_image_id", "mask", "mask_id"}
    unknown = sorted(set(p) - allowed)
    if unknown:
        raise ValueError(f"unknown parameter(s) for {task}: {', '.join(unknown)}")
    if "prompt" not in p:
        raise ParamError("prompt", "`prompt` is required")
    model = p.get("model")
    if model is not None:
        check_diffusion_model(ctx, model)  # only the studio's own models (studio/models.py)
        check_family(model, task, p)  # the family runs this task and takes these fields
    kwargs = {k: p[k] for k in FIELDS[task] if k in p and p[k] is not None}
    stored = {k: v for k, v in kwargs.items()}
    kwargs.update(extra_networks(ctx, kwargs.pop("vae", None)))
    if "controlnet" in kwargs:  # ControlNet units: images by gallery id (studio/tasks/controlnet.py)
        kwargs["controlnet"], stored["controlnet"] = control_units(ctx, kwargs["controlnet"])
        kwargs["controlnet_dirs"] = controlnet_dirs(ctx)
    parent_id = None
    if task != "txt2img":
        image, parent_id = _resolve_image(ctx, p, "init_image")
        if image is None:
            raise ValueError(f"{task} needs `init_image_id` or `init_image`")
        kwargs["init_image"] = image
        if parent_id is not None:
            stored["init_image_id"] = parent_id
    if task == "inpaint":
        mask, mask_id = _resolve_image(ctx, p, "mask")
        if mask is None:
            raise ValueError("inpaint needs `mask_id` or `mask` (white = repaint)")
        kwargs["mask"] = mask
        if mask.size != kwargs["init_image"].size:  # checked before any work on the mask
            raise ParamError("mask", f"`mask` is {mask.width}x{mask.height} but the image is "
                             f"{kwargs['init_image'].width}x{kwargs['init_image'].height}")
        if mask_id is not None:
            stored["mask_id"] = mask_id
        else:  # small once binarised: keep it so "reuse parameters" can repeat the edit
            binary = mask.convert("L").point(lambda v: 255 if v > 127 else 0).convert("1")
            stored["mask"] = encode_image(binary)
    engine_class = _engine_class(ctx)
    engine_params = getattr(engine_class, PARAMS_CLASS[task])(**kwargs)  # checks every value
    check_loras_fit(ctx, engine_params, model)
    if engine_params.controlnet:
        from engines.diffusion.lora import model_dims

        model_id = model or _default_model(ctx)
        check_units_fit(engine_params.controlnet, engine_params.controlnet_dirs,
                        model_dims(model_id), Path(model_id).name)
    if model:
        stored["model"] = model
    return Prepared(engine_params, stored, parent_id, model)


def model_folders(ctx, kind: str) -> tuple[str, ...]:
    """A1111's folder names under <data>/models: "Lora", "embeddings", "VAE"."""
    return (str(Path(ctx.config.models_dir) / kind),)


def extra_networks(ctx, vae: Any) -> dict:
    """The engine's folder and VAE params for this studio's data folder."""
    from engines.diffusion.vae import resolve_vae

    if vae is not None and not isinstance(vae, str):
        raise ParamError("vae", f"`vae` must be a VAE file name or \"Automatic\", got {vae!r}")
    path = resolve_vae(vae, model_folders(ctx, "VAE"))
    return {"lora_dirs": model_folders(ctx, "Lora"),
            "embedding_dirs": model_folders(ctx, "embeddings"),
            "vae": str(path) if path else None}


def check_loras_fit(ctx, params, model: str | None) -> None:
    """A LoRA for another model family is refused before the job runs (headers only)."""
    from engines.diffusion import lora

    loras = lora.resolve(lora.parse_tags(params.prompt)[1], params.lora_dirs)
    if not loras:
        return
    model_id = model or _default_model(ctx)
    dims = lora.model_dims(model_id)
    for info, _ in loras:
        lora.check_fits(info, dims, Path(model_id).name)


def _default_model(ctx) -> str:
    try:
        return ctx.engines.spec(ENGINE).default_model
    except ValueError:
        from engines.diffusion.loading import DEFAULT_MODEL

        return DEFAULT_MODEL


def _engine_class(ctx):
    try:
        return ctx.engines.engine_class(ENGINE)
    except ValueError:  # a manager without the diffusion engine registered (tools, tests)
        from engines.diffusion.engine import DiffusionEngine

        return DiffusionEngine


# ------------------------------------------------------------------ infotext
def infotext(engine_info: dict, params, seed: int, width: int, height: int, task: str) -> str:
    """A1111's `parameters` text: key names and order as A1111 writes them."""
    settings: dict[str, Any] = {
        "Steps": params.steps,
        "Sampler": engine_info.get("sampler"),
        "Schedule type": engine_info.get("schedule_type"),
        "CFG scale": params.guidance_scale,
        "Seed": seed,
        "Size": f"{width}x{height}",
        "Model hash": engine_info.get("model_hash"),
        "Model": engine_info.get("model"),
    }
    if task != "txt2img":
        settings["Denoising strength"] = params.strength
    if params.clip_skip > 1:
        settings["Clip skip"] = params.clip_skip  # A1111 writes the setting, whatever the model
    if params.token_merging:
        settings["Token merging ratio"] = params.token_merging
    if params.step_cache > 1:
        settings["Step cache"] = params.step_cache  # DeepCache-style: full UNet every N steps
    if engine_info.get("unet_backend"):
        settings["UNet backend"] = engine_info["unet_backend"]  # e.g. OpenVINO bf16
    vae = engine_info.get("vae")
    if vae:
        settings["VAE hash"], settings["VAE"] = vae["hash"], vae["name"]
    if task in ("inpaint", "outpaint"):
        settings["Mask blur"] = params.mask_blur
    if task == "inpaint" and params.inpaint_full_res:
        settings["Inpaint area"] = "Only masked"
        settings["Masked area padding"] = params.inpaint_full_res_padding
    if task == "outpaint":
        settings["Outpaint sides"] = " ".join(params.sides)
        settings["Outpaint pixels"] = params.pixels
    # A1111's extra-network records: "name: short hash" for every LoRA / embedding used.
    loras = [f"{r['name'].replace(':', '').replace(',', '')}: {r['hash']}"
             for r in engine_info.get("loras") or ()]
    if loras:
        settings["Lora hashes"] = ", ".join(loras)
    if engine_info.get("old_prompt_editing"):  # on, and it changed a schedule (as A1111)
        settings["Old prompt editing timelines"] = True
    embeddings = [f"{r['name']}: {r['hash']}" for r in engine_info.get("embeddings") or ()]
    if embeddings:
        settings["TI hashes"] = ", ".join(embeddings)
    settings.update(infotext_settings(getattr(params, "controlnet", ()), engine_info))
    settings["Version"] = "GenStudio"
    return format_infotext(params.prompt, params.negative_prompt, settings)


# ------------------------------------------------------------------ run
def _validate(task: str):
    def validate(ctx, params: dict) -> None:
        prepare(ctx, task, params)
    return validate


def _run(task: str):
    def run(ctx, params: dict, on_progress, cancel) -> TaskResult:
        # 1. Check and convert everything before the device is taken.
        prepared = prepare(ctx, task, params)
        p = prepared.engine_params
        # 2. Generate every image on the device lock.
        with ctx.engines.use(ENGINE, prepared.model) as engine:
            result = engine.generate(p, on_progress, cancel)
        # 3. Save all of them in one call (all or nothing).
        per_image = result.info.get("seconds", 0.0) / max(1, len(result.images))
        entries = []
        for index, (image, seed) in enumerate(zip(result.images, result.seeds)):
            stored = dict(prepared.stored, seed=seed, width=image.width, height=image.height,
                          scheduler=p.scheduler, steps=p.steps, guidance_scale=p.guidance_scale,
                          model_hash=result.info.get("model_hash"))
            if result.scores is not None:
                stored["clip_score"] = round(result.scores[index], 4)
            entries.append(NewImage(
                image=image, task=task, engine=ENGINE, model=result.info.get("model", ""),
                prompt=p.prompt, negative_prompt=p.negative_prompt, params=stored, seed=seed,
                duration_s=round(per_image, 3), parent_id=prepared.parent_id,
                infotext=infotext(result.info, p, seed, image.width, image.height, task)))
        items = ctx.gallery.add_images(entries, job_id=ctx.job_id)
        info = dict(result.info, seeds=result.seeds, infotexts=[e.infotext for e in entries],
                    scores=result.scores)
        return TaskResult(item_ids=[i.id for i in items], images=result.images, info=info)
    return run


DESCRIPTIONS = {
    "txt2img": "Text to image with a Stable Diffusion-family model",
    "img2img": "Image to image: re-draw an image guided by a prompt",
    "inpaint": "Repaint the masked part of an image",
    "outpaint": "Extend an image beyond its borders",
}
for _name in ("txt2img", "img2img", "inpaint", "outpaint"):
    register(TaskSpec(_name, ENGINE, _validate(_name), _run(_name), DESCRIPTIONS[_name]))
