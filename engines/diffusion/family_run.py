"""Loading and running the families that do not take the Stable Diffusion path (Kandinsky 2.2,
PixArt-α/Σ, SD3, LCM, Stable unCLIP): see engines/diffusion/families.py.

Each is called with plain prompts and only the keyword arguments its pipeline's `__call__`
declares, so no SD-only argument reaches a pipeline that lacks it. What the studio promises for
every family is kept here: image i is denoised alone from a CPU generator seeded seeds[i] (the
same image whatever the batch size or device), progress every step, a preview every
`preview_every` steps where the latents are decodable, and cancel between steps, through
`callback_on_step_end` or, for pipelines that still have only the old `callback`, that.
"""
from __future__ import annotations

import inspect
import os
import time
from typing import Any

from engines.base import CancelToken, EngineError, Progress, ProgressCallback

# A scheduler class -> the A1111 sampler name written in the infotext.
SAMPLER_NAMES = {
    "DDIMScheduler": "DDIM", "DDPMScheduler": "DDPM", "EulerDiscreteScheduler": "Euler",
    "EulerAncestralDiscreteScheduler": "Euler a", "DPMSolverMultistepScheduler": "DPM++ 2M",
    "FlowMatchEulerDiscreteScheduler": "Euler", "LCMScheduler": "LCM",
    "UniPCMultistepScheduler": "UniPC", "UnCLIPScheduler": "UnCLIP",
}
_PREVIEW_MAX_PARAMS = 20_000_000  # decode previews with VAEs up to this size (engine.py's rule)


def load_family_pipeline(source, family, device: str, options):
    """The family's text-to-image pipeline (or its only pipeline), on its device."""
    import torch
    import diffusers

    half = options.half_precision if options.half_precision is not None else device == "cuda"
    dtype = torch.float16 if half and device != "cpu" else torch.float32
    extra: dict[str, Any] = {}
    if family.id == "lcm":  # an LCM-distilled SD UNet, whatever class the folder was saved as
        cls = diffusers.LatentConsistencyModelPipeline
        extra = {"safety_checker": None, "feature_extractor": None,
                 "requires_safety_checker": False}
    elif family.id.startswith("stable-unclip"):  # not in diffusers' auto pipelines
        cls = diffusers.DiffusionPipeline
    else:
        cls = diffusers.AutoPipelineForText2Image
    try:
        pipe = cls.from_pretrained(
            source.location, dtype=dtype, use_safetensors=True,
            local_files_only=source.kind == "folder" or bool(os.environ.get("HF_HUB_OFFLINE")),
            **extra)
    except Exception as error:  # diffusers raises many kinds; the user needs one sentence
        raise EngineError(f"could not load {source.name} ({family.label}): {error}") from error
    if family.id == "lcm" and type(pipe.scheduler).__name__ != "LCMScheduler":
        pipe.scheduler = diffusers.LCMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    if device == "cuda" and options.cpu_offload:
        pipe.enable_model_cpu_offload()
    else:
        pipe.to(device)
    if options.attention_slicing and hasattr(pipe, "enable_attention_slicing"):
        pipe.enable_attention_slicing()
    return pipe


def native_size(pipe) -> tuple[int, int]:
    """The side the family was trained at, from its denoiser's config and latent scale."""
    denoiser = getattr(pipe, "transformer", None) or getattr(pipe, "unet", None)
    sample = getattr(denoiser.config, "sample_size", None) if denoiser is not None else None
    autoencoder = getattr(pipe, "vae", None) or getattr(pipe, "movq", None)
    if not isinstance(sample, int) or autoencoder is None:
        return 512, 512
    side = sample * 2 ** (len(autoencoder.config.block_out_channels) - 1)
    return side, side


def sampler_name(pipe) -> str:
    name = type(pipe.scheduler).__name__
    return SAMPLER_NAMES.get(name, name.removesuffix("Scheduler"))


def call_arguments(pipe) -> set[str]:
    return set(inspect.signature(pipe.__call__).parameters)


