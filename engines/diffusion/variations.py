"""Image variations, DALL·E 2's way: encode an image to its CLIP image embedding, then let the
decoder paint that embedding from new noise, once per seed.

    result = generate_variations(engine, VariationParams(image=picture, count=4, seed=1))

Two families carry the design (engines/diffusion/families.py):
- Kandinsky 2.2: the prior pipeline's `interpolate` turns the image (and, when a prompt is
  given, the prompt's prior embedding, mixed in with `prompt_weight`) into an image embedding;
  the decoder paints it.
- Stable unCLIP image variations: the pipeline encodes the image with its own CLIP vision
  model, noises the embedding by `noise_level` and conditions the UNet on it.
Seed i gives variation i, whatever the count: each is painted alone from its own generator.
"""
from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

from engines.base import CancelToken, EngineError, ParamError, ProgressCallback, check_int, \
    check_range, no_progress
from engines.diffusion.params import MAX_SEED, check_image, check_size, check_text

MAX_VARIATIONS = 16


@dataclass(frozen=True, eq=False)
class VariationParams:
    image: Any  # PIL image to vary
    count: int = 4  # variations, seeds seed .. seed + count - 1
    prompt: str = ""  # optional: steer the variations (Kandinsky: mixed into the embedding)
    prompt_weight: float = 0.3  # Kandinsky: the prompt's share of the embedding, 0..1
    negative_prompt: str = ""
    steps: int = 20
    guidance_scale: float = 4.0
    noise_level: int = 0  # Stable unCLIP: noise added to the image embedding, 0..1000
    seed: int = -1
    width: int | None = None  # None: the image's size, to multiples of 8
    height: int | None = None
    preview_every: int = 5

    def __post_init__(self) -> None:
        check_image("image", self.image)
        for name in ("prompt", "negative_prompt"):
            check_text(name, getattr(self, name))
        for name in ("width", "height"):
            check_size(name, getattr(self, name))
        for check, name, low, high in (
                (check_int, "count", 1, MAX_VARIATIONS), (check_range, "prompt_weight", 0.0, 1.0),
                (check_int, "steps", 1, 150), (check_range, "guidance_scale", 0.0, 30.0),
                (check_int, "noise_level", 0, 1000), (check_int, "seed", -1, MAX_SEED),
                (check_int, "preview_every", 0, 1000)):
            check(name, getattr(self, name), low, high)
        if self.prompt_weight == 1.0 and not self.prompt:
            raise ParamError("prompt_weight", "`prompt_weight` 1 leaves nothing of the image; "
                                              "give a prompt or lower it")


def generate_variations(engine, params: VariationParams,
                        on_progress: ProgressCallback | None = None,
                        cancel: CancelToken | None = None):
    """`count` variations of `params.image` on a loaded DiffusionEngine of a variations family."""
    import torch

    from engines.diffusion.engine import DiffusionResult
    from engines.diffusion.family_run import _callbacks, call_arguments, sampler_name
    from engines.diffusion.masks import work_size

    on_progress, cancel = on_progress or no_progress, cancel or CancelToken()
    # 1. A family that has an image embedding to vary.
    engine.load()
    if "variations" not in engine.family.modes:
        raise EngineError(f"{engine.model_name} is {engine.family.label}, which makes no "
                          f"variations; use a Kandinsky 2.2 or Stable unCLIP model")
    pipe = engine._pipes["txt2img"]
    image = params.image.convert("RGB")
    width, height = ((params.width, params.height) if params.width and params.height
                     else work_size(image.width, image.height))
    first = params.seed if params.seed >= 0 else secrets.randbelow(MAX_SEED + 1)
    seeds = [first + i for i in range(params.count)]
    started, images, step_times = time.perf_counter(), [], []
    total = params.steps * len(seeds)
    # 2. One variation per seed, same progress, previews and cancel as every family.
    for index, seed in enumerate(seeds):
        cancel.raise_if_cancelled()
        generator = torch.Generator("cpu").manual_seed(seed)
        if engine.family.id == "kandinsky22":
            decoder = pipe.decoder_pipe
            embeds = _kandinsky_embedding(pipe.prior_pipe, image, params, generator)
            callbacks = _callbacks(decoder, call_arguments(decoder), params, index, len(seeds),
                                   params.steps, total, step_times, on_progress, cancel)
            with torch.inference_mode():
                output = decoder(**embeds, width=width, height=height,
                                 num_inference_steps=params.steps,
                                 guidance_scale=params.guidance_scale, generator=generator,
                                 output_type="pil", **callbacks)
        else:
            callbacks = _callbacks(pipe, call_arguments(pipe), params, index, len(seeds),
                                   params.steps, total, step_times, on_progress, cancel)
            with torch.inference_mode():
                output = pipe(image=image, prompt=params.prompt,
                              negative_prompt=params.negative_prompt or None, width=width,
                              height=height, num_inference_steps=params.steps,
                              guidance_scale=params.guidance_scale,
                              noise_level=params.noise_level, generator=generator,
                              output_type="pil", **callbacks)
        images.extend(output.images)
    decoder = pipe.decoder_pipe if engine.family.id == "kandinsky22" else pipe
    info: dict[str, Any] = {
        "model": engine.model_name, "model_hash": engine.model_hash, "family": engine.family.label,
        "sampler": sampler_name(decoder), "seconds": round(time.perf_counter() - started, 3),
        "device": engine.device, "total_steps": total}
    return DiffusionResult(images, seeds, width, height, None, info)


def _kandinsky_embedding(prior, image, params: VariationParams, generator) -> dict:
    """The image's CLIP embedding, with the prompt's prior embedding mixed in when given."""
    conditions, weights = [image], [1.0 - params.prompt_weight]
    if params.prompt and params.prompt_weight > 0:
        conditions.append(params.prompt)
        weights.append(params.prompt_weight)
    output = prior.interpolate(conditions, weights, generator=generator,
                               negative_prompt=params.negative_prompt,
                               guidance_scale=params.guidance_scale)
    return {"image_embeds": output.image_embeds,
            "negative_image_embeds": output.negative_image_embeds}
