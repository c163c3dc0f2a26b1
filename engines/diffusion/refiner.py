"""SDXL's refiner as a second stage (A1111's "Refiner", diffusers' ensemble of expert
denoisers): the base model denoises the first `switch_at` of the schedule and hands its latents
to the refiner, which finishes the last steps.

    result = generate_refined(engine, Txt2ImgParams(...), "/models/sdxl-refiner", 0.8)

The base pass is the engine's own Stable Diffusion run (prompt weighting, LoRAs, embeddings,
previews, cancel), stopped at `denoising_end` with latents out; the refiner pipeline encodes the
prompt itself with its one (OpenCLIP) text encoder and starts at `denoising_start`. It shares
the base's VAE and is kept loaded beside it until the engine unloads.
"""
from __future__ import annotations

import time
from pathlib import Path

from engines.base import CancelToken, EngineError, ParamError, Progress, ProgressCallback, \
    check_range, no_progress


def check_switch(value) -> None:
    check_range("refiner_switch_at", value, 0.05, 0.95)


def load_refiner(engine, path: str):
    """The refiner pipeline for `path`, sharing the base's VAE; cached on the engine."""
    from diffusers import StableDiffusionXLImg2ImgPipeline

    from engines.diffusion.families import is_sdxl_refiner

    cached = getattr(engine, "_refiner", None)
    if cached is not None and cached[0] == path:
        return cached[1]
    if not is_sdxl_refiner(Path(path)):
        raise ParamError("refiner", f"{Path(path).name} is not an SDXL refiner folder "
                                    f"(StableDiffusionXLImg2ImgPipeline without text_encoder)")
    base = engine._pipe("txt2img")
    try:
        pipe = StableDiffusionXLImg2ImgPipeline.from_pretrained(
            path, vae=base.vae, dtype=base.unet.dtype, use_safetensors=True,
            local_files_only=True)
    except Exception as error:  # diffusers raises many kinds; the user needs one sentence
        raise EngineError(f"could not load the refiner {Path(path).name}: {error}") from error
    pipe.set_progress_bar_config(disable=True)
    pipe.to(engine.device)
    engine._refiner = (path, pipe)
    return pipe


def generate_refined(engine, params, refiner: str, switch_at: float,
                     on_progress: ProgressCallback | None = None,
                     cancel: CancelToken | None = None):
    """Base to `switch_at`, refiner after it; one DiffusionResult like engine.generate's."""
    import torch

    from engines.diffusion.engine import DiffusionResult
    from engines.diffusion.family_run import _callbacks, sampler_name
    from engines.diffusion.params import SCHEDULERS

    on_progress, cancel = on_progress or no_progress, cancel or CancelToken()
    check_switch(switch_at)
    # 1. The base must be an SDXL base (the refiner continues its latents).
    engine.load()
    if engine.family.id not in ("sdxl", "sd-turbo") or \
            getattr(engine._pipes["txt2img"], "text_encoder_2", None) is None:
        raise ParamError("model", f"a refiner continues an SDXL base's latents; "
                                  f"{engine.model_name} is {engine.family.label}")
    pipe = load_refiner(engine, refiner)
    started = time.perf_counter()
    width, height = params.width or engine.native_size[0], params.height or engine.native_size[1]
    seeds = engine._seeds(params)
    base_steps = max(1, int(round(params.steps * switch_at)))
    refine_steps = max(1, params.steps - base_steps)
    total = (base_steps + refine_steps) * len(seeds)

    def base_progress(p: Progress) -> None:  # the base's own count, on the whole job's scale
        on_progress(Progress(min(p.step, base_steps * len(seeds)), total, p.message, p.preview))

    # 2. The base pass: latents out, stopped at `switch_at` of the schedule.
    latents, info = engine._denoise("txt2img", params, seeds, width, height,
                                    {"denoising_end": switch_at, "output_type": "latent"},
                                    base_progress, cancel)
    # 3. The refiner finishes each image from its latents, with the same seed.
    images, step_times = [], []
    for index, (seed, latent) in enumerate(zip(seeds, latents)):
        cancel.raise_if_cancelled()
        callbacks = _callbacks(pipe, {"callback_on_step_end"}, params, index, len(seeds),
                               refine_steps, refine_steps * len(seeds), step_times,
                               lambda p: on_progress(Progress(
                                   base_steps * len(seeds) + p.step, total,
                                   f"refiner {p.message}", p.preview)), cancel)
        generator = torch.Generator("cpu").manual_seed(seed)
        with torch.inference_mode():
            output = pipe(prompt=params.prompt, negative_prompt=params.negative_prompt or None,
                          image=latent.unsqueeze(0), denoising_start=switch_at,
                          num_inference_steps=params.steps, guidance_scale=params.guidance_scale,
                          generator=generator, output_type="pil", **callbacks)
        images.extend(output.images)
    _, _, sampler, schedule = SCHEDULERS[params.scheduler]
    info.update(model=engine.model_name, model_hash=engine.model_hash, sampler=sampler,
                schedule_type=schedule, family=engine.family.label, device=engine.device,
                seconds=round(time.perf_counter() - started, 3), total_steps=total,
                refiner=Path(refiner).name, refiner_switch_at=switch_at,
                refiner_hash=_refiner_hash(refiner), refiner_sampler=sampler_name(pipe))
    return DiffusionResult(images, seeds, width, height, None, info)


def _refiner_hash(path: str) -> str | None:
    from engines.diffusion.loading import ModelSource, model_hash

    return model_hash(ModelSource("folder", path, Path(path).name))
