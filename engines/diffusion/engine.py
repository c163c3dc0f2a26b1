"""Stable Diffusion-family image generation: text to image, image to image, inpainting,
outpainting and best-of-N by CLIP score, on diffusers pipelines.

    engine = DiffusionEngine(model_id="genstudio-tiny-sd", device="cpu")
    result = engine.generate(Txt2ImgParams(prompt="a red star on a blue background", seed=1))
    result.images[0].save("star.png")

Reading order: the engine (load/unload), generate() which dispatches on the params type, one
method per mode, then the shared denoising run (`_denoise`) with its step callback (progress,
previews, cancel). Parameters live in engines/diffusion/params.py, loading and speed options in
engines/diffusion/loading.py, mask arithmetic in engines/diffusion/masks.py.

torch and diffusers are imported inside methods, so importing this module to reach the params
classes (task validation) stays cheap.
"""
from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from engines.base import CancelToken, EngineError, ParamError, Progress, ProgressCallback, no_progress
from engines.diffusion.loading import (DEFAULT_MODEL, ModelSource, RuntimeOptions, load_pipeline,
                                       make_scheduler, model_hash, resolve_model)
from engines.diffusion.masks import (binary_mask, composite, crop_region, feathered_alpha,
                                     fill_masked, outpaint_canvas, work_size)
from engines.diffusion.params import (MAX_SEED, SCHEDULERS, Img2ImgParams, InpaintParams,
                                      OutpaintParams, Txt2ImgParams)

# SD 1.x latent -> RGB, a linear fit (A1111's "Approx cheap" preview) for VAEs too big to run
# every few steps; small VAEs are simply decoded.
_LATENT_RGB = [[0.3512, 0.2297, 0.3227], [0.3250, 0.4974, 0.2350],
               [-0.2829, 0.1762, 0.2721], [-0.2120, -0.2616, -0.7177]]
_FULL_PREVIEW_MAX_PARAMS = 20_000_000


@dataclass
class DiffusionResult:
    images: list[Image.Image]
    seeds: list[int]  # one per image, in order
    width: int
    height: int
    scores: list[float] | None = None  # CLIP scores when best-of-N chose the images
    info: dict[str, Any] = field(default_factory=dict)  # sampler, model hash, timings, warnings


