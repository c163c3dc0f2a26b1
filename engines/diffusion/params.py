"""Parameters of the diffusion engine: frozen dataclasses checked when they are built.

No torch here: tasks and the queue build these to validate a request before any weights load
(`ctx.engines.engine_class("diffusion").Txt2ImgParams(...)`). Every check raises ValueError naming
the parameter and the bad value, in the spirit of diffusers' `check_inputs`.

Names follow AUTOMATIC1111 where one exists: steps, guidance_scale (CFG scale), strength
(denoising strength), mask_blur, inpaint_full_res (= "only masked"), inpaint_full_res_padding,
inpainting_fill (masked content).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import engines.base
from engines.base import ParamError, check_int, check_range
from engines.diffusion.control_modes import CONTROL_MODES  # sd-webui-controlnet's three

# Scheduler names as A1111 shows them -> (diffusers class, extra config, A1111 sampler, schedule).
SCHEDULERS: dict[str, tuple[str, dict[str, Any], str, str | None]] = {
    "Euler": ("EulerDiscreteScheduler", {}, "Euler", None),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}, "Euler a", None),
    "DDIM": ("DDIMScheduler", {}, "DDIM", None),
    "DPM++ 2M": ("DPMSolverMultistepScheduler",
                 {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": False},
                 "DPM++ 2M", None),
    "DPM++ 2M Karras": ("DPMSolverMultistepScheduler",
                        {"algorithm_type": "dpmsolver++", "solver_order": 2,
                         "use_karras_sigmas": True},
                        "DPM++ 2M", "Karras"),
    "UniPC": ("UniPCMultistepScheduler", {}, "UniPC", None),
    "LCM": ("LCMScheduler", {}, "LCM", None),
}
DEFAULT_SCHEDULER = "DPM++ 2M"

# "Masked content" (A1111 inpainting_fill): what the masked area holds before denoising.
MASKED_CONTENT = ("fill", "original", "latent noise", "latent nothing")
OUTPAINT_SIDES = ("left", "right", "up", "down")

MIN_SIDE = 64  # A1111's minimum; the VAE needs at least a few latent pixels
MAX_SIDE = 4096
MAX_PIXELS = 2048 * 2048  # pixel budget per image; far beyond what a CPU does in reasonable time
MAX_PROMPT_CHARS = 4000  # long prompts are chunked by 75 tokens (A1111); beyond this is a mistake
MAX_SEED = 2**32 - 1  # A1111's range; -1 means "pick one at random"
MAX_IMAGES = 64  # batch_count * batch_size (or candidates) per request


def check_size(name: str, value: int | None) -> None:
    """Width or height: a whole number, a multiple of 8 (latents are 1/8 of the image), bounded."""
    if value is None:
        return
    check_int(name, value, MIN_SIDE, MAX_SIDE)
    if value % 8:
        raise ParamError(name, f"`{name}` must be a multiple of 8, got {value}")


def check_text(name: str, value: Any) -> None:
    if not isinstance(value, str):
        raise ParamError(name, f"`{name}` must be text, got {type(value).__name__}")
    if len(value) > MAX_PROMPT_CHARS:
        words = len(value.split())
        raise ParamError(name, f"`{name}` is {len(value)} characters ({words} words); at most "
                         f"{MAX_PROMPT_CHARS} are accepted")


def check_image(name: str, value: Any) -> None:
    engines.base.check_image(name, value, MAX_PIXELS)


# ControlNet (engines/diffusion/controlnet.py): sd-webui-controlnet's names and meanings.
MAX_CONTROL_UNITS = 4


@dataclass(frozen=True, eq=False)
class ControlUnit:
    """One ControlNet: a model, the image it reads (through a preprocessor module), and how
    strongly and when it steers. Checked when built; the model name is checked against the
    folders by the params that carry the unit."""
    model: str  # a ControlNet name from the folders (engines/diffusion/controlnet.py)
    image: Any  # PIL image: the preprocessor's input, or a ready map with module "none"
    module: str = "none"  # engines/diffusion/control_modules.py: none, canny, invert, ...
    weight: float = 1.0  # scale of the ControlNet's residuals (0 = off)
    guidance_start: float = 0.0  # fraction of the steps where it starts steering
    guidance_end: float = 1.0  # ... and stops
    resize_mode: str = "Crop and Resize"  # Just Resize, Crop and Resize, Resize and Fill
    processor_res: int = -1  # the preprocessor's short side; -1 = its default (512)
    threshold_a: float = -1  # the module's first/second slider (canny: low/high); -1 = default
    threshold_b: float = -1
    pixel_perfect: bool = False  # processor_res = the generation's short side
    control_mode: str = "Balanced"

    def __post_init__(self) -> None:
        from engines.diffusion.control_modules import RESIZE_MODES, check_thresholds, get_module

        if not isinstance(self.model, str) or not self.model.strip():
            raise ParamError("model", f"`model` must name a ControlNet, got {self.model!r}")
        engines.base.check_image("image", self.image, MAX_PIXELS, min_side=16)
        check_thresholds(get_module(self.module), self.threshold_a, self.threshold_b)
        check_range("weight", self.weight, 0.0, 2.0)
        check_range("guidance_start", self.guidance_start, 0.0, 1.0)
        check_range("guidance_end", self.guidance_end, 0.0, 1.0)
        if self.guidance_start >= self.guidance_end:
            raise ParamError("guidance_start", f"`guidance_start` ({self.guidance_start}) must be "
                             f"below `guidance_end` ({self.guidance_end})")
        if self.resize_mode not in RESIZE_MODES:
            raise ParamError("resize_mode", f"unknown `resize_mode` {self.resize_mode!r}; known: "
                             f"{', '.join(RESIZE_MODES)}")
        if self.processor_res != -1:
            check_int("processor_res", self.processor_res, 64, 2048)
        if not isinstance(self.pixel_perfect, bool):
            raise ParamError("pixel_perfect", f"`pixel_perfect` must be true or false, got "
                             f"{self.pixel_perfect!r}")
        if self.control_mode not in CONTROL_MODES:
            raise ParamError("control_mode", f"`control_mode` {self.control_mode!r} is not "
                             f"supported; use one of: {', '.join(CONTROL_MODES)}")


def check_control_units(units: Any, folders: tuple[str, ...], step_cache: int) -> None:
    """The units of a request: ControlUnits naming ControlNets that exist, one control mode."""
    if not isinstance(units, tuple) or not all(isinstance(u, ControlUnit) for u in units):
        raise ParamError("controlnet", f"`controlnet` must be a tuple of ControlUnit, got {units!r}")
    if len(units) > MAX_CONTROL_UNITS:
        raise ParamError("controlnet", f"at most {MAX_CONTROL_UNITS} ControlNet units, got "
                         f"{len(units)}")
    if not units:
        return
    if step_cache > 1:
        raise ParamError("step_cache", "`step_cache` does not combine with ControlNet (the "
                         "cached deep blocks would skip the ControlNet's residuals)")
    from engines.diffusion.controlnet import resolve

    for unit in units:
        resolve(unit.model, folders)  # ParamError naming an unknown or unreadable ControlNet


@dataclass(frozen=True, eq=False)
class Txt2ImgParams:
    prompt: str
    negative_prompt: str = ""
    steps: int = 20
    guidance_scale: float = 7.0  # A1111 "CFG scale"; <= 1 turns classifier-free guidance off
    width: int | None = None  # None: the model's native size (64 for the embedded model)
    height: int | None = None
    seed: int = -1  # image i of a request gets seed + i; -1 picks a random seed
    batch_size: int = 1  # images per denoising run
    batch_count: int = 1  # runs, one after another
    scheduler: str = DEFAULT_SCHEDULER
    candidates: int = 0  # best-of-N: generate this many, keep `keep` by CLIP score (0 = off)
    keep: int = 1
    preview_every: int = 5  # a preview image every this many steps (0 = none)
    # ToMe (A1111 "Token merging ratio"): merge this share of tokens before full-resolution
    # self-attention; faster at large sizes, slightly different images. 0 = exact (default).
    token_merging: float = 0.0
    # DeepCache-style: run the whole UNet every `step_cache` steps and only its shallowest level
    # in between, reusing the deep blocks' features; faster, slightly different. 0 = exact.
    step_cache: int = 0
    # A1111's "Clip skip SDXL" (sdxl_clip_l_skip): SDXL's CLIP-L reads layer `clip_skip` from the
    # end instead of its penultimate (1 too: the last layer, before the final norm). SDXL only.
    sdxl_clip_l_skip: bool = False
    # A1111's "Use old prompt editing timelines" (use_old_scheduling): in [from:to:when], `when`
    # below 1 is a fraction of the steps, any other a step (prompt_schedule.py).
    use_old_scheduling: bool = False
    # A1111 "Clip skip" (its CLIP_stop_at_last_layers option): the prompt is read from the text
    # encoder's layer this many from the end; 1 = the last. SD 1.x only, as in A1111.
    clip_skip: int = 1
    # Extra networks, A1111-style (engines/diffusion/lora.py, textual_inversion.py, vae.py):
    # `<lora:name:weight>` tags in the prompt are looked up in these folders (and subfolders);
    # embeddings are triggered by their file name in the prompt.
    lora_dirs: tuple[str, ...] = ()
    embedding_dirs: tuple[str, ...] = ()
    vae: str | None = None  # a VAE file or folder path; None = the model's own
    # ControlNet units (MultiControlNet when several), their models looked up in these folders
    # and in the embedded assets/controlnet (engines/diffusion/controlnet.py).
    controlnet: tuple[ControlUnit, ...] = ()
    controlnet_dirs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.check_inputs()

    def check_inputs(self) -> None:
        check_text("prompt", self.prompt)
        check_text("negative_prompt", self.negative_prompt)
        from engines.diffusion.prompt_schedule import MAX_AND_PARTS, split_and

        if len(split_and(self.prompt)) > MAX_AND_PARTS:  # each part: one more UNet row per step
            raise ParamError("prompt", f"`prompt` joins {len(split_and(self.prompt))} prompts "
                             f"with AND; at most {MAX_AND_PARTS} are accepted")
        check_int("steps", self.steps, 1, 150)
        check_range("guidance_scale", self.guidance_scale, 0.0, 30.0)
        check_size("width", self.width)
        check_size("height", self.height)
        if self.width and self.height and self.width * self.height > MAX_PIXELS:
            raise ParamError("width", f"`width` x `height` = {self.width}x{self.height} is over the pixel "
                             f"budget of {MAX_PIXELS} pixels")
        check_int("seed", self.seed, -1, MAX_SEED)
        check_int("batch_size", self.batch_size, 1, 16)
        check_int("batch_count", self.batch_count, 1, MAX_IMAGES)
        if self.batch_size * self.batch_count > MAX_IMAGES:
            raise ParamError("batch_count", f"`batch_count` x `batch_size` = {self.batch_count}x{self.batch_size}"
                             f" is more than {MAX_IMAGES} images")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"unknown `scheduler` {self.scheduler!r}; known: "
                             f"{', '.join(SCHEDULERS)}")
        check_int("candidates", self.candidates, 0, MAX_IMAGES)
        check_int("keep", self.keep, 1, MAX_IMAGES)
        if self.candidates and self.keep > self.candidates:
            raise ParamError("keep", f"`keep` ({self.keep}) must not exceed `candidates` "
                             f"({self.candidates})")
        check_int("preview_every", self.preview_every, 0, 1000)
        for name in ("sdxl_clip_l_skip", "use_old_scheduling"):
            if not isinstance(getattr(self, name), bool):
                raise ParamError(name, f"`{name}` must be true or false, got "
                                 f"{getattr(self, name)!r}")
        check_range("token_merging", self.token_merging, 0.0, 0.75)
        check_int("step_cache", self.step_cache, 0, 5)
        check_int("clip_skip", self.clip_skip, 1, 12)
        for name in ("lora_dirs", "embedding_dirs", "controlnet_dirs"):
            value = getattr(self, name)
            if not isinstance(value, tuple) or not all(isinstance(v, str) for v in value):
                raise ParamError(name, f"`{name}` must be a tuple of folder paths, got {value!r}")
        if self.vae is not None and not isinstance(self.vae, str):
            raise ParamError("vae", f"`vae` must be a file or folder path, got {self.vae!r}")
        # Tags name LoRAs that exist and are readable (no weights are read here).
        from engines.diffusion.lora import parse_tags, resolve

        resolve(parse_tags(self.prompt)[1], self.lora_dirs)
        check_control_units(self.controlnet, self.controlnet_dirs, self.step_cache)

    @property
    def image_count(self) -> int:
        """Images the engine denoises (best-of-N generates all candidates)."""
        return self.candidates or self.batch_size * self.batch_count


@dataclass(frozen=True, eq=False)
class Img2ImgParams(Txt2ImgParams):
    init_image: Any = None  # PIL image; resized to width x height when those are given
    strength: float = 0.75  # A1111 "Denoising strength": 0 keeps the image, 1 replaces it
    # Set by the hires fix for its second pass: the first pass's steps, from which A1111 counts
    # on the `when` of prompt editing (engines/diffusion/prompt_schedule.py); 0 = not one.
    hires_base_steps: int = 0

    def check_inputs(self) -> None:
        super().check_inputs()
        check_image("init_image", self.init_image)
        check_range("strength", self.strength, 0.0, 1.0)
        check_int("hires_base_steps", self.hires_base_steps, 0, 150)
        if int(self.steps * self.strength) < 1:
            raise ParamError("strength", f"`strength` {self.strength} x `steps` {self.steps} leaves no "
                             f"denoising step; raise either")


@dataclass(frozen=True, eq=False)
class InpaintParams(Img2ImgParams):
    mask: Any = None  # PIL image the size of init_image; white (> 127) = repaint
    mask_blur: int = 4  # feathering in pixels, inside the mask only: unmasked pixels stay exact
    inpaint_full_res: bool = False  # A1111 "only masked": work on the mask's box at full size
    inpaint_full_res_padding: int = 32  # context pixels around that box
    inpainting_fill: str = "original"  # masked content: fill, original, latent noise, nothing

    def check_inputs(self) -> None:
        super().check_inputs()
        check_image("mask", self.mask)
        if self.mask.size != self.init_image.size:
            raise ParamError("mask", f"`mask` is {self.mask.width}x{self.mask.height} but the image is "
                             f"{self.init_image.width}x{self.init_image.height}; they must match")
        check_int("mask_blur", self.mask_blur, 0, 64)
        if not isinstance(self.inpaint_full_res, bool):
            raise ParamError("inpaint_full_res", f"`inpaint_full_res` must be true or false, got "
                             f"{self.inpaint_full_res!r}")
        check_int("inpaint_full_res_padding", self.inpaint_full_res_padding, 0, 256)
        if self.inpainting_fill not in MASKED_CONTENT:
            raise ValueError(f"unknown `inpainting_fill` {self.inpainting_fill!r}; known: "
                             f"{', '.join(MASKED_CONTENT)}")


@dataclass(frozen=True, eq=False)
class OutpaintParams(Img2ImgParams):
    sides: tuple[str, ...] = ("left", "right", "up", "down")
    pixels: int = 64  # added on each chosen side; a multiple of 8
    mask_blur: int = 8
    inpainting_fill: str = "fill"
    strength: float = 1.0

    def check_inputs(self) -> None:
        super().check_inputs()
        if self.controlnet:
            raise ParamError("controlnet", "outpainting takes no ControlNet units (use inpaint "
                             "on a larger canvas)")
        sides = tuple(self.sides) if isinstance(self.sides, (list, tuple)) else ()
        if not sides or any(s not in OUTPAINT_SIDES for s in sides):
            raise ParamError("sides", f"`sides` must be some of {', '.join(OUTPAINT_SIDES)}, got "
                             f"{self.sides!r}")
        check_int("pixels", self.pixels, 8, 1024)
        if self.pixels % 8:
            raise ParamError("pixels", f"`pixels` must be a multiple of 8, got {self.pixels}")
        check_int("mask_blur", self.mask_blur, 0, 64)
        if self.inpainting_fill not in MASKED_CONTENT:
            raise ValueError(f"unknown `inpainting_fill` {self.inpainting_fill!r}; known: "
                             f"{', '.join(MASKED_CONTENT)}")
        w = self.init_image.width + self.pixels * (("left" in sides) + ("right" in sides))
        h = self.init_image.height + self.pixels * (("up" in sides) + ("down" in sides))
        if w > MAX_SIDE or h > MAX_SIDE or w * h > MAX_PIXELS:
            raise ValueError(f"outpainting to {w}x{h} is over the size budget "
                             f"({MAX_SIDE} per side, {MAX_PIXELS} pixels)")

    @property
    def output_size(self) -> tuple[int, int]:
        w = self.init_image.width + self.pixels * (("left" in self.sides) + ("right" in self.sides))
        h = self.init_image.height + self.pixels * (("up" in self.sides) + ("down" in self.sides))
        return w, h
