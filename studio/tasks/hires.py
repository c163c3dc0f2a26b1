"""Hires fix ("hires", engine "diffusion"): A1111's two-pass txt2img. Generate at the first-pass
size, upscale (in latent space, or with an upscaler), then re-draw the big image with img2img,
so a model trained at a small size gives a big image with coherent composition.

Params: everything txt2img takes (studio/tasks/image.py), plus A1111's names:
  enable_hr               true (false: a plain txt2img)
  hr_scale                1..4, default 2: final size = first-pass size x this
  hr_resize_x, hr_resize_y  a final size instead (0 = unset; one side keeps the aspect ratio;
                          both: fill and crop the centre, as A1111)
  hr_upscaler             "Latent" (default), "Latent (antialiased)", "Latent (bicubic)",
                          "Latent (bicubic antialiased)", "Latent (nearest)",
                          "Latent (nearest-exact)", "None", or any upscaler name
                          (Lanczos, R-ESRGAN AnimeVideo, R-ESRGAN 4x+, files in models/ESRGAN)
  hr_second_pass_steps    denoising steps of the second pass, 0 = as many as the first
  denoising_strength      second-pass strength (alias strength), default 0.7
  hr_prompt, hr_negative_prompt   second-pass prompts ("" = the same)

Composed from the diffusion engine's own txt2img and img2img (engines/diffusion/engine.py,
unchanged) and the upscale engine. "Latent" modes interpolate the VAE latents of the first
pass; because the engine's img2img takes an image, the resized latents are decoded for it
(A1111 hands them to the sampler directly; the extra decode/encode costs one VAE round trip).
The infotext records the first-pass size and "Denoising strength, Hires upscale (or Hires
resize), Hires steps, Hires upscaler" as A1111 writes them.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, fields
from typing import Any

from PIL import Image

from engines.base import ParamError, Progress, check_int, check_range
from studio.gallery.pnginfo import format_infotext
from studio.gallery.store import NewImage
from studio.tasks import TaskResult, TaskSpec, get_task, register
from studio.tasks import image as image_task
from studio.tasks.upscale import models_dirs, upscale_images

# A1111's latent modes: name -> (torch interpolate mode, antialias).
LATENT_MODES = {"Latent": ("bilinear", False), "Latent (antialiased)": ("bilinear", True),
                "Latent (bicubic)": ("bicubic", False),
                "Latent (bicubic antialiased)": ("bicubic", True),
                "Latent (nearest)": ("nearest", False),
                "Latent (nearest-exact)": ("nearest-exact", False)}
HIRES_FIELDS = ("enable_hr", "hr_scale", "hr_resize_x", "hr_resize_y", "hr_upscaler",
                "hr_second_pass_steps", "hr_prompt", "hr_negative_prompt", "strength",
                "denoising_strength")
DEFAULT_STRENGTH = 0.7


@dataclass
class Plan:
    first: Any  # the engine's Txt2ImgParams
    stored: dict
    model: str | None
    enabled: bool
    scale: float
    resize: tuple[int, int]  # (hr_resize_x, hr_resize_y), 0 = unset
    upscaler: str  # a latent mode name, or the upscaler's catalog name
    upscaler_entry: Any  # engines.upscale.catalog.Upscaler, None for latent modes
    steps: int  # 0 = as many as the first pass
    strength: float
    prompt: str | None
    negative_prompt: str | None


def target_size(width: int, height: int, scale: float, resize_x: int, resize_y: int):
    """(upscale_to_w, upscale_to_h, final_w, final_h) as A1111's hires fix computes them, with
    every size a multiple of 8 (the engine's latents are 1/8 of the image)."""
    def eight(value: float) -> int:
        return max(64, int(round(value / 8)) * 8)

    if not resize_x and not resize_y:
        size = (eight(width * scale), eight(height * scale))
        return size + size
    if not resize_y:
        size = (eight(resize_x), eight(resize_x * height / width))
        return size + size
    if not resize_x:
        size = (eight(resize_y * width / height), eight(resize_y))
        return size + size
    final = (eight(resize_x), eight(resize_y))
    if width / height < resize_x / resize_y:  # cover the target, then crop the centre
        cover = (final[0], eight(resize_x * height / width))
    else:
        cover = (eight(resize_y * width / height), final[1])
    return cover + final


def plan(ctx, params: dict) -> Plan:
    """Check and convert; raises ValueError/ParamError naming the field. Loads no weights."""
    from engines.upscale.catalog import resolve

    if not isinstance(params, dict):
        raise ValueError(f"parameters must be an object, got {type(params).__name__}")
    p = dict(params)
    hires = {k: p.pop(k) for k in HIRES_FIELDS if k in p}
    prepared = image_task.prepare(ctx, "txt2img", p)  # every txt2img field checked there
    if prepared.model is not None and hires.get("enable_hr", True) is True:
        from studio.models import check_family

        check_family(prepared.model, "img2img", {})  # the second pass is an img2img
    enabled = hires.get("enable_hr", True)
    if not isinstance(enabled, bool):
        raise ParamError("enable_hr", f"`enable_hr` must be true or false, got {enabled!r}")
    scale = hires.get("hr_scale", 2.0)
    check_range("hr_scale", scale, 1.0, 4.0)
    resize = (hires.get("hr_resize_x") or 0, hires.get("hr_resize_y") or 0)
    for name, value in zip(("hr_resize_x", "hr_resize_y"), resize):
        if value:
            check_int(name, value, 64, 4096)
    steps = hires.get("hr_second_pass_steps") or 0
    check_int("hr_second_pass_steps", steps, 0, 150)
    strength = hires.get("denoising_strength", hires.get("strength", DEFAULT_STRENGTH))
    if strength is None:
        strength = DEFAULT_STRENGTH
    check_range("denoising_strength", strength, 0.01, 1.0)
    name = hires.get("hr_upscaler") or "Latent"
    entry = None
    if name == "None":  # A1111: no upscaler, a plain resize
        name = "Lanczos"
    if name not in LATENT_MODES:
        entry = resolve(name, models_dirs(ctx), "hr_upscaler")
        name = entry.name
    texts = {}
    for key in ("hr_prompt", "hr_negative_prompt"):
        value = hires.get(key) or None
        if value is not None and not isinstance(value, str):
            raise ParamError(key, f"`{key}` must be text, got {type(value).__name__}")
        texts[key] = value
    first = prepared.engine_params
    if enabled:  # the second pass's size must fit the engine's budget: checked here, not later
        width, height = first.width or 64, first.height or 64
        _, _, fw, fh = target_size(width, height, scale, *resize)
        image_task._engine_class(ctx).Txt2ImgParams(prompt="", width=fw, height=fh)
    stored = dict(prepared.stored, enable_hr=enabled, hr_scale=scale, hr_upscaler=name,
                  hr_second_pass_steps=steps, denoising_strength=strength)
    stored.update({k: v for k, v in zip(("hr_resize_x", "hr_resize_y"), resize) if v})
    stored.update({k: v for k, v in texts.items() if v})
    return Plan(first, stored, prepared.model, enabled, float(scale), resize, name, entry, steps,
                float(strength), texts["hr_prompt"], texts["hr_negative_prompt"])


def latent_upscale(engine, images: list[Image.Image], size: tuple[int, int],
                   mode: str) -> list[Image.Image]:
    """Resize the VAE latents of each image to `size` / the VAE factor (A1111's Latent modes),
    then decode them: the picture the second pass starts from."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    pipe = engine._pipe("txt2img")  # the engine has no public VAE accessor; read-only use
    vae, factor = pipe.vae, pipe.vae_scale_factor
    interpolation, antialias = LATENT_MODES[mode]
    results = []
    for image in images:
        array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
        pixels = torch.from_numpy(array).permute(2, 0, 1)[None].to(vae.device, vae.dtype)
        with torch.inference_mode():
            latents = vae.encode(pixels).latent_dist.mode()
            latents = F.interpolate(latents.float(), size=(size[1] // factor, size[0] // factor),
                                    mode=interpolation, antialias=antialias)
            decoded = vae.decode(latents.to(vae.dtype)).sample
        out = ((decoded[0].float().clamp(-1, 1) + 1) * 127.5).round().byte()
        results.append(Image.fromarray(out.permute(1, 2, 0).cpu().numpy()))
    return results


def second_pass_params(engine_class, first, image: Image.Image, seed: int, plan_: Plan,
                       size: tuple[int, int]):
    """img2img params for one image: the first pass's settings (whatever fields the engine
    has), the upscaled image, its own seed. A1111 runs exactly `hr_second_pass_steps` steps
    (or the first pass's count); the engine runs int(steps x strength), so steps are scaled."""
    wanted = plan_.steps or first.steps
    steps = min(150, max(wanted, math.ceil(wanted / plan_.strength - 1e-9)))
    values = {f.name: getattr(first, f.name) for f in fields(first) if f.init}
    values.update(init_image=image, strength=plan_.strength, steps=steps, seed=seed,
                  width=size[0], height=size[1], batch_size=1, batch_count=1, candidates=0,
                  keep=1, hires_base_steps=first.steps)  # A1111's prompt-editing clock
    if plan_.prompt:
        values["prompt"] = plan_.prompt
    if plan_.negative_prompt:
        values["negative_prompt"] = plan_.negative_prompt
    return engine_class.Img2ImgParams(**values)


def hires_infotext(text: str, plan_: Plan, final: tuple[int, int]) -> str:
    """The first pass's infotext (its Size is the first-pass size, as A1111) with A1111's hires
    entries before "Version"."""
    settings = {"Denoising strength": plan_.strength}
    if plan_.resize[0] or plan_.resize[1]:
        settings["Hires resize"] = f"{final[0]}x{final[1]}"
    else:
        # A1111 writes "Hires upscale: 2", "Hires upscale: 1.5"
        settings["Hires upscale"] = int(plan_.scale) if plan_.scale.is_integer() else plan_.scale
    if plan_.steps:
        settings["Hires steps"] = plan_.steps
    settings["Hires upscaler"] = plan_.upscaler
    if plan_.prompt:
        settings["Hires prompt"] = plan_.prompt
    if plan_.negative_prompt:
        settings["Hires negative prompt"] = plan_.negative_prompt
    extra = format_infotext("", "", settings).strip()
    head, sep, tail = text.rpartition(", Version: ")
    return f"{head}, {extra}{sep}{tail}" if sep else f"{text}, {extra}"


def phase(on_progress, index: int, label: str, part: int = 0, parts: int = 1):
    """Progress of one of the three phases (first pass, upscale, second pass) on one scale of
    3,000 units; `part` of `parts` splits the second pass by image."""
    def report(progress: Progress) -> None:
        done = (part + progress.fraction) / parts
        on_progress(Progress(index * 1000 + int(done * 1000), 3000, f"{label}: {progress.message}",
                             progress.preview))
    return report


def validate(ctx, params: dict) -> None:
    plan(ctx, params)


def run(ctx, params: dict, on_progress, cancel) -> TaskResult:
    # 1. Check everything before the device is taken.
    plan_ = plan(ctx, params)
    if not plan_.enabled:
        return get_task("txt2img").run(ctx, {k: v for k, v in params.items()
                                             if k not in HIRES_FIELDS}, on_progress, cancel)
    started = time.perf_counter()
    first = plan_.first
    engine_class = image_task._engine_class(ctx)
    # 2. First pass: plain txt2img.
    with ctx.engines.use(image_task.ENGINE, plan_.model) as engine:
        result = engine.generate(first, phase(on_progress, 0, "first pass"), cancel)
        width, height = result.width, result.height
        cover_w, cover_h, final_w, final_h = target_size(width, height, plan_.scale, *plan_.resize)
        # 3. Upscale: in latent space (same engine), or with an upscaler below.
        if plan_.upscaler_entry is None:
            upscaled = latent_upscale(engine, result.images, (cover_w, cover_h), plan_.upscaler)
    if plan_.upscaler_entry is not None:
        upscaled, _ = upscale_images(ctx, plan_.upscaler_entry, result.images,
                                     {"width": cover_w, "height": cover_h, "crop": False},
                                     phase(on_progress, 1, "hires upscale"), cancel)
    from engines.upscale.engine import fit

    upscaled = [fit(image, (final_w, final_h), True, Image.LANCZOS) for image in upscaled]
    # 4. Second pass: img2img on each upscaled image with its own seed.
    images, info = [], dict(result.info)
    with ctx.engines.use(image_task.ENGINE, plan_.model) as engine:
        for index, (image, seed) in enumerate(zip(upscaled, result.seeds)):
            second = second_pass_params(engine_class, first, image, seed, plan_,
                                        (final_w, final_h))
            out = engine.generate(second, phase(on_progress, 2, f"second pass, image {index + 1}",
                                                index, len(upscaled)), cancel)
            images.append(out.images[0])
            info.update({k: v for k, v in out.info.items() if k in ("model", "model_hash",
                                                                        "sampler", "schedule_type")})
    # 5. Save the final images (all or nothing), recorded as A1111 records a hires fix.
    seconds = time.perf_counter() - started
    entries = []
    for image, seed in zip(images, result.seeds):
        base = image_task.infotext(info, first, seed, width, height, "txt2img")
        stored = dict(plan_.stored, seed=seed, width=image.width, height=image.height,
                      first_pass_width=width, first_pass_height=height,
                      scheduler=first.scheduler, steps=first.steps,
                      guidance_scale=first.guidance_scale, model_hash=info.get("model_hash"))
        entries.append(NewImage(
            image=image, task="hires", engine=image_task.ENGINE, model=info.get("model", ""),
            prompt=first.prompt, negative_prompt=first.negative_prompt, params=stored, seed=seed,
            duration_s=round(seconds / len(images), 3),
            infotext=hires_infotext(base, plan_, (final_w, final_h))))
    items = ctx.gallery.add_images(entries, job_id=ctx.job_id)
    info.update(seeds=result.seeds, infotexts=[e.infotext for e in entries],
                first_pass_size=[width, height], size=[final_w, final_h],
                seconds=round(seconds, 3))
    return TaskResult(item_ids=[i.id for i in items], images=images, info=info)


register(TaskSpec("hires", image_task.ENGINE, validate, run,
                  "Text to image with A1111's hires fix: txt2img, upscale, img2img second pass"))
