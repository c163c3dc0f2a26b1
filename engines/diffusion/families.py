"""Model families: which kind of diffusion model a folder, file or hub id holds, read from its
headers and configs only (model_index.json, a component's config.json, a safetensors header;
no weights), and what the studio does with each.

    family = detect_family("/data/models/kandinsky-2-2")      # -> FAMILIES["kandinsky22"]
    family.modes                                              # ("txt2img", "img2img", ...)
    check_fields(family, "txt2img", {"token_merging": 0.3})   # ParamError naming the field

Two ways of driving a family:
- `sd_like` families (SD 1.x/2.x, SDXL, Turbo fine-tunes) take the whole Stable Diffusion path
  of engine.py: weighted prompts encoded by the studio, LoRAs, embeddings, VAE swap, the A1111
  samplers, token merging, step cache.
- the others (Kandinsky 2.2, PixArt-α/Σ, SD3, LCM, Stable unCLIP) are called with plain prompts
  and only the arguments their pipeline's `__call__` has (engines/diffusion/family_run.py); a
  request field such a family lacks is refused by name before the job is queued.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engines.base import EngineError, ParamError

IMAGE_MODES = ("txt2img", "img2img", "inpaint", "outpaint")
# The Stable Diffusion path's own fields (engine.py, extras.py, speed.py); no other family has them.
SD_ONLY = ("scheduler", "token_merging", "step_cache", "vae", "candidates", "keep", "controlnet",
           "clip_skip", "sdxl_clip_l_skip", "use_old_scheduling")


@dataclass(frozen=True)
class Family:
    id: str
    label: str  # what users read: "Kandinsky 2.2 (prior + decoder)"
    modes: tuple[str, ...]  # tasks it runs: IMAGE_MODES and/or "variations"
    sd_like: bool = False  # driven by the Stable Diffusion path (see the module docstring)
    lacks: tuple[str, ...] = ()  # request fields it does not take, beyond SD_ONLY when not sd_like
    few_step: bool = False  # distilled: 1-8 steps, little or no CFG
    hint: str = ""  # recommended settings, shown in the Models tab and docs

    def refused_fields(self) -> tuple[str, ...]:
        return self.lacks + (() if self.sd_like else SD_ONLY)


_ALL = IMAGE_MODES
FAMILIES: dict[str, Family] = {f.id: f for f in (
    Family("sd1", "Stable Diffusion 1.x", _ALL, sd_like=True),
    Family("sd2", "Stable Diffusion 2.x", _ALL, sd_like=True),
    Family("sdxl", "Stable Diffusion XL", _ALL, sd_like=True),
    Family("sd-inpaint", "Stable Diffusion inpainting (9-channel UNet)", ("inpaint", "outpaint"),
           sd_like=True, hint="an inpainting-only checkpoint: the masked image rides along"),
    Family("sd-turbo", "SD-Turbo / SDXL-Turbo (few-step)", _ALL, sd_like=True, few_step=True,
           hint="1-4 steps, CFG scale 0 (trained without classifier-free guidance)"),
    Family("lcm", "Latent Consistency Model (few-step)", ("txt2img", "img2img"),
           lacks=("negative_prompt",), few_step=True,
           hint="2-8 steps, CFG scale 1-2 (guidance is an input of the UNet, not CFG)"),
    Family("kandinsky22", "Kandinsky 2.2 (prior + decoder)", ("txt2img", "img2img", "variations"),
           hint="the prior maps the prompt's CLIP text embedding to an image embedding, the "
                "decoder paints it (DALL·E 2's design); CFG 4"),
    Family("kandinsky22-inpaint", "Kandinsky 2.2 inpainting (prior + decoder)",
           ("inpaint", "outpaint"), lacks=("strength",),
           hint="the 9-channel inpainting decoder; it repaints the mask at full strength"),
    Family("stable-unclip", "Stable unCLIP (prior + decoder)", ("txt2img",),
           hint="a prior makes the CLIP image embedding the decoder paints from"),
    Family("stable-unclip-img2img", "Stable unCLIP image variations", ("variations",),
           hint="variations of an image from its CLIP image embedding"),
    Family("pixart-alpha", "PixArt-α", ("txt2img",), hint="T5 text encoder, DiT; 20 steps, CFG 4.5"),
    Family("pixart-sigma", "PixArt-Σ", ("txt2img",), hint="T5 text encoder, DiT; 20 steps, CFG 4.5"),
    Family("sd3", "Stable Diffusion 3", _ALL, hint="MMDiT, flow matching; 28 steps, CFG 7"),
)}

# model_index.json `_class_name` -> family id (the text-to-image class each family saves as).
_BY_CLASS = {
    "StableDiffusionPipeline": "sd1", "StableDiffusionImg2ImgPipeline": "sd1",
    "StableDiffusionInpaintPipeline": "sd1",
    "StableDiffusionXLPipeline": "sdxl", "StableDiffusionXLImg2ImgPipeline": "sdxl",
    "StableDiffusionXLInpaintPipeline": "sdxl",
    "LatentConsistencyModelPipeline": "lcm", "LatentConsistencyModelImg2ImgPipeline": "lcm",
    "KandinskyV22CombinedPipeline": "kandinsky22",
    "KandinskyV22Img2ImgCombinedPipeline": "kandinsky22",
    "KandinskyV22InpaintCombinedPipeline": "kandinsky22",
    "StableUnCLIPPipeline": "stable-unclip", "StableUnCLIPImg2ImgPipeline": "stable-unclip-img2img",
    "PixArtAlphaPipeline": "pixart-alpha", "PixArtSigmaPipeline": "pixart-sigma",
    "StableDiffusion3Pipeline": "sd3", "StableDiffusion3Img2ImgPipeline": "sd3",
    "StableDiffusion3InpaintPipeline": "sd3",
}
# Classes that load but are only one half of a family, with what to do instead.
_HALVES = {
    "KandinskyV22Pipeline": "a Kandinsky 2.2 decoder without its prior; save the prior and the "
                            "decoder as one KandinskyV22CombinedPipeline folder",
    "KandinskyV22PriorPipeline": "a Kandinsky 2.2 prior without its decoder; save the prior and "
                                 "the decoder as one KandinskyV22CombinedPipeline folder",
    "sdxl-refiner": "an SDXL refiner, which only refines an SDXL base's images: give it as "
                    "`refiner` of a txt2img_refiner job with an SDXL base model",
}
# Single-file families (engines/diffusion/single_file.py) -> family id.
_BY_SINGLE_FILE = {"v1": "sd1", "v2": "sd2", "xl_base": "sdxl"}


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise EngineError(f"cannot read {path.name} of {path.parent.name}: {error}") from None
    if not isinstance(data, dict):
        raise EngineError(f"{path} is not a JSON object")
    return data


def _component_config(folder: Path, name: str) -> dict:
    path = folder / name / "config.json"
    return _read_json(path) if path.is_file() else {}


def family_of_folder(folder: Path) -> Family:
    """The family of a diffusers folder, from model_index.json and component configs."""
    index = _read_json(folder / "model_index.json")
    class_name = str(index.get("_class_name", ""))
    if class_name in _HALVES:
        raise EngineError(f"{folder.name} is {_HALVES[class_name]}")
    family_id = _BY_CLASS.get(class_name)
    if family_id is None:
        raise EngineError(unsupported_sentence(folder.name, class_name))
    if family_id in ("sd1", "sdxl") and _component_config(folder, "unet").get("in_channels") == 9:
        family_id = "sd-inpaint"  # SD 1.x/2.x/SDXL inpainting checkpoints: no txt2img
    elif family_id == "sd1":
        family_id = _refine_sd(folder, index)
    elif family_id == "kandinsky22" and _component_config(folder, "unet").get("in_channels") == 9:
        family_id = "kandinsky22-inpaint"  # masked image + mask ride along the latents
    elif family_id == "sdxl" and index.get("text_encoder") in (None, [None, None]):
        # the refiner has only the second (OpenCLIP) text encoder
        raise EngineError(f"{folder.name} is {_HALVES['sdxl-refiner']}")
    elif family_id == "sdxl" and _is_turbo(folder):
        family_id = "sd-turbo"
    return FAMILIES[family_id]


def _refine_sd(folder: Path, index: dict) -> str:
    """SD 1.x, 2.x, or a few-step (Turbo / LCM) fine-tune of them, from configs."""
    unet = _component_config(folder, "unet")
    if unet.get("time_cond_proj_dim"):  # LCM-distilled UNets take the guidance as an input
        return "lcm"
    if _is_turbo(folder):
        return "sd-turbo"
    return "sd2" if unet.get("cross_attention_dim") == 1024 else "sd1"


def _is_turbo(folder: Path) -> bool:
    """SD-Turbo and SDXL-Turbo ship a trailing-timestep Euler scheduler; the name says it too."""
    scheduler = _read_json(folder / "scheduler" / "scheduler_config.json") \
        if (folder / "scheduler" / "scheduler_config.json").is_file() else {}
    return "turbo" in folder.name.lower() or (
        scheduler.get("_class_name") == "EulerDiscreteScheduler"
        and scheduler.get("timestep_spacing") == "trailing")


def is_sdxl_refiner(folder: Path) -> bool:
    """An SDXL refiner folder: the SDXL img2img class with only the second text encoder."""
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        return False
    index = _read_json(index_path)
    return index.get("_class_name") == "StableDiffusionXLImg2ImgPipeline" and \
        index.get("text_encoder") in (None, [None, None])


def unsupported_sentence(name: str, class_name: str) -> str:
    what = class_name or "a pipeline without a `_class_name`"
    known = ", ".join(sorted({f.label for f in FAMILIES.values()}))
    return (f"{name} is a {what} model, a family this studio does not run; it runs {known}")


def detect_family(model_id: str, kind: str | None = None) -> Family:
    """The family of a model id as engines/diffusion/loading.py resolves it (`kind` is the
    ModelSource kind when known). Headers only; an unsupported family raises EngineError with
    one sentence naming it."""
    from engines.diffusion.loading import ALIASES

    if model_id in ALIASES:
        return family_of_folder(ALIASES[model_id])
    path = Path(model_id).expanduser()
    if kind in (None, "folder") and (path / "model_index.json").is_file():
        return family_of_folder(path)
    if kind in (None, "single_file") and path.suffix.lower() == ".safetensors" and path.is_file():
        from engines.diffusion.single_file import checkpoint_family

        family = FAMILIES[_BY_SINGLE_FILE[checkpoint_family(path)]]
        return FAMILIES["sd-turbo"] if "turbo" in path.name.lower() else family
    cached = _hub_index(model_id)
    if cached is not None:
        return family_of_folder(cached.parent)
    return FAMILIES["sd1"]  # an uncached hub id: the Stable Diffusion path, as before families


def _hub_index(repo_id: str) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "model_index.json")
    except Exception:  # not a hub id, or an unreadable cache
        return None
    return Path(found) if isinstance(found, str) else None


# ------------------------------------------------------------------ request checks
_NEUTRAL: dict[str, Any] = {"negative_prompt": "", "token_merging": 0, "step_cache": 0,
                            "candidates": 0, "keep": 1, "vae": ("Automatic", "None", ""),
                            "clip_skip": 1, "sdxl_clip_l_skip": False,
                            "use_old_scheduling": False}


def check_fields(family: Family, task: str, params: dict) -> None:
    """ParamError unless `family` runs `task` and takes every field set in `params`. A field at
    its neutral value (an empty negative prompt, token merging 0, the default sampler) is
    accepted, so a tab that always sends every control still works."""
    from engines.diffusion.params import DEFAULT_SCHEDULER

    if task not in family.modes:
        runs = ", ".join(family.modes)
        raise ParamError("model", f"{family.label} does not do {task} (it does {runs})")
    neutral = dict(_NEUTRAL, scheduler=DEFAULT_SCHEDULER)
    for name in family.refused_fields():
        value = params.get(name)
        if value is None:
            continue
        allowed = neutral.get(name)
        if value == allowed or (isinstance(allowed, tuple) and value in allowed):
            continue
        raise ParamError(name, f"{family.label} does not take `{name}` (got {value!r}); leave "
                               f"it out for this model")
    if not family.sd_like and "<lora:" in str(params.get("prompt", "")):
        raise ParamError("prompt", f"{family.label} takes no <lora:...> tags in this studio")


def native_side(model_id: str) -> int | None:
    """The side a diffusers folder was trained at, from its denoiser's sample size and its
    autoencoder's depth (configs only), or None."""
    folder = Path(model_id)
    denoiser = _component_config(folder, "transformer") or _component_config(folder, "unet") \
        if (folder / "model_index.json").is_file() else {}
    autoencoder = _component_config(folder, "vae") or _component_config(folder, "movq") \
        if denoiser else {}
    sample, blocks = denoiser.get("sample_size"), autoencoder.get("block_out_channels")
    if not isinstance(sample, int) or not blocks:
        return None
    return sample * 2 ** (len(blocks) - 1)


def family_info(model_id: str) -> dict:
    """Family facts for listings (Models tab, API): id, label, modes, hint; never raises."""
    try:
        family = detect_family(model_id)
    except (EngineError, ValueError, OSError) as error:
        return {"id": None, "label": "unsupported", "modes": [], "hint": str(error),
                "refuses": [], "side": None}
    return {"id": family.id, "label": family.label, "modes": list(family.modes),
            "hint": family.hint, "refuses": list(family.refused_fields()),
            "side": native_side(model_id)}