class DiffusionEngine:
    kind: ClassVar[str] = "diffusion"
    # The params classes, reachable through `EngineManager.engine_class("diffusion")`.
    Txt2ImgParams = Txt2ImgParams
    Img2ImgParams = Img2ImgParams
    InpaintParams = InpaintParams
    OutpaintParams = OutpaintParams
    SCHEDULERS = tuple(SCHEDULERS)

    def __init__(self, model_id: str = DEFAULT_MODEL, device: str = "cpu",
                 options: RuntimeOptions | None = None) -> None:
        self.model_id = model_id
        self.device = device
        self.options = options or RuntimeOptions.from_env()
        self.source: ModelSource | None = None
        self.family = None  # engines/diffusion/families.Family, known once loaded
        self._pipes: dict[str, Any] = {}  # "txt2img", "img2img", "inpaint": shared components
        self._hash: str | None = None
        self._scheduler_config: dict = {}
        self._scorer = None
        self._vae: tuple[tuple, Any] | None = None  # (file key, AutoencoderKL): the last VAE chosen
        self._controlnets: dict = {}  # loaded ControlNets, a few (engines/diffusion/controlnet.py)

    # ------------------------------------------------------------ lifecycle
    @property
    def loaded(self) -> bool:
        return "txt2img" in self._pipes

    def load(self) -> None:
        if self.loaded:
            return
        self.source = resolve_model(self.model_id)
        # The family (headers only) decides how the pipeline is built and driven (families.py).
        from engines.diffusion.families import detect_family
        from engines.diffusion.family_run import load_family_pipeline

        self.family = detect_family(self.source.location, self.source.kind)
        self._pipes["txt2img"] = (
            load_pipeline(self.source, self.device, self.options) if self.family.sd_like
            else load_family_pipeline(self.source, self.family, self.device, self.options))
        self._scheduler_config = dict(self._pipes["txt2img"].scheduler.config)

    def unload(self) -> None:
        self._pipes.clear()
        self._scorer = None
        self._vae = None
        self._controlnets = {}
        self._refiner = None  # engines/diffusion/refiner.py: (path, pipeline)
        if self.device == "cuda":
            import torch

            torch.cuda.empty_cache()

    def memory_bytes(self) -> int:
        pipe = self._pipes.get("txt2img")
        if pipe is None:
            return 0
        return sum(p.numel() * p.element_size() for _, module in pipe.components.items()
                   if hasattr(module, "parameters") for p in module.parameters())

    @property
    def model_name(self) -> str:
        return self.source.name if self.source else self.model_id

    @property
    def model_hash(self) -> str | None:
        if self._hash is None and self.source is not None:
            self._hash = model_hash(self.source)
        return self._hash

    @property
    def native_size(self) -> tuple[int, int]:
        pipe = self._pipe("txt2img")
        if not self.family.sd_like:
            from engines.diffusion.family_run import native_size

            return native_size(pipe)
        side = pipe.unet.config.sample_size * pipe.vae_scale_factor
        return side, side

    def _pipe(self, mode: str):
        self.load()
        if mode not in self._pipes:
            from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

            factory = AutoPipelineForImage2Image if mode == "img2img" else AutoPipelineForInpainting
            pipe = factory.from_pipe(self._pipes["txt2img"])  # same weights, no copy
            pipe.set_progress_bar_config(disable=True)
            self._pipes[mode] = pipe
        return self._pipes[mode]

    # ------------------------------------------------------------ generate
    def generate(self, params: Txt2ImgParams, on_progress: ProgressCallback | None = None,
                 cancel: CancelToken | None = None) -> DiffusionResult:
        on_progress, cancel = on_progress or no_progress, cancel or CancelToken()
        if not isinstance(params, Txt2ImgParams):
            raise ParamError("params", f"`params` must be Txt2ImgParams or a subclass, got "
                             f"{type(params).__name__}")
        cancel.raise_if_cancelled()
        self.load()  # lazily, as every engine: the family decides the path below
        started = time.perf_counter()
        unet = getattr(self._pipes.get("txt2img"), "unet", None)
        openvino = getattr(unet, "_genstudio_openvino", None)  # set by GENSTUDIO_OPENVINO
        openvino_calls = openvino.calls if openvino else 0
        if isinstance(params, OutpaintParams):
            result = self._outpaint(params, on_progress, cancel)
        elif isinstance(params, InpaintParams):
            result = self._inpaint(params, on_progress, cancel)
        elif isinstance(params, Img2ImgParams):
            result = self._img2img(params, on_progress, cancel)
        else:
            result = self._txt2img(params, on_progress, cancel)
        _, _, sampler, schedule = SCHEDULERS[params.scheduler]
        if not self.family.sd_like:  # these keep their own scheduler (family_run.py)
            sampler, schedule = result.info["sampler"], None
        result.info.update(
            model=self.model_name, model_hash=self.model_hash, sampler=sampler,
            schedule_type=schedule, seconds=round(time.perf_counter() - started, 3),
            device=self.device, family=self.family.label)
        if openvino and openvino.calls > openvino_calls:  # bf16 changes pixels: say so
            result.info["unet_backend"] = f"OpenVINO {openvino.precision}"
        return result

    def _seeds(self, params: Txt2ImgParams) -> list[int]:
        first = params.seed if params.seed >= 0 else secrets.randbelow(MAX_SEED + 1)
        return [first + i for i in range(params.image_count)]

    def _txt2img(self, params, on_progress, cancel) -> DiffusionResult:
        # 1. Check what the params alone could not (the model's own limits).
        if params.candidates:
            self._clip_scorer()  # fail before generating if this model has no scorer
        width, height = params.width or self.native_size[0], params.height or self.native_size[1]
        seeds = self._seeds(params)
        # 2. Denoise every image (or every candidate).
        images, info = self._denoise("txt2img", params, seeds, width, height, {}, on_progress,
                                     cancel)
        scores = None
        # 3. Best-of-N: keep the K candidates the CLIP scorer likes best, best first.
        if params.candidates:
            on_progress(Progress(info["total_steps"], info["total_steps"], "scoring candidates"))
            all_scores = self._clip_scorer().score(images, [params.prompt] * len(images))
            order = sorted(range(len(images)), key=lambda i: -all_scores[i])[:params.keep]
            info["candidate_scores"] = [round(s, 4) for s in all_scores]
            images, seeds = [images[i] for i in order], [seeds[i] for i in order]
            scores = [all_scores[i] for i in order]
        return DiffusionResult(images, seeds, width, height, scores, info)

    def _img2img(self, params: Img2ImgParams, on_progress, cancel) -> DiffusionResult:
        init = params.init_image.convert("RGB")
        width, height = ((params.width, params.height) if params.width and params.height
                         else work_size(init.width, init.height))
        init = init.resize((width, height), Image.LANCZOS) if init.size != (width, height) else init
        seeds = self._seeds(params)
        images, info = self._denoise("img2img", params, seeds, width, height,
                                     {"image": init, "strength": params.strength},
                                     on_progress, cancel)
        return DiffusionResult(images, seeds, width, height, None, info)

    def _inpaint(self, params: InpaintParams, on_progress, cancel,
                 painted: np.ndarray | None = None) -> DiffusionResult:
        # 1. The painted area, checked before any work.
        original = params.init_image.convert("RGB")
        painted = binary_mask(params.mask) if painted is None else painted
        if not painted.any():
            raise ParamError("mask", "`mask` is empty: paint the area to repaint (white on black)")
        seeds = self._seeds(params)
        # 2. The region to work on: the whole image, or the mask's box ("only masked").
        if params.inpaint_full_res:
            target = (params.width, params.height) if params.width and params.height else None
            aspect = target[0] / target[1] if target else 1.0
            box = crop_region(painted, params.inpaint_full_res_padding, aspect)
            region_size = (box[2] - box[0], box[3] - box[1])
            size = target or work_size(*region_size)
        else:
            box = (0, 0, original.width, original.height)
            size = ((params.width, params.height) if params.width and params.height
                    else work_size(original.width, original.height))
        region = original.crop(box)
        region_painted = painted[box[1]:box[3], box[0]:box[2]]
        # 3. Masked content, then the model's working size.
        work = fill_masked(region, region_painted, params.inpainting_fill, seeds[0])
        work = work.resize(size, Image.LANCZOS) if work.size != size else work
        mask_image = Image.fromarray(region_painted.astype(np.uint8) * 255)
        mask_image = mask_image.resize(size, Image.NEAREST)
        # 4. Denoise.
        extra = {"image": work, "mask_image": mask_image, "strength": params.strength}
        if params.controlnet:  # control maps are fitted to the whole image, then cut to the box
            extra["control_region"] = (box, original.size)
        images, info = self._denoise("inpaint", params, seeds, size[0], size[1], extra,
                                     on_progress, cancel)
        # 5. Back into the original: only painted pixels change, feathered inside the mask.
        alpha = feathered_alpha(painted, params.mask_blur)
        results = []
        for generated in images:
            canvas = original.copy()
            canvas.paste(generated.resize(region.size, Image.LANCZOS), box[:2])
            results.append(composite(original, canvas, alpha))
        info["region"] = list(box)
        return DiffusionResult(results, seeds, original.width, original.height, None, info)

    def _outpaint(self, params: OutpaintParams, on_progress, cancel) -> DiffusionResult:
        # The canvas grows on the chosen sides; the new border is filled, then inpainted as a
        # mask, so the original pixels come back unchanged.
        canvas, painted, offset = outpaint_canvas(params.init_image, tuple(params.sides),
                                                  params.pixels)
        inpaint = InpaintParams(
            prompt=params.prompt, negative_prompt=params.negative_prompt, steps=params.steps,
            guidance_scale=params.guidance_scale, seed=params.seed, batch_size=params.batch_size,
            batch_count=params.batch_count, scheduler=params.scheduler,
            preview_every=params.preview_every, token_merging=params.token_merging,
            step_cache=params.step_cache, clip_skip=params.clip_skip, lora_dirs=params.lora_dirs,
            sdxl_clip_l_skip=params.sdxl_clip_l_skip, use_old_scheduling=params.use_old_scheduling,
            embedding_dirs=params.embedding_dirs, vae=params.vae, init_image=canvas,
            strength=params.strength,
            mask=Image.fromarray(painted.astype(np.uint8) * 255), mask_blur=params.mask_blur,
            inpainting_fill=params.inpainting_fill)
        result = self._inpaint(inpaint, on_progress, cancel, painted=painted)
        result.info["original_offset"] = list(offset)
        return result

    # ------------------------------------------------------------ the denoising run
    def _denoise(self, mode: str, params: Txt2ImgParams, seeds: list[int], width: int,
                 height: int, extra: dict, on_progress: ProgressCallback,
                 cancel: CancelToken) -> tuple[list[Image.Image], dict]:
        """Run the pipeline batch by batch; image i gets a CPU generator seeded seeds[i], so a
        seed reproduces on any device."""
        if not self.family.sd_like:  # Kandinsky, PixArt, SD3, LCM, unCLIP: family_run.py
            from engines.diffusion.family_run import denoise

            return denoise(self, mode, params, seeds, width, height, extra, on_progress, cancel)
        import torch

        from engines.diffusion.extras import conditioning
        from engines.diffusion.speed import set_step_cache, set_token_merging

        pipe = self._pipe(mode)
        pipe.scheduler = make_scheduler(self._scheduler_config, params.scheduler)
        set_token_merging(pipe.unet, params.token_merging)
        strength = extra.get("strength", 1.0)
        steps_per_run = max(1, int(params.steps * strength)) if mode != "txt2img" else params.steps
        batches = [seeds[i:i + params.batch_size] for i in range(0, len(seeds), params.batch_size)]
        total = steps_per_run * len(batches)
        images: list[Image.Image] = []
        step_times: list[float] = []
        # LoRAs, embeddings, weighted prompt and VAE for this generation only (extras.py).
        with conditioning(self._pipes, mode, params, self.model_name, self._load_vae) as cond:
            info: dict[str, Any] = dict(cond.info, total_steps=total,
                                        prompt_tokens=cond.prompt_tokens)
            if params.controlnet:  # diffusers' ControlNet pipeline on the same weights
                from engines.diffusion.controlnet import control_run

                pipe, extra, control_info = control_run(self, pipe, mode, params, width, height,
                                                        extra)
                info.update(control_info)
            for b, batch_seeds in enumerate(batches):
                cancel.raise_if_cancelled()
                on_step_end = self._step_callback(params, b, len(batches), steps_per_run, total,
                                                  step_times, on_progress, cancel)
                generators = [torch.Generator("cpu").manual_seed(s) for s in batch_seeds]
                try:
                    set_step_cache(pipe.unet, params.step_cache)  # each run starts with a full call
                except ValueError as error:
                    raise EngineError(str(error)) from None
                with torch.inference_mode():
                    # embeddings, and prompt editing's step callback (prompt_editing.py)
                    output = pipe(**cond.pipe_kwargs(len(batch_seeds), on_step_end),
                                  num_inference_steps=params.steps,
                                  guidance_scale=params.guidance_scale, width=width, height=height,
                                  generator=generators,
                                  **{"output_type": "pil", **extra})  # refiner.py: latents
                images.extend(output.images)
        if step_times:
            info["seconds_per_step"] = round(float(np.median(step_times)), 4)
        return images, info

    def _step_callback(self, params, b: int, batches: int, steps_per_run: int, total: int,
                       step_times: list[float], on_progress, cancel):
        """diffusers' callback_on_step_end for run b: progress, previews, cancel."""
        base, last = b * steps_per_run, [time.perf_counter()]

        def on_step_end(_pipe, i, _t, kwargs):
            now = time.perf_counter()
            step_times.append(now - last[0])
            last[0] = now
            preview = None
            every = params.preview_every
            if every and (i + 1) % every == 0 and i + 1 < steps_per_run:
                preview = self._preview(kwargs["latents"])
            on_progress(Progress(base + i + 1, total,
                                 f"step {i + 1}/{steps_per_run}, batch {b + 1}/{batches}", preview))
            cancel.raise_if_cancelled()  # stops between steps; nothing is returned
            return {}
        return on_step_end

    def _load_vae(self, path):
        """The VAE at `path` in the model's VAE architecture; the last one is kept for reuse."""
        from engines.diffusion.vae import load_vae

        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime)
        if self._vae is None or self._vae[0] != key:
            self._vae = None  # free the previous one first
            self._vae = (key, load_vae(path, self._pipes["txt2img"].vae))
        return self._vae[1]

    def _preview(self, latents) -> Image.Image:
        """A small picture of the current latents: decoded by a small VAE, else linearly."""
        import torch

        pipe = self._pipes["txt2img"]
        latents = latents[:1]
        vae = pipe.vae
        if sum(p.numel() for p in vae.parameters()) <= _FULL_PREVIEW_MAX_PARAMS:
            with torch.inference_mode():
                decoded = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample
            array = (decoded[0].float().clamp(-1, 1) + 1) * 127.5
        elif latents.shape[1] == 4:
            factors = torch.tensor(_LATENT_RGB, dtype=torch.float32, device=latents.device)
            array = (torch.einsum("chw,cr->rhw", latents[0].float(), factors).clamp(-1, 1) + 1) * 127.5
        else:
            return None
        return Image.fromarray(array.permute(1, 2, 0).byte().cpu().numpy())

    def _clip_scorer(self):
        if self._scorer is None:
            from pathlib import Path

            self.load()
            folder = Path(self.source.location)
            if self.source.kind != "folder" or not (folder / "clip_scorer").is_dir():
                raise EngineError(f"best-of-N needs a CLIP scorer; {self.model_name} has none "
                                  f"(the embedded model ships one)")
            from engines.diffusion.clip_score import ClipScorer

            self._scorer = ClipScorer.from_folder(folder)
        return self._scorer
