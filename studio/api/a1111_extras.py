"""AUTOMATIC1111's Extras API (/sdapi/v1), on the "upscale" task, plus what the txt2img route
needs for A1111's hires fix.

    POST /sdapi/v1/extra-single-image   {image: base64, upscaler_1, upscaling_resize, ...}
                                        -> {image: base64 PNG, html_info}
    POST /sdapi/v1/extra-batch-images   {imageList: [{data: base64, name}], ...}
                                        -> {images: [base64 PNG], html_info}
    GET  /sdapi/v1/upscalers            [{name, model_name, model_path, model_url, scale}]
    GET  /sdapi/v1/latent-upscale-modes [{name}]

Request fields and defaults are A1111's (modules/api/models.py: ExtrasBaseRequest). Inputs are
saved to the gallery as uploads and results as their children; each request is one job on the
studio's runner at API priority (visible in the Queue tab). A value the task refuses is a 422
whose `loc` names the A1111 field; face restoration (gfpgan/codeformer visibility > 0) is
refused the same way, since the studio has no face restorer.

Hires fix on /sdapi/v1/txt2img: `HiresFields` are A1111's request fields, and
`hires_params(request)` turns a request into the "hires" task's extra params (None when
`enable_hr` is off).
"""
from __future__ import annotations

import base64
from typing import Any

from fastapi import APIRouter, Depends, HTTPException
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field

from studio.api.a1111_models import HiresFields
from studio.api.auth import require_auth

# The task's names -> A1111's, for 422s that name the field the client sent.
FIELD_NAMES = {"upscaler": "upscaler_1", "scale": "upscaling_resize",
               "width": "upscaling_resize_w", "height": "upscaling_resize_h",
               "crop": "upscaling_crop", "upscaler_2_visibility": "extras_upscaler_2_visibility",
               "image": "image", "images": "imageList", "image_ids": "imageList"}
JOB_TIMEOUT_S = 3600


class ExtrasRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    resize_mode: int = Field(0, description="0: by upscaling_resize, 1: to upscaling_resize_w x h")
    show_extras_results: bool = True
    gfpgan_visibility: float = Field(0, description="must be 0: no face restorer here")
    codeformer_visibility: float = Field(0, description="must be 0: no face restorer here")
    codeformer_weight: float = 0
    upscaling_resize: float = Field(2, description="scale factor, 1..8")
    upscaling_resize_w: int = 512
    upscaling_resize_h: int = 512
    upscaling_crop: bool = True
    upscaler_1: str = Field("None", description="see /sdapi/v1/upscalers; None = Lanczos resize")
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: float = 0
    upscale_first: bool = False


class ExtrasSingleImageRequest(ExtrasRequest):
    image: str = Field(..., description="base64 PNG/JPEG or a data URL")


class FileData(BaseModel):
    data: str = Field(..., description="base64 image")
    name: str = ""


class ExtrasBatchImagesRequest(ExtrasRequest):
    imageList: list[FileData] = Field(..., min_length=1)


class ExtrasSingleImageResponse(BaseModel):
    image: str
    html_info: str


class ExtrasBatchImagesResponse(BaseModel):
    images: list[str]
    html_info: str


class UpscalerItem(BaseModel):
    name: str
    model_name: str | None = None
    model_path: str | None = None
    model_url: str | None = None
    scale: float | None = None


def hires_params(request: Any) -> dict | None:
    """The "hires" task's extra params for an A1111 txt2img request (any object with the
    HiresFields attributes, plus `denoising_strength`), or None when `enable_hr` is off. The
    route then runs task "hires" with its txt2img params updated by these."""
    if not getattr(request, "enable_hr", False):
        return None
    params: dict[str, Any] = {"enable_hr": True}
    defaults = HiresFields()
    for name in ("hr_scale", "hr_upscaler", "hr_second_pass_steps", "hr_resize_x",
                 "hr_resize_y", "hr_prompt", "hr_negative_prompt"):
        value = getattr(request, name, getattr(defaults, name))
        if value not in (None, ""):
            params[name] = value
    if getattr(request, "denoising_strength", None) is not None:
        params["denoising_strength"] = request.denoising_strength
    return params


def unprocessable(field: str | None, message: str) -> RequestValidationError:
    loc = ("body", FIELD_NAMES.get(field, field)) if field else ("body",)
    return RequestValidationError([{"loc": loc, "msg": message, "type": "value_error"}])


