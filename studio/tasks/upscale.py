"""Upscale task ("upscale", engine "upscale"): one image or a batch through an upscaler, as
A1111's Extras tab. Every caller (the Upscale tab, the queue, /sdapi/v1/extra-*) passes a
JSON-able dict:

  image_id | image            one gallery item id (the parent), or an upload id (upload:...,
                              studio/uploads.py) or a base64 / data-URL image
  image_ids | images          several of either (at most 64); every result is saved at once
  upscaler                    a name from engines/upscale/catalog.py (Lanczos, Nearest,
                              R-ESRGAN AnimeVideo, R-ESRGAN 4x+, files in models/ESRGAN...),
                              default "R-ESRGAN AnimeVideo" (alias upscaler_1)
  scale                       1..8, default 2 (alias upscaling_resize)
  width, height               a target size instead (aliases upscaling_resize_w/_h)
  crop                        fill the target and crop (default true; alias upscaling_crop)
  upscaler_2, upscaler_2_visibility   A1111's second upscaler, blended in at 0..1
  tile, tile_overlap          tiling of large images (defaults 192 / 16 input pixels)
  save_input                  an uploaded image is saved first as the result's parent
                              (default true), so every result has its source in the gallery

Queued jobs (JobQueue.check, studio/uploads.py ImageIntake) hold ids only: an inline `image` /
`images` becomes a gallery upload item `image_id` / `image_ids` when the job is queued (the
results' parents, as before), or, with save_input false, an upload id that stays out of the
gallery. Called directly (run_task), an inline image is saved as the parent when the results are.

Each result is a child of its source; its infotext is the source's A1111 parameters (when it
has some) plus A1111's "Postprocess upscale by / Postprocess upscaler" entries.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from PIL import Image

from engines.base import ParamError, Progress
from studio.gallery.pnginfo import format_infotext, read_png_metadata
from studio.gallery.store import NewImage
from studio.tasks import TaskResult, TaskSpec, register
from studio.tasks.image import decode_image
from studio.uploads import is_upload_ref, open_upload

ENGINE = "upscale"
FIELDS = ("image", "image_id", "images", "image_ids", "upscaler", "scale", "width", "height",
          "crop", "upscaler_2", "upscaler_2_visibility", "tile", "tile_overlap", "save_input")
MAX_IMAGES = 64
DEFAULT_SCALE = 2.0


@dataclass
class Source:
    image: Image.Image
    item_id: int | None  # the gallery item it came from, None for an upload
    label: str = "image"  # how errors name it: image, image_id, images[2]...


@dataclass
class Prepared:
    sources: list[Source]
    upscaler: Any  # engines.upscale.catalog.Upscaler
    upscaler_2: Any | None
    visibility: float
    settings: dict  # scale/width/height/crop/tile/tile_overlap, as the engine's params take
    stored: dict
    save_input: bool


def models_dirs(ctx) -> tuple:
    return (ctx.config.models_dir, *ctx.config.extra_models_dirs)


def _normalise(params: dict) -> dict:
    if not isinstance(params, dict):
        raise ValueError(f"parameters must be an object, got {type(params).__name__}")
    out = dict(params)
    for name in ("width", "height"):  # 0 means "not set" (as A1111's extras send it)
        if out.get(name) == 0:
            out.pop(name)
    unknown = sorted(set(out) - set(FIELDS))
    if unknown:
        raise ValueError(f"unknown parameter(s) for upscale: {', '.join(unknown)}")
    return out


def _sources(ctx, p: dict) -> list[Source]:
    """The input images, from exactly one of image_id / image / image_ids / images."""
    given = [name for name in ("image_id", "image", "image_ids", "images") if p.get(name) is not None]
    if len(given) != 1:
        raise ParamError("image", "give one of `image_id`, `image`, `image_ids` or `images`"
                         + (f" (got {', '.join(given)})" if given else ""))
    name = given[0]
    values = p[name] if name.endswith("s") else [p[name]]
    if not isinstance(values, list) or not values or len(values) > MAX_IMAGES:
        raise ParamError(name, f"`{name}` must be a list of 1 to {MAX_IMAGES} images")
    sources = []
    for index, value in enumerate(values):
        label = f"{name}[{index}]" if name.endswith("s") else name
        if name.startswith("image_id"):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ParamError(name, f"`{label}` must be a gallery item id, got {value!r}")
            try:
                sources.append(Source(ctx.gallery.open_image(value), value, label))
            except LookupError:
                raise ParamError(name, f"`{label}`: no gallery item with id {value}") from None
        elif is_upload_ref(value):  # stored once when queued (studio/uploads.py)
            sources.append(Source(open_upload(ctx, value, name), None, label))
        else:
            try:
                sources.append(Source(decode_image(value, label), None, label))
            except ValueError as error:
                raise ParamError(name, str(error)) from None
    return sources


def prepare(ctx, params: dict) -> Prepared:
    """Check and convert a request; raises ParamError naming the field. Loads no weights."""
    from engines.upscale.catalog import DEFAULT_UPSCALER, resolve
    from engines.upscale.params import UpscaleParams

    p = _normalise(params)
    sources = _sources(ctx, p)
    upscaler = resolve(p.get("upscaler", DEFAULT_UPSCALER), models_dirs(ctx), "upscaler")
    second = p.get("upscaler_2")
    upscaler_2 = None
    if second not in (None, "", "None"):
        upscaler_2 = resolve(second, models_dirs(ctx), "upscaler_2")
    visibility = p.get("upscaler_2_visibility", 0.0 if upscaler_2 is None else 0.5)
    if isinstance(visibility, bool) or not isinstance(visibility, (int, float)) or not 0 <= visibility <= 1:
        raise ParamError("upscaler_2_visibility", f"`upscaler_2_visibility` must be 0..1, got "
                                                  f"{visibility!r}")
    settings = {k: p[k] for k in ("scale", "width", "height", "crop", "tile", "tile_overlap")
                if p.get(k) is not None}
    settings.setdefault("scale", DEFAULT_SCALE)
    for source in sources:  # every image checked (size budgets) before any work
        try:
            UpscaleParams(image=source.image, **settings)
        except ParamError as error:  # named as the request gave it: `images[1]`
            if error.field != "image" or source.label == "image":
                raise
            raise ParamError(source.label.partition("[")[0], str(error).replace(
                "`image`", f"`{source.label}`", 1)) from None
    save_input = p.get("save_input", True)
    if not isinstance(save_input, bool):
        raise ParamError("save_input", f"`save_input` must be true or false, got {save_input!r}")
    stored = dict(settings, upscaler=upscaler.name)
    if upscaler_2 is not None:
        stored.update(upscaler_2=upscaler_2.name, upscaler_2_visibility=visibility)
    return Prepared(sources, upscaler, upscaler_2, float(visibility), settings, stored, save_input)


def upscale_images(ctx, upscaler, images: list[Image.Image], settings: dict, on_progress,
                   cancel, label: str = "upscaling") -> tuple[list[Image.Image], dict]:
    """Run one upscaler over images on the device lock; progress counts images."""
    from engines.upscale.params import UpscaleParams

    results, info = [], {}
    with ctx.engines.use(ENGINE, upscaler.model_id) as engine:
        for index, image in enumerate(images):
            def step(progress, index=index):
                on_progress(Progress(index * 100 + int(progress.fraction * 100),
                                     len(images) * 100,
                                     f"{label} image {index + 1}/{len(images)}: "
                                     f"{progress.message}"))

            output = engine.generate(UpscaleParams(image=image, **settings), step, cancel)
            results.append(output.images[0])
            info = output.info
    return results, info


def postprocess_infotext(ctx, source: Source, stored: dict, result: Image.Image) -> tuple:
    """(prompt, negative, infotext): the source's A1111 parameters plus A1111's extras keys."""
    prompt = negative = ""
    base = None
    if source.item_id is not None:
        item = ctx.gallery.get(source.item_id)
        prompt, negative = item.prompt, item.negative_prompt
        if item.file_path is not None and item.file_path.suffix.lower() == ".png":
            base = read_png_metadata(item.file_path.read_bytes()).get("parameters")
    extras = {"Postprocess upscale by": round(result.width / source.image.width, 4),
              "Postprocess upscaler": stored["upscaler"]}
    if stored.get("upscaler_2"):
        extras["Postprocess upscaler 2"] = stored["upscaler_2"]
        extras["Postprocess upscaler 2 visibility"] = stored["upscaler_2_visibility"]
    extra_text = format_infotext("", "", extras).strip()
    if base:
        return prompt, negative, f"{base}, {extra_text}"
    return prompt, negative, format_infotext(prompt, negative, dict(
        extras, Size=f"{result.width}x{result.height}", Version="GenStudio"))


def blend(first: Image.Image, second: Image.Image, visibility: float) -> Image.Image:
    """A1111's second upscaler: mixed in at `visibility` (0 = first only)."""
    if second.size != first.size:
        second = second.resize(first.size, Image.LANCZOS)
    if second.mode != first.mode:
        second = second.convert(first.mode)
    return Image.blend(first, second, visibility)