def denoise(engine, mode: str, params, seeds: list[int], width: int, height: int, extra: dict,
            on_progress: ProgressCallback, cancel: CancelToken) -> tuple[list, dict]:
    """engine.py's `_denoise` for these families: one image per seed, same callbacks."""
    import torch

    pipe = engine._pipe(mode)
    accepted = call_arguments(pipe)
    # 1. The arguments this pipeline has, and nothing else.
    kwargs: dict[str, Any] = dict(
        prompt=params.prompt, num_inference_steps=params.steps,
        guidance_scale=params.guidance_scale, width=width, height=height, output_type="pil",
        use_resolution_binning=False, **extra)  # binning would change the size asked for
    if params.negative_prompt:
        kwargs["negative_prompt"] = params.negative_prompt
    kwargs = {k: v for k, v in kwargs.items() if k in accepted}
    steps = params.steps
    if "strength" in kwargs:  # diffusers' get_timesteps: the last steps * strength steps run
        steps = steps - int(max(steps - steps * kwargs["strength"], 0))
    total = max(1, steps) * len(seeds)
    images, step_times = [], []
    # 2. One image per seed, so a seed gives the same image in any batch.
    for index, seed in enumerate(seeds):
        cancel.raise_if_cancelled()
        callbacks = _callbacks(pipe, accepted, params, index, len(seeds), steps, total,
                               step_times, on_progress, cancel)
        generator = torch.Generator("cpu").manual_seed(seed)
        with torch.inference_mode():
            output = pipe(**kwargs, **callbacks, generator=generator)
        images.extend(output.images)
    info: dict[str, Any] = {"total_steps": total, "sampler": sampler_name(pipe),
                            "schedule_type": None, "family": engine.family.label,
                            "loras": [], "embeddings": [], "vae": None, "warnings": []}
    if step_times:
        import numpy as np

        info["seconds_per_step"] = round(float(np.median(step_times)), 4)
    return images, info


def _callbacks(pipe, accepted: set[str], params, index: int, count: int, steps: int, total: int,
               step_times: list[float], on_progress, cancel) -> dict:
    """The step callback(s) for image `index`: progress, previews, cancel."""
    base, last = index * steps, [time.perf_counter()]

    def step(i: int, latents) -> None:
        now = time.perf_counter()
        step_times.append(now - last[0])
        last[0] = now
        every, preview = params.preview_every, None
        if every and (i + 1) % every == 0 and i + 1 < steps and latents is not None:
            preview = decode_preview(pipe, latents)
        on_progress(Progress(min(base + i + 1, total), total,
                             f"step {i + 1}/{steps}, image {index + 1}/{count}", preview))
        cancel.raise_if_cancelled()  # stops between steps; nothing is returned

    def on_step_end(_pipe, i, _t, kwargs):
        step(i, kwargs.get("latents"))
        return {}

    def prior_step(i: int) -> None:  # the prior's steps: cancel, a message, no step counted
        on_progress(Progress(base, total, f"prior step {i + 1}, image {index + 1}/{count}"))
        cancel.raise_if_cancelled()

    def prior_step_end(_pipe, i, _t, kwargs):
        prior_step(i)
        return {}

    def legacy(i, _t, latents) -> None:
        # Stable unCLIP calls the same callback for its prior (embedding latents, 2-D) and its
        # decoder (image latents, 4-D).
        if latents is not None and latents.ndim < 4:
            prior_step(i)
        else:
            step(i, latents)

    out: dict[str, Any] = {}
    if "callback_on_step_end" in accepted:
        out["callback_on_step_end"] = on_step_end
    elif "callback" in accepted:  # the older per-step callback(i, t, latents)
        out["callback"] = legacy
        out["callback_steps"] = 1
    if "prior_callback_on_step_end" in accepted:
        out["prior_callback_on_step_end"] = prior_step_end
    return out


def decode_preview(pipe, latents):
    """A picture of the current latents through the family's own autoencoder, when small."""
    import torch
    from PIL import Image

    movq = getattr(pipe, "movq", None)
    autoencoder = movq if movq is not None else getattr(pipe, "vae", None)
    if autoencoder is None or latents.ndim != 4 or \
            sum(p.numel() for p in autoencoder.parameters()) > _PREVIEW_MAX_PARAMS:
        return None
    latents = latents[:1].to(autoencoder.dtype)
    try:
        with torch.inference_mode():
            if movq is not None:
                decoded = movq.decode(latents, force_not_quantize=True).sample
            else:
                config = autoencoder.config
                scaled = latents / config.scaling_factor + (getattr(config, "shift_factor", None) or 0)
                decoded = autoencoder.decode(scaled).sample
    except (RuntimeError, ValueError):  # latents of another shape mid-run: no preview this time
        return None
    array = (decoded[0].float().clamp(-1, 1) + 1) * 127.5
    return Image.fromarray(array.permute(1, 2, 0).byte().cpu().numpy())