def task_params(request: ExtrasRequest) -> dict[str, Any]:
    """A1111's extras fields -> the upscale task's params (images added by the caller)."""
    for name in ("gfpgan_visibility", "codeformer_visibility"):
        if getattr(request, name):
            raise unprocessable(name, f"{name} must be 0: GenStudio has no face restorer")
    upscaler = request.upscaler_1 if request.upscaler_1 not in ("", "None") else "Lanczos"
    params: dict[str, Any] = {"upscaler": upscaler}
    if request.resize_mode == 1:
        params.update(width=request.upscaling_resize_w, height=request.upscaling_resize_h,
                      crop=request.upscaling_crop)
    elif request.resize_mode == 0:
        params["scale"] = request.upscaling_resize
    else:
        raise unprocessable("resize_mode", f"resize_mode must be 0 or 1, got {request.resize_mode}")
    if request.upscaler_2 not in ("", "None") and request.extras_upscaler_2_visibility > 0:
        params.update(upscaler_2=request.upscaler_2,
                      upscaler_2_visibility=request.extras_upscaler_2_visibility)
    return params


def html_info(infotext: str) -> str:
    """A1111 sends the postprocessing line as a small HTML paragraph."""
    import html

    line = infotext.strip().split("\n")[-1]
    return f"<p>{html.escape(line)}</p>"


# ------------------------------------------------------------------ router
def router(ctx) -> APIRouter:
    api = APIRouter(prefix="/sdapi/v1", tags=["A1111-compatible"],
                    dependencies=[Depends(require_auth(ctx))])

    async def upscale(request: ExtrasRequest, images: list[str], field: str):
        """Run one upscale job over the images; (base64 PNGs, html_info)."""
        from studio.jobs.runner import API
        from studio.tasks.image import decode_image

        # 1. Check everything before anything is saved.
        params = task_params(request)
        decoded = []
        for index, data in enumerate(images):
            label = field if field == "image" else f"{field}[{index}]"
            try:
                decoded.append(decode_image(data, label))
            except ValueError as error:
                raise unprocessable(field, str(error)) from None
        # 2. The inputs become gallery uploads (the results' parents); one job upscales them.
        uploads = [ctx.gallery.add_image(image, task="upload", engine="", prompt="uploaded image",
                                         params={"source": "A1111 extras API"})
                   for image in decoded]
        try:
            handle = ctx.runner.submit("upscale", dict(params, image_ids=[u.id for u in uploads]),
                                       priority=API)
        except ValueError as error:
            _forget(ctx, uploads)
            field_name = getattr(error, "field", None)
            raise unprocessable(field if field_name in ("image_ids", "image") else field_name,
                                str(error)) from None
        final = None
        async for update in handle.aupdates(timeout=JOB_TIMEOUT_S):  # leaving early cancels
            final = update
        # 3. Answer with the gallery files (they carry the `parameters` chunk).
        if final is None or final.status != "completed":
            _forget(ctx, uploads)
            if final is not None and final.error_field:
                raise unprocessable(final.error_field, final.error or "refused")
            raise HTTPException(500, detail=(final.error if final else None) or "upscale canceled")
        items = [ctx.gallery.get(item_id) for item_id in final.result["item_ids"]]
        encoded = [base64.b64encode(item.file_path.read_bytes()).decode("ascii") for item in items]
        infotexts = final.result["info"].get("infotexts") or [""]
        return encoded, html_info(infotexts[0])

    @api.post("/extra-single-image", response_model=ExtrasSingleImageResponse)
    async def extra_single_image(request: ExtrasSingleImageRequest) -> ExtrasSingleImageResponse:
        """Upscale one image (A1111's Extras tab, single image)."""
        images, info = await upscale(request, [request.image], "image")
        return ExtrasSingleImageResponse(image=images[0], html_info=info)

    @api.post("/extra-batch-images", response_model=ExtrasBatchImagesResponse)
    async def extra_batch_images(request: ExtrasBatchImagesRequest) -> ExtrasBatchImagesResponse:
        """Upscale several images in one job (A1111's Extras tab, batch process)."""
        images, info = await upscale(request, [f.data for f in request.imageList], "imageList")
        return ExtrasBatchImagesResponse(images=images, html_info=info)

    @api.get("/upscalers", response_model=list[UpscalerItem])
    def upscalers() -> list[UpscalerItem]:
        """"None" first, as A1111, then Lanczos, Nearest, the embedded Real-ESRGAN networks and
        the files in models/ESRGAN, RealESRGAN, SwinIR, DAT, HAT..."""
        from engines.upscale.catalog import list_upscalers

        items = [UpscalerItem(name="None", scale=4)]
        for u in list_upscalers((ctx.config.models_dir, *ctx.config.extra_models_dirs)):
            items.append(UpscalerItem(
                name=u.name, model_name=u.path.stem if u.path else None,
                model_path=str(u.path) if u.path else None, scale=u.scale or 4))
        return items

    @api.get("/latent-upscale-modes")
    def latent_upscale_modes() -> list[dict]:
        """The hires fix's latent modes (hr_upscaler accepts these and every upscaler name)."""
        from studio.tasks.hires import LATENT_MODES

        return [{"name": name} for name in LATENT_MODES]

    return api


def _forget(ctx, uploads) -> None:
    """A refused or failed request leaves no uploads behind."""
    for item in uploads:
        try:
            ctx.gallery.delete(item.id)
        except LookupError:
            pass
