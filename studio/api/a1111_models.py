"""Request and response bodies of the A1111-compatible API (/sdapi/v1), as pydantic models.

Field names, meanings and most defaults are AUTOMATIC1111's (modules/api/models.py), so existing
clients send what they always send. Fields A1111 has but GenStudio does not use (restore_faces,
tiling, subseed, hires fix, scripts...) are accepted and ignored (`extra="ignore"`); a field
with the wrong type is a 422 whose `loc` names it (pydantic). Documented differences:

- width/height default to the model's native size (A1111: 512), since the embedded model is a
  64x64 one.
- save_images is accepted but every image lands in the gallery anyway, like a UI image.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class HiresFields(BaseModel):
    """A1111's hires-fix fields of /sdapi/v1/txt2img (its defaults)."""
    enable_hr: bool = False
    hr_scale: float = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_prompt: str = ""
    hr_negative_prompt: str = ""


class Txt2ImgRequest(_Lenient, HiresFields):
    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] | None = Field(None, description="accepted, ignored (no prompt styles)")
    seed: int = Field(-1, description="-1 = random; image i of the request gets seed + i")
    sampler_name: str | None = Field(None, description="see /sdapi/v1/samplers; default DPM++ 2M")
    sampler_index: str | None = Field(None, description="old name of sampler_name")
    scheduler: str | None = Field(None, description="schedule type, see /sdapi/v1/schedulers")
    batch_size: int = Field(1, description="images per denoising run")
    n_iter: int = Field(1, description="runs one after another (each can be skipped)")
    steps: int = 50
    cfg_scale: float = 7.0
    width: int | None = Field(None, description="multiple of 8; default: the model's native size")
    height: int | None = Field(None, description="multiple of 8; default: the model's native size")
    denoising_strength: float | None = Field(
        None, description="img2img: how much to change the image; txt2img: the hires fix's second pass")
    override_settings: dict[str, Any] | None = Field(
        None, description="per-request options, e.g. {\"sd_model_checkpoint\": \"...\"}")
    override_settings_restore_afterwards: bool = True
    refiner_checkpoint: str | None = Field(
        None, description="txt2img: an SDXL refiner (a title or name from /sdapi/v1/sd-models) "
                          "that finishes the image")
    refiner_switch_at: float = Field(0.8, description="fraction of the steps after which the refiner takes over")
    alwayson_scripts: dict[str, Any] | None = Field(
        None, description="{\"controlnet\": {\"args\": [unit, ...]}}: sd-webui-controlnet units "
                          "(studio/api/a1111_controlnet.py); other scripts are ignored")
    send_images: bool = True
    save_images: bool = Field(False, description="accepted; every image is saved to the gallery")


class Img2ImgRequest(Txt2ImgRequest):
    init_images: list[str] = Field(
        ..., min_length=1, description="base64 PNG/JPEG (or data URLs); the first one is used")
    mask: str | None = Field(None, description="base64 image, white = repaint: inpainting")
    mask_blur: int | None = Field(None, description="feathering in pixels (default 4)")
    inpainting_fill: int = Field(
        0, description="masked content: 0 fill, 1 original, 2 latent noise, 3 latent nothing")
    inpaint_full_res: bool = Field(True, description="Inpaint area: Only masked")
    inpaint_full_res_padding: int = Field(0, description="Only masked padding, pixels")
    inpainting_mask_invert: int = Field(0, description="1 = repaint the black part instead")
    denoising_strength: float = 0.75
    include_init_images: bool = Field(False, description="echo init_images/mask in `parameters`")


class GenerationResponse(BaseModel):
    images: list[str] = Field(description="base64 PNGs (with the `parameters` text chunk)")
    parameters: dict[str, Any]
    info: str = Field(description="A1111's JSON string: seed, all_seeds, infotexts, ...")


class ProgressState(BaseModel):
    skipped: bool = False
    interrupted: bool = False
    job: str = ""
    job_count: int = 0
    job_timestamp: str = "0"
    job_no: int = 0
    sampling_step: int = 0
    sampling_steps: int = 0


class ProgressResponse(BaseModel):
    progress: float = Field(description="0..1 of the current request")
    eta_relative: float = Field(description="seconds left, estimated")
    state: ProgressState
    current_image: str | None = Field(None, description="base64 PNG live preview, when one exists")
    textinfo: str | None = None


class SDModel(BaseModel):
    title: str
    model_name: str
    hash: str | None = None
    sha256: str | None = None
    filename: str
    config: str | None = None


class Sampler(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, Any] = Field(default_factory=dict)


class Scheduler(BaseModel):
    name: str
    label: str
    aliases: list[str] | None = None
    default_rho: float = -1
    need_inner_model: bool = False


class PNGInfoRequest(BaseModel):
    image: str = Field(description="base64 PNG or data URL")


class PNGInfoResponse(BaseModel):
    info: str = Field(description="the `parameters` infotext, empty when the image has none")
    items: dict[str, Any] = Field(description="the image's other text chunks")
    parameters: dict[str, Any] = Field(description="the infotext parsed into A1111's keys")
