"""A1111 request bodies -> the image tasks' params (studio/api/a1111.py routes them): A1111's
names translated (studio/api/a1111_names.py), input images decoded once and stored as uploads,
the whole request checked once by the task; a refusal is a 422 whose `loc` names the A1111
field."""
from __future__ import annotations

import base64
import io
import secrets
from typing import Any

from fastapi.exceptions import RequestValidationError

from engines.base import ParamError

from studio.api.a1111_controlnet import controlnet_units
from studio.api.a1111_extras import hires_params
from studio.api.a1111_models import Img2ImgRequest, Txt2ImgRequest
from studio.api.a1111_names import FILL_CODES, OPTION_PARAMS, a1111_field, scheduler_name
from studio.api.a1111_runs import Run


def unprocessable(field: str | None, message: str, value: Any = None) -> RequestValidationError:
    loc = ("body", field) if field else ("body",)
    return RequestValidationError([{"loc": loc, "msg": message, "type": "value_error",
                                    "input": value}])


# ------------------------------------------------------------------ request -> task params
def _decode(value: str, field: str):
    from studio.tasks.image import decode_image

    try:
        return decode_image(value, field)
    except ValueError as error:
        raise unprocessable(field, str(error).replace(f"`{field}`", field), None) from None


def _encode_png(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def build_run(ctx, request: Txt2ImgRequest, kind: str, model_id: str | None,
              vae: str | None = None, options: dict | None = None,
              refiner_id: str | None = None) -> Run:
    """The task and per-iteration params of a request; raises 422s naming A1111 fields.
    options: the A1111 options in effect (/sdapi/v1/options, override_settings over them)."""
    if request.n_iter < 1:
        raise unprocessable("n_iter", "n_iter must be at least 1", request.n_iter)
    if request.batch_size < 1:
        raise unprocessable("batch_size", "batch_size must be at least 1", request.batch_size)
    from engines.diffusion.params import MAX_IMAGES, MAX_SEED

    seed = request.seed
    total = request.n_iter * request.batch_size
    if total > MAX_IMAGES:  # before a seed is drawn from what is left below MAX_SEED
        raise unprocessable("n_iter", f"n_iter × batch_size is {total:,}; at most {MAX_IMAGES} "
                            f"images per request", request.n_iter)
    if seed == -1:
        seed = secrets.randbelow(MAX_SEED - total + 2)
    params: dict[str, Any] = {
        "prompt": request.prompt, "negative_prompt": request.negative_prompt, "seed": seed,
        "steps": request.steps, "guidance_scale": request.cfg_scale,
        "batch_size": request.batch_size}
    sampler = request.sampler_name or request.sampler_index
    try:
        scheduler = scheduler_name(sampler, request.scheduler)
    except ParamError as error:
        raise unprocessable(error.field, str(error),
                            sampler if error.field == "sampler_name" else request.scheduler) from None
    if scheduler is not None:
        params["scheduler"] = scheduler
    for name in ("width", "height"):
        if getattr(request, name) is not None:
            params[name] = getattr(request, name)
    if model_id is not None:
        params["model"] = model_id
    if vae not in (None, "Automatic", "None"):  # A1111's sd_vae: a file in models/VAE
        params["vae"] = vae
    for option, (name, default) in OPTION_PARAMS.items():  # clip skip, old timelines...
        value = (options or {}).get(option)
        if value is not None and not (type(value) is type(default) and value == default):
            params[name] = value
    try:  # sd-webui-controlnet units (studio/api/a1111_controlnet.py)
        units = controlnet_units(ctx, request.alwayson_scripts)
    except ParamError as error:
        raise unprocessable("alwayson_scripts", str(error)) from None
    if units:
        params["controlnet"] = units
    task = "txt2img"
    hires = None if isinstance(request, Img2ImgRequest) else hires_params(request)
    if hires is not None:  # A1111's hires fix: a second, img2img pass at the larger size
        task = "hires"
        params.update(hires)
    if refiner_id is not None:  # A1111's Refiner: an SDXL refiner finishes the base's latents
        if hires is not None or isinstance(request, Img2ImgRequest):
            raise unprocessable("refiner_checkpoint", "refiner_checkpoint works with txt2img "
                                "without enable_hr here", request.refiner_checkpoint)
        task = "txt2img_refiner"
        params.update(refiner_checkpoint=refiner_id, refiner_switch_at=request.refiner_switch_at)
    if isinstance(request, Img2ImgRequest):
        task = _img2img_params(request, params)
    # One check of the whole request (n_iter as batch_count: the image count limit), then the
    # per-run params: same except the seed.
    from studio.tasks import get_task

    whole = dict(params, batch_count=request.n_iter)
    try:
        get_task(task).validate(ctx, whole)
    except ValueError as error:
        raise unprocessable(a1111_field(getattr(error, "field", None)), str(error)) from None
    params, uploads = _store_images(ctx, task, params)
    iterations = [dict(params, seed=seed + k * request.batch_size) for k in range(request.n_iter)]
    return Run(kind=kind, task=task, iterations=iterations, uploads=uploads)


def _img2img_params(request: Img2ImgRequest, params: dict) -> str:
    """img2img's fields into `params`; "inpaint" when a mask is given, else "img2img"."""
    task = "img2img"
    params["strength"] = request.denoising_strength
    init = _decode(request.init_images[0], "init_images")
    params["init_image"] = init  # checked as an image now, stored as an upload below
    if request.mask is not None:
        task = "inpaint"
        mask = _decode(request.mask, "mask")
        if mask.mode in ("RGBA", "LA"):  # A1111 reads painted alpha as the mask
            mask = mask.getchannel("A")
        if request.inpainting_mask_invert:
            from PIL import ImageOps

            mask = ImageOps.invert(mask.convert("L"))
        if mask.size != init.size:  # A1111 resizes both to the target size
            mask = mask.convert("L").resize(init.size)
        if mask.convert("L").getextrema()[1] <= 127:  # one C pass, not a Python loop per pixel
            raise unprocessable("mask", "mask is empty: paint the area to repaint in white")
        params["mask"] = mask
        if not 0 <= request.inpainting_fill <= 3:
            raise unprocessable("inpainting_fill", "inpainting_fill must be 0..3",
                                request.inpainting_fill)
        params.update(inpainting_fill=FILL_CODES[request.inpainting_fill],
                      inpaint_full_res=request.inpaint_full_res,
                      inpaint_full_res_padding=request.inpaint_full_res_padding)
        if request.mask_blur is not None:
            params["mask_blur"] = request.mask_blur
    return task


def _store_images(ctx, task: str, params: dict) -> tuple[dict, list[int]]:
    """Input images are stored once, as on every path (studio/uploads.py ImageIntake), and the
    jobs refer to them by id: the init image as a gallery upload (the results' parent; its id is
    returned, deleted if the request fails), a mask and ControlNet images outside the gallery."""
    from studio.uploads import ImageIntake

    intake = ImageIntake(ctx, "A1111 API")
    try:
        return intake.store(task, params), intake.item_ids
    except ValueError as error:  # e.g. an image the uploads store cannot take
        intake.forget()
        field = getattr(error, "field", None)
        raise unprocessable("alwayson_scripts" if field == "controlnet" else a1111_field(field),
                            str(error)) from None
