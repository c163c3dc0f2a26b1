"""Finding and loading a Stable Diffusion-family checkpoint, and the speed options.

A model id is one of:
  - "genstudio-tiny-sd": the embedded model under assets/sd-tiny;
  - a local diffusers folder (model_index.json), loaded with safetensors only;
  - a single `.safetensors` checkpoint (SD 1.x/2.x, SDXL, Turbo, LCM) via `from_single_file`,
    with the family configs shipped in assets/sd-configs (engines/diffusion/single_file.py);
  - a hub id such as "stabilityai/sd-turbo" (needs the hub or its local cache).
Pickled checkpoints (.ckpt, .pt, .pth, .bin) are refused: unpickling runs arbitrary code.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
from dataclasses import dataclass
from pathlib import Path

from engines.base import EngineError, ParamError
from engines.diffusion.params import SCHEDULERS
from engines.diffusion.single_file import (checkpoint_family, config_folder,
                                           sidecar_prediction_type)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = "genstudio-tiny-sd"
ALIASES = {DEFAULT_MODEL: REPO_ROOT / "assets" / "sd-tiny"}
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")


@dataclass(frozen=True)
class RuntimeOptions:
    """How the weights run. fp16 and CPU offload apply on CUDA only."""
    half_precision: bool | None = None  # fp16 weights; None = on for CUDA, off elsewhere
    # Memory savers for large images, on any device (RAM on a laptop matters as much as VRAM):
    attention_slicing: bool = False  # attention in slices: less peak memory, a little slower
    vae_tiling: bool = False  # decode (and encode) large images tile by tile
    cpu_offload: bool = False  # CUDA: keep idle sub-models in RAM (accelerate)
    # NHWC convolutions. Measured slower in eager mode on this CPU; used with `compile`, where
    # inductor's frozen, pre-packed oneDNN convolutions want it.
    channels_last: bool = False
    # torch.compile the UNet with inductor "freezing". Minutes for the first call at SD 1.5
    # size, so opt-in: GENSTUDIO_COMPILE=1 or RuntimeOptions(compile=True); see docs/diffusion.md
    compile: bool = False
    threads: int | None = None  # torch intra-op threads; None leaves torch's default
    # CPU only: run the UNet on OpenVINO, "f32" (same outputs to 1e-5) or "bf16" (about half
    # the time on AVX-512 BF16 CPUs, slightly different images); engines/diffusion/openvino.py
    openvino: str | None = None

    @classmethod
    def from_env(cls) -> "RuntimeOptions":
        """The studio builds engines as Engine(model_id, device); these switches reach them:
        GENSTUDIO_FP16=0/1, GENSTUDIO_ATTENTION_SLICING=1, GENSTUDIO_VAE_TILING=1,
        GENSTUDIO_CPU_OFFLOAD=1, GENSTUDIO_CHANNELS_LAST=1, GENSTUDIO_COMPILE=1,
        GENSTUDIO_OPENVINO=f32|bf16."""
        def flag(name: str) -> bool | None:
            value = os.environ.get(f"GENSTUDIO_{name}")
            return None if value is None else value.strip().lower() in ("1", "true", "yes", "on")

        return cls(half_precision=flag("FP16"), attention_slicing=bool(flag("ATTENTION_SLICING")),
                   vae_tiling=bool(flag("VAE_TILING")), cpu_offload=bool(flag("CPU_OFFLOAD")),
                   channels_last=bool(flag("CHANNELS_LAST")), compile=bool(flag("COMPILE")),
                   openvino=os.environ.get("GENSTUDIO_OPENVINO", "").strip().lower() or None)


@dataclass(frozen=True)
class ModelSource:
    kind: str  # "folder" | "single_file" | "hub"
    location: str
    name: str  # shown in the infotext's "Model"


def resolve_model(model_id: str) -> ModelSource:
    if not isinstance(model_id, str) or not model_id.strip():
        raise ParamError("model_id", f"`model_id` must be a model name, folder or file, got {model_id!r}")
    if model_id in ALIASES:
        folder = ALIASES[model_id]
        if not (folder / "model_index.json").exists():
            raise EngineError(f"the embedded model is missing: no {folder}/model_index.json")
        return ModelSource("folder", str(folder), model_id)
    path = Path(model_id).expanduser()
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise EngineError(f"refusing to load {path.name}: pickled checkpoints can run arbitrary "
                          f"code when opened; convert it to .safetensors first")
    if path.is_dir():
        if not (path / "model_index.json").exists():
            raise EngineError(f"{path} is a folder but not a diffusers model (no model_index.json)")
        return ModelSource("folder", str(path), path.name)
    if path.suffix.lower() == ".safetensors":
        if not path.is_file():
            raise EngineError(f"no such checkpoint file: {path}")
        return ModelSource("single_file", str(path), path.stem)
    if path.exists():
        raise EngineError(f"{path} is neither a diffusers folder nor a .safetensors file")
    if model_id.count("/") == 1 and " " not in model_id:
        return ModelSource("hub", model_id, model_id.split("/")[1])
    raise EngineError(f"unknown model {model_id!r}: not a known name, folder, .safetensors file "
                      f"or hub id")


def model_hash(source: ModelSource) -> str | None:
    """A1111's "Model hash": the first 10 hex digits of the checkpoint's sha256. For a diffusers
    folder, the UNet weights file stands in for the checkpoint."""
    if source.kind == "single_file":
        file = Path(source.location)
    elif source.kind == "folder":
        folder = Path(source.location)  # the denoiser: a UNet, or a transformer (PixArt, SD3)
        candidates = (sorted((folder / "unet").glob("*.safetensors"))
                      or sorted((folder / "transformer").glob("*.safetensors")))
        if not candidates:
            return None
        file = candidates[0]
    else:
        return None
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()[:10]


def _is_sdxl(source: ModelSource) -> bool:
    if source.kind == "folder":
        index = json.loads((Path(source.location) / "model_index.json").read_text())
        return "text_encoder_2" in index or "XL" in index.get("_class_name", "")
    return "xl" in source.location.lower()


def load_pipeline(source: ModelSource, device: str, options: RuntimeOptions):
    """The text-to-image pipeline, on its device, with the speed options applied."""
    import torch
    from diffusers import (AutoPipelineForText2Image, StableDiffusionPipeline,
                           StableDiffusionXLPipeline)

    if options.openvino is not None:
        from engines.diffusion.openvino import PRECISIONS

        if options.openvino not in PRECISIONS:
            raise EngineError(f"GENSTUDIO_OPENVINO must be one of {', '.join(PRECISIONS)}, "
                              f"got {options.openvino!r}")
        if options.compile:
            raise EngineError("GENSTUDIO_OPENVINO and GENSTUDIO_COMPILE both compile the UNet; "
                              "set one or the other")
    half = options.half_precision if options.half_precision is not None else device == "cuda"
    dtype = torch.float16 if half and device != "cpu" else torch.float32
    family = checkpoint_family(source.location) if source.kind == "single_file" else None
    prediction = sidecar_prediction_type(source.location) if family else None  # before loading
    xl = family == "xl_base" if family else _is_sdxl(source)
    extra = {} if xl else {"safety_checker": None, "feature_extractor": None,
                           "requires_safety_checker": False}
    try:
        if source.kind == "single_file":
            # The family's configs and tokenizer come from assets/sd-configs, not the hub.
            cls = StableDiffusionXLPipeline if xl else StableDiffusionPipeline
            pipe = cls.from_single_file(source.location, config=str(config_folder(family)),
                                        local_files_only=True, dtype=dtype, **extra)
        else:
            pipe = AutoPipelineForText2Image.from_pretrained(
                source.location, dtype=dtype, use_safetensors=True,
                local_files_only=source.kind == "folder" or bool(os.environ.get("HF_HUB_OFFLINE")),
                **extra)
    except EngineError:
        raise
    except Exception as error:  # diffusers raises many kinds; the user needs one sentence
        raise EngineError(f"could not load {source.name}: {error}") from error
    pipe.set_progress_bar_config(disable=True)
    if prediction and prediction != pipe.scheduler.config.get("prediction_type"):
        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config,
                                                          prediction_type=prediction)
    if options.threads and device == "cpu":
        torch.set_num_threads(options.threads)
    if device == "cuda" and options.cpu_offload:
        pipe.enable_model_cpu_offload()
    else:
        pipe.to(device)
    if options.attention_slicing:
        pipe.enable_attention_slicing()
    if options.vae_tiling:
        pipe.vae.enable_tiling()
        # diffusers tiles at the VAE's training size: 64 px for the embedded model, where
        # GroupNorm statistics of a nearly uniform tile wreck it. Below 512 px a whole decode
        # is cheap anyway, so tiles are at least that (SD's own tile size).
        vae = pipe.vae
        vae.tile_sample_min_size = max(vae.tile_sample_min_size, 512)
        scale = 2 ** (len(vae.config.block_out_channels) - 1)
        vae.tile_latent_min_size = vae.tile_sample_min_size // scale
    if options.channels_last or options.compile:
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if options.openvino and device == "cpu":
        from engines.diffusion.openvino import enable_openvino

        enable_openvino(pipe.unet, options.openvino, torch.get_num_threads())
    if options.compile:
        if device == "cpu":
            import torch._inductor.config as inductor_config

            inductor_config.freezing = True  # fold weights in: lets oneDNN pre-pack them
        pipe.unet = torch.compile(pipe.unet)
        # The VAE is channels_last too, which was slower in eager mode for the UNet: compile
        # its decoder as well rather than run it eagerly in that layout.
        pipe.vae.decoder = torch.compile(pipe.vae.decoder)
    return pipe


def make_scheduler(base_config: dict, name: str):
    """A fresh scheduler of the named kind from the checkpoint's own scheduler config (diffusers'
    `from_config` way), so training settings such as the beta schedule carry over."""
    import diffusers

    if name not in SCHEDULERS:
        raise ValueError(f"unknown `scheduler` {name!r}; known: {', '.join(SCHEDULERS)}")
    class_name, overrides, _, _ = SCHEDULERS[name]
    # Keep only the keys this class knows, so one scheduler's options do not leak into another.
    cls = getattr(diffusers, class_name)
    known = set(inspect.signature(cls.__init__).parameters)
    config = {k: v for k, v in base_config.items() if k in known or k.startswith("_")}
    return cls.from_config(config, **overrides)
