"""Variations task ("variations", engine "diffusion"): N variations of a gallery image through a
prior/decoder family's image embedding (engines/diffusion/variations.py), DALL·E 2's feature.

  image_id | image        the gallery item to vary (the variations' parent), or a base64 image
  model                   a Kandinsky 2.2 or Stable unCLIP model of the models folder; default:
                          the first such model found there
  count                   1..16 variations, default 4
  prompt, prompt_weight   optional text to steer them (Kandinsky: its share 0..1, default 0.3)
  negative_prompt, steps, guidance_scale, seed, width, height, preview_every   as txt2img
  noise_level             Stable unCLIP: noise on the image embedding, 0..1000, default 0
"""
from __future__ import annotations

from typing import Any

from engines.base import ParamError
from studio.gallery.pnginfo import format_infotext
from studio.gallery.store import NewImage
from studio.models import check_diffusion_model, check_family, diffusion_roots
from studio.tasks import TaskResult, TaskSpec, check_fields, register
from studio.tasks.image import _resolve_image

ENGINE = "diffusion"
FIELDS = ("count", "prompt", "prompt_weight", "negative_prompt", "steps", "guidance_scale",
          "noise_level", "seed", "width", "height", "preview_every")


def variation_models(ctx) -> list[str]:
    """Models of the models folders whose family makes variations (headers only)."""
    from engines.diffusion.families import family_info

    found = []
    for root in diffusion_roots(ctx):
        if not root.is_dir():
            continue
        for entry in sorted(root.iterdir()):
            if (entry / "model_index.json").is_file() and \
                    "variations" in family_info(str(entry))["modes"]:
                found.append(str(entry))
    return found


def prepare(ctx, params: Any) -> tuple[Any, dict, int | None, str]:
    """(engine params, what the gallery keeps, parent id, model); ParamError naming a field."""
    from engines.diffusion.variations import VariationParams

    check_fields("variations", params, {*FIELDS, "model", "image", "image_id"})
    model = params.get("model")
    if model is None:
        offered = variation_models(ctx)
        if not offered:
            raise ParamError("model", "variations need a Kandinsky 2.2 or Stable unCLIP model in "
                                      "the models folder; there is none")
        model = offered[0]
    check_diffusion_model(ctx, model)
    check_family(model, "variations", {})
    image, parent_id = _resolve_image(ctx, params, "image")
    if image is None:
        raise ParamError("image_id", "variations need `image_id` (a gallery item) or `image`")
    kwargs = {k: params[k] for k in FIELDS if params.get(k) is not None}
    engine_params = VariationParams(image=image, **kwargs)
    stored = dict(kwargs, model=model)
    if parent_id is not None:
        stored["image_id"] = parent_id
    return engine_params, stored, parent_id, model


def _validate(ctx, params: dict) -> None:
    prepare(ctx, params)


def _run(ctx, params: dict, on_progress, cancel) -> TaskResult:
    from engines.diffusion.variations import generate_variations

    # 1. Check and convert before the device is taken.
    p, stored, parent_id, model = prepare(ctx, params)
    # 2. Every variation on the device lock.
    with ctx.engines.use(ENGINE, model) as engine:
        result = generate_variations(engine, p, on_progress, cancel)
    # 3. All saved in one call, children of the image they vary.
    info = result.info
    per_image = info.get("seconds", 0.0) / max(1, len(result.images))
    entries = []
    for image, seed in zip(result.images, result.seeds):
        settings = {"Steps": p.steps, "Sampler": info.get("sampler"), "CFG scale": p.guidance_scale,
                    "Seed": seed, "Size": f"{image.width}x{image.height}",
                    "Model hash": info.get("model_hash"), "Model": info.get("model"),
                    "Variation of": parent_id, "Version": "GenStudio"}
        entries.append(NewImage(
            image=image, task="variations", engine=ENGINE, model=info.get("model", ""),
            prompt=p.prompt, negative_prompt=p.negative_prompt,
            params=dict(stored, seed=seed, width=image.width, height=image.height,
                        model_hash=info.get("model_hash")),
            seed=seed, duration_s=round(per_image, 3), parent_id=parent_id,
            infotext=format_infotext(p.prompt, p.negative_prompt, settings)))
    items = ctx.gallery.add_images(entries, job_id=ctx.job_id)
    return TaskResult(item_ids=[i.id for i in items], images=result.images,
                      info=dict(info, seeds=result.seeds))


register(TaskSpec("variations", ENGINE, _validate, _run,
                  "Variations of an image through a prior/decoder model's image embedding "
                  "(DALL·E 2): Kandinsky 2.2 or Stable unCLIP"))