def validate(ctx, params: dict) -> None:
    prepare(ctx, params)


def run(ctx, params: dict, on_progress, cancel) -> TaskResult:
    # 1. Check and convert everything before the device is taken.
    prepared = prepare(ctx, params)
    started = time.perf_counter()
    images = [source.image for source in prepared.sources]
    # 2. Upscale every image (the second upscaler too, when one is blended in).
    results, info = upscale_images(ctx, prepared.upscaler, images, prepared.settings,
                                   on_progress, cancel)
    if prepared.upscaler_2 is not None and prepared.visibility > 0:
        seconds, _ = upscale_images(ctx, prepared.upscaler_2, images, prepared.settings,
                                    on_progress, cancel, "second upscaler:")
        results = [blend(a, b, prepared.visibility) for a, b in zip(results, seconds)]
    seconds_each = round((time.perf_counter() - started) / len(results), 3)
    # 3. Save: uploads first (the parents), then every result in one call; undo the uploads if
    #    that fails, so nothing is left half-written.
    saved_inputs = []
    try:
        for source in prepared.sources:
            if source.item_id is None and prepared.save_input:
                item = ctx.gallery.add_image(source.image, task="upload", engine="",
                                             prompt="uploaded image",
                                             params={"source": "upscale"})
                saved_inputs.append(item)
                source.item_id = item.id
        entries = []
        for source, result in zip(prepared.sources, results):
            prompt, negative, text = postprocess_infotext(ctx, source, prepared.stored, result)
            stored = dict(prepared.stored, image_id=source.item_id, width=result.width,
                          height=result.height)
            entries.append(NewImage(image=result, task="upscale", engine=ENGINE,
                                    model=prepared.upscaler.name, prompt=prompt,
                                    negative_prompt=negative, params=stored,
                                    duration_s=seconds_each, parent_id=source.item_id,
                                    infotext=text))
        items = ctx.gallery.add_images(entries, job_id=ctx.job_id)
    except BaseException:
        for item in saved_inputs:
            ctx.gallery.delete(item.id)
        raise
    info = dict(info, upscaler=prepared.upscaler.name, parent_ids=[s.item_id for s in
                                                                   prepared.sources],
                infotexts=[e.infotext for e in entries], seconds_per_image=seconds_each)
    return TaskResult(item_ids=[i.id for i in items], images=results, info=info)


register(TaskSpec("upscale", ENGINE, validate, run,
                  "Upscale images (Real-ESRGAN, ESRGAN-family files, Lanczos), as A1111's Extras"))
