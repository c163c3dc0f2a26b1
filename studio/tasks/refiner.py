"""SDXL with its refiner ("txt2img_refiner", engine "diffusion"): A1111's Refiner. The SDXL base
denoises up to `refiner_switch_at` of the schedule, the refiner finishes
(engines/diffusion/refiner.py).

Params: everything txt2img takes (studio/tasks/image.py; `model` an SDXL base), plus A1111's
  refiner_checkpoint (alias refiner)   an SDXL refiner folder of the models folder
  refiner_switch_at                    0.05..0.95, default 0.8: where the refiner takes over
The infotext adds A1111's "Refiner: name [hash], Refiner switch at: 0.8".
"""
from __future__ import annotations

from pathlib import Path

from engines.base import ParamError
from studio.gallery.store import NewImage
from studio.models import check_diffusion_model
from studio.tasks import TaskResult, TaskSpec, register
from studio.tasks import image as image_task

ENGINE = "diffusion"


def prepare(ctx, params: dict):
    from engines.diffusion.families import is_sdxl_refiner
    from engines.diffusion.refiner import check_switch

    if not isinstance(params, dict):
        raise ValueError(f"parameters must be an object, got {type(params).__name__}")
    p = dict(params)
    refiner = p.pop("refiner_checkpoint", None) or p.pop("refiner", None)
    p.pop("refiner", None)  # the alias, when both were given
    switch_at = p.pop("refiner_switch_at", 0.8)
    if not isinstance(refiner, str) or not refiner.strip():
        raise ParamError("refiner_checkpoint", "`refiner_checkpoint` must name an SDXL refiner "
                                               "of the models folder")
    check_diffusion_model(ctx, refiner)
    if not is_sdxl_refiner(Path(refiner)):
        raise ParamError("refiner_checkpoint", f"{Path(refiner).name} is not an SDXL refiner")
    check_switch(switch_at)
    if p.get("model") is None:
        raise ParamError("model", "the refiner continues an SDXL base: give `model`")
    prepared = image_task.prepare(ctx, "txt2img", p)  # every txt2img field checked there
    prepared.stored.update(refiner_checkpoint=refiner, refiner_switch_at=switch_at)
    return prepared, refiner, float(switch_at)


def _validate(ctx, params: dict) -> None:
    prepare(ctx, params)


def _run(ctx, params: dict, on_progress, cancel) -> TaskResult:
    from engines.diffusion.refiner import generate_refined

    # 1. Check and convert before the device is taken.
    prepared, refiner, switch_at = prepare(ctx, params)
    p = prepared.engine_params
    # 2. Base then refiner, on the device lock.
    with ctx.engines.use(ENGINE, prepared.model) as engine:
        result = generate_refined(engine, p, refiner, switch_at, on_progress, cancel)
    # 3. Saved in one call, with A1111's refiner entries in the infotext.
    info = result.info
    per_image = info.get("seconds", 0.0) / max(1, len(result.images))
    entries = []
    for image, seed in zip(result.images, result.seeds):
        text = image_task.infotext(info, p, seed, image.width, image.height, "txt2img")
        text = text.replace(", Version: GenStudio",
                            f", Refiner: {info['refiner']} [{info['refiner_hash']}], "
                            f"Refiner switch at: {switch_at}, Version: GenStudio")
        stored = dict(prepared.stored, seed=seed, width=image.width, height=image.height,
                      scheduler=p.scheduler, steps=p.steps, guidance_scale=p.guidance_scale,
                      model_hash=info.get("model_hash"))
        entries.append(NewImage(
            image=image, task="txt2img_refiner", engine=ENGINE, model=info.get("model", ""),
            prompt=p.prompt, negative_prompt=p.negative_prompt, params=stored, seed=seed,
            duration_s=round(per_image, 3), infotext=text))
    items = ctx.gallery.add_images(entries, job_id=ctx.job_id)
    return TaskResult(item_ids=[i.id for i in items], images=result.images,
                      info=dict(info, seeds=result.seeds, infotexts=[e.infotext for e in entries]))


register(TaskSpec("txt2img_refiner", ENGINE, _validate, _run,
                  "SDXL text to image with its refiner as the second stage"))
