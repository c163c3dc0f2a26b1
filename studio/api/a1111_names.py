"""AUTOMATIC1111's names for the image tasks' parameters: the one place they are translated.

The tasks and engines speak diffusers' names (`guidance_scale`, `strength`, `scheduler`...). A1111
clients, A1111's "prompts from file" lines and queue requests copied from A1111 use its own
(`cfg_scale`, `denoising_strength`, `sampler_name`...). The A1111 router, the queue router and
the prompt-file parser call `to_task_params`; error messages name the A1111 field back through
`a1111_field`.
"""
from __future__ import annotations

from typing import Any

from engines.base import ParamError

# A1111 name -> the task's name
PARAM_NAMES = {"cfg_scale": "guidance_scale", "denoising_strength": "strength",
               "sampler_name": "scheduler", "n_iter": "batch_count", "sd_vae": "vae",
               "CLIP_stop_at_last_layers": "clip_skip"}  # an A1111 option: override_settings
# A1111 options (its /sdapi/v1/options, or a request's override_settings) that are image task
# params -> (the task's name, A1111's default); an option at its default is not sent.
OPTION_PARAMS = {"CLIP_stop_at_last_layers": ("clip_skip", 1),  # "Clip skip"
                 "sdxl_clip_l_skip": ("sdxl_clip_l_skip", False),  # "Clip skip SDXL"
                 "use_old_scheduling": ("use_old_scheduling", False)}  # old prompt editing
# A1111's Extras (upscale) names -> the upscale task's
EXTRAS_PARAM_NAMES = {"upscaler_1": "upscaler", "upscaling_resize": "scale",
                      "upscaling_resize_w": "width", "upscaling_resize_h": "height",
                      "upscaling_crop": "crop", "extras_upscaler_2_visibility": "upscaler_2_visibility"}
# A1111's "masked content" codes
FILL_CODES = {0: "fill", 1: "original", 2: "latent noise", 3: "latent nothing"}
SCHEDULE_TYPES = {"automatic": "Automatic", "karras": "Karras"}
# the task's name -> the A1111 field a client sent (for 422s)
FIELD_NAMES = {**{task: a1111 for a1111, task in PARAM_NAMES.items()},
               "init_image": "init_images", "init_image_id": "init_images", "mask_id": "mask",
               "model": "sd_model_checkpoint", "controlnet": "alwayson_scripts"}


def to_task_params(params: dict[str, Any]) -> dict[str, Any]:
    """A1111 names and codes -> the image and upscale tasks' (names a task already uses are kept)."""
    out = dict(params)
    for a1111, name in (*PARAM_NAMES.items(), *EXTRAS_PARAM_NAMES.items()):
        if a1111 in out and name not in out:
            out[name] = out.pop(a1111)
    if "init_images" in out and "init_image" not in out and "init_image_id" not in out:
        images = out.pop("init_images")
        if not isinstance(images, list) or len(images) != 1:
            raise ParamError("init_images", "`init_images` must be a list with one image")
        out["init_image"] = images[0]
    fill = out.get("inpainting_fill")
    if isinstance(fill, int) and not isinstance(fill, bool):
        if fill not in FILL_CODES:
            raise ParamError("inpainting_fill", f"`inpainting_fill` code must be 0..3, got {fill}")
        out["inpainting_fill"] = FILL_CODES[fill]
    return out


def a1111_field(field: str | None) -> str | None:
    """The A1111 name of a task parameter (`guidance_scale` -> `cfg_scale`)."""
    return FIELD_NAMES.get(field, field) if field else None


# ------------------------------------------------------------------ samplers
def schedulers_table() -> dict[str, tuple[str, str, str | None]]:
    from engines.diffusion.params import SCHEDULERS

    return {name: (name, sampler, schedule) for name, (_, _, sampler, schedule) in SCHEDULERS.items()}


def scheduler_name(sampler: str | None, schedule: str | None) -> str | None:
    """A1111 sampler_name + scheduler -> the engine's scheduler name (None = the default)."""
    table = schedulers_table()
    automatic = schedule is None or schedule.strip().lower() in ("", "automatic")
    if sampler is None and automatic:
        return None
    if sampler is None:
        from engines.diffusion.params import DEFAULT_SCHEDULER

        sampler = table[DEFAULT_SCHEDULER][1]
    if sampler in table and table[sampler][1] != sampler:  # "DPM++ 2M Karras": old combined name
        if automatic or SCHEDULE_TYPES.get(schedule.strip().lower()) == table[sampler][2]:
            return sampler
    samplers = {s for _, s, _ in table.values()}
    if sampler not in samplers:
        raise ParamError("sampler_name", f"unknown sampler {sampler!r}; known: "
                         f"{', '.join(sorted(samplers))}")
    wanted = None if automatic else SCHEDULE_TYPES.get(schedule.strip().lower(), schedule)
    for name, s, schedule_type in table.values():
        if s == sampler and schedule_type == wanted:
            return name
    if wanted is None:  # only scheduled variants of this sampler exist
        return next(name for name, s, _ in table.values() if s == sampler)
    options = sorted({t or "Automatic" for _, s, t in table.values() if s == sampler})
    raise ParamError("scheduler", f"schedule type {schedule!r} is not available with "
                               f"{sampler}; available: {', '.join(options)}")
