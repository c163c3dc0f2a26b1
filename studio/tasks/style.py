"""Style transfer task ("style", engine "style") and background training of new styles.

Params of the "style" task (a JSON-able dict; the queue stores it as is):
  style                    a style id from `engines.style.list_styles`: "vintage" (pretrained
                           GAN), an embedded style ("ink"...), "user:<name>", or "arbitrary"
                           (not a GAN; needs a style image). Default "vintage".
  image_id | image         the photo: a gallery item id (becomes the parent), or a base64 / data
                           URL string (or a PIL image from an in-process caller); the queue
                           stores an inline photo as a gallery upload (`image_id`), or, with
                           save_input false, as an upload id (studio/uploads.py)
  strength                 0..1, default 1: blends the result with the input
  output_side              long side of the result in pixels, 16..4096; default the input's
  style_image_id | style_image   arbitrary mode only: the painting whose style to take (inline,
                           it is stored as an upload id by the queue)
  save_input               default true: an uploaded photo (not from the gallery) is saved to
                           the gallery too, as the result's parent, so lineage is kept

Training a new style is the "train_style" task (studio/tasks/style_training.py).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from engines.base import ParamError
from studio.gallery.pnginfo import format_infotext
from studio.tasks import TaskResult, TaskSpec, check_fields, register
from studio.tasks.image import decode_image
from studio.uploads import is_upload_ref, open_upload

ENGINE = "style"
FIELDS = ("style", "image", "image_id", "strength", "output_side", "style_image",
          "style_image_id", "save_input")


@dataclass
class Prepared:
    style: Any  # engines.style.StyleInfo
    engine_params: Any  # engines.style.StyleParams
    stored: dict  # what the gallery keeps (no image blobs)
    parent_id: int | None
    input_image: Image.Image  # kept to save an upload as the parent
    save_input: bool


def _image_param(ctx, params: dict, name: str) -> tuple[Image.Image | None, int | None]:
    from engines.style.engine import open_image

    if params.get(f"{name}_id") is not None:
        item_id = params[f"{name}_id"]
        if isinstance(item_id, bool) or not isinstance(item_id, int):
            raise ParamError(f"{name}_id", f"`{name}_id` must be a gallery item id, got {item_id!r}")
        try:
            item = ctx.gallery.get(item_id)
        except LookupError:
            raise ParamError(f"{name}_id", f"`{name}_id`: no gallery item with id {item_id}") from None
        if item.file_path is None:
            raise ParamError(f"{name}_id", f"`{name}_id`: item #{item_id} is text, not an image")
        return open_image(item.file_path, name.replace("_", " ")), item_id
    value = params.get(name)
    if value is None:
        return None, None
    if is_upload_ref(value):  # stored once at the boundary (studio/uploads.py)
        return open_image(open_upload(ctx, value, name), name.replace("_", " ")), None
    if isinstance(value, (Image.Image, bytes, Path)):
        return open_image(value, name.replace("_", " ")), None
    return open_image(decode_image(value, name), name.replace("_", " ")), None


def prepare(ctx, params: dict) -> Prepared:
    """Check and convert a request; raises ValueError naming the field. Loads no weights."""
    from engines.style.engine import StyleParams, find_style

    check_fields("style", params, FIELDS)
    style_id = params.get("style", "vintage")
    if not isinstance(style_id, str):
        raise ParamError("style", f"`style` must be a style id, got {style_id!r}")
    style = find_style(style_id, ctx.config.styles_dir)
    image, parent_id = _image_param(ctx, params, "image")
    if image is None:
        raise ValueError("style needs `image_id` or `image`")
    style_image, style_image_id = _image_param(ctx, params, "style_image")
    if style.kind == "arbitrary" and style_image is None:
        raise ValueError("the arbitrary style needs `style_image_id` or `style_image` (any painting)")
    save_input = params.get("save_input", True)
    if not isinstance(save_input, bool):
        raise ParamError("save_input", f"`save_input` must be true or false, got {save_input!r}")
    engine_params = StyleParams(image=image, strength=params.get("strength", 1.0),
                                output_side=params.get("output_side"),
                                style_image=style_image if style.kind == "arbitrary" else None)
    engine_params.check()
    stored = {"style": style.id, "style_name": style.name, "strength": engine_params.strength,
              "output_side": engine_params.output_side}
    if style_image_id is not None:
        stored["style_image_id"] = style_image_id
    return Prepared(style, engine_params, stored, parent_id, image, save_input)


def validate(ctx, params: dict) -> None:
    prepare(ctx, params)


def run(ctx, params: dict, on_progress, cancel) -> TaskResult:
    # 1. Check and convert everything before the device is taken.
    prepared = prepare(ctx, params)
    started = time.perf_counter()
    # 2. Stylise on the device lock.
    with ctx.engines.use(ENGINE, prepared.style.model_id) as engine:
        output = engine.generate(prepared.engine_params, on_progress, cancel)
    seconds = time.perf_counter() - started
    image = output.image
    style = prepared.style
    text = format_infotext(f"{style.name} style", "", {
        "Style": style.name, "Style id": style.id, "Strength": prepared.engine_params.strength,
        "Size": f"{image.width}x{image.height}", "Model": style.id, "Version": "GenStudio"})
    stored = dict(prepared.stored, width=image.width, height=image.height)

    # 3. Save: an uploaded photo first (the parent), then the result; undo the first if the
    #    second fails, so nothing is left half-written.
    parent_id = prepared.parent_id
    saved_input = None
    if parent_id is None and prepared.save_input:
        saved_input = ctx.gallery.add_image(prepared.input_image, task="upload", engine="",
                                            prompt="uploaded photo", params={"source": "style tab"})
        parent_id = saved_input.id
    stored["image_id"] = parent_id
    try:
        item = ctx.gallery.add_image(
            image, task="style", engine=ENGINE, model=style.id, prompt=f"{style.name} style",
            params=stored, duration_s=round(seconds, 3), parent_id=parent_id, infotext=text,
            job_id=ctx.job_id)  # only the result is the job's output, not the saved upload
    except BaseException:
        if saved_input is not None:
            ctx.gallery.delete(saved_input.id)
        raise
    info = dict(output.info, seconds=round(seconds, 3), parent_id=parent_id, infotext=text)
    return TaskResult(item_ids=[item.id], images=[image], info=info)


register(TaskSpec("style", ENGINE, validate, run,
                  "Restyle a photo with a GAN style (or any painting, not a GAN)"))
