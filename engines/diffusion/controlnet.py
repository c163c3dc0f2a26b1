"""ControlNet on diffusers: finding the models, loading them offline, and running a generation
through diffusers' ControlNet pipelines (no ControlNet maths here).

    entry = resolve("sd-tiny-canny", folders)          # ParamError when unknown or unreadable
    pipe, extra, info = control_run(engine, pipe, mode, params, width, height, extra)

Models, by name (file or folder name; A1111's "name [hash]" is accepted too):
  - diffusers folders (config.json + diffusion_pytorch_model[.fp16].safetensors) and single
    `.safetensors` files under `<data-dir>/models/ControlNet` (subfolders too);
  - the embedded ones under assets/controlnet/ (trained by engines/training/).
A single file is either the public SD 1.5 / 2.x layout (lllyasviel's, with or without the
`control_model.` prefix) or diffusers' own layout (the SDXL ControlNets). Its config is not in
the file and the hub is out of reach, so it is read from the tensor shapes (widths, levels,
layers, transformer depth) and the family's shipped config (assets/sd-configs: attention heads,
norm groups), written to the model cache, and handed to diffusers' `from_single_file`.

A ControlNet made for another family (its cross-attention width or block widths differ from
the UNet's) is refused with a ParamError naming it, before anything runs; loaded models are
cached on the engine (a few), and the ControlNet pipeline is built per generation from the
engine's own (shared weights), so nothing of it stays on the next job's pipeline. The units'
control modes (sd-webui-controlnet's three) are applied by control_modes.py.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from engines.base import (EngineError, ParamError, file_sha256, files_below, models_cache_dir,
                          safetensors_header)
from engines.diffusion.control_modes import controlnet_for_modes

EMBEDDED = Path(__file__).resolve().parents[2] / "assets" / "controlnet"
CONFIGS = Path(__file__).resolve().parents[2] / "assets" / "sd-configs"
WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors")
FAMILIES = {768: ("v1", "SD 1.x"), 1024: ("v2", "SD 2.x"), 2048: ("xl_base", "SDXL")}
CACHED_MODELS = 3  # ControlNets kept loaded on an engine (MultiControlNet uses several)
_HASH_SUFFIX = re.compile(r"\s*\[[0-9a-fA-F]{6,64}\]$")


@dataclass(frozen=True)
class ControlNetEntry:
    name: str
    path: Path  # the folder (kind "folder") or the .safetensors file
    kind: str  # "folder" | "single_file"

    @property
    def weights(self) -> Path:
        if self.kind == "single_file":
            return self.path
        return next((self.path / w for w in WEIGHTS if (self.path / w).is_file()),
                    self.path / WEIGHTS[0])

    @property
    def short_hash(self) -> str:
        """A1111's model-list hash: the first 8 hex digits of the weights' sha256."""
        return file_sha256(self.weights)[:8]

    @property
    def title(self) -> str:
        return f"{self.name} [{self.short_hash}]"


# ------------------------------------------------------------------ finding
def find_models(folders) -> dict[str, ControlNetEntry]:
    """Every ControlNet in `folders` and the embedded ones, by name (the first one wins)."""
    found: dict[str, ControlNetEntry] = {}
    for _, path in files_below([*folders, EMBEDDED]):
        if path.name == "config.json" and any((path.parent / w).is_file() for w in WEIGHTS):
            entry = ControlNetEntry(path.parent.name, path.parent, "folder")
        elif path.suffix.lower() == ".safetensors" and not (path.parent / "config.json").is_file():
            entry = ControlNetEntry(path.stem, path, "single_file")
        else:
            continue  # other files, and the weights inside a diffusers folder
        found.setdefault(entry.name, entry)
    return found


def resolve(name: str, folders, field: str = "model") -> ControlNetEntry:
    """The ControlNet called `name` ("name" or "name [hash]"); ParamError naming it when it is
    unknown or its file is not a readable ControlNet."""
    models = find_models(folders)
    bare = _HASH_SUFFIX.sub("", name.strip()) if isinstance(name, str) else name
    entry = models.get(bare)
    if entry is None:
        known = ", ".join(sorted(models)) or "none"
        raise ParamError(field, f"unknown ControlNet {name!r}; known: {known} (put diffusers "
                         f"folders or .safetensors files in models/ControlNet)")
    describe(entry, field)
    return entry


# ------------------------------------------------------------------ reading without loading
def read_shapes(path: Path, field: str = "model") -> dict[str, list[int]]:
    """{key: shape} from a .safetensors header (no tensor read); ParamError naming the file."""
    try:
        header, _ = safetensors_header(path)
        return {k: list(v["shape"]) for k, v in header.items()}
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as error:
        raise ParamError(field, f"ControlNet file {path.name} is not a readable .safetensors "
                         f"file (corrupt or truncated: {error})") from None


def describe(entry: ControlNetEntry, field: str = "model", unet: dict | None = None) -> dict:
    """The diffusers config of a ControlNet: a folder's config.json, or inferred from a single
    file's shapes (what they do not tell from `unet`, the model's UNet config, when given).
    ParamError when it is no ControlNet."""
    if entry.kind == "folder":
        try:
            return json.loads((entry.path / "config.json").read_text())
        except (OSError, ValueError) as error:
            raise ParamError(field, f"ControlNet {entry.name!r}: unreadable config.json "
                             f"({error})") from None
    shapes = read_shapes(entry.path, field)
    try:
        return _config_from_shapes(shapes, unet)
    except (KeyError, IndexError, ValueError) as error:
        raise ParamError(field, f"{entry.path.name} is not a ControlNet in a known layout (SD "
                         f"1.5 / 2.x / SDXL, LDM or diffusers keys): {error}") from None


def _ldm_levels(shapes: dict) -> tuple[list, dict]:
    """(levels [(width, has_attention, depth)], extra fields) from LDM `input_blocks` keys:
    each level is a run of resnets (with a transformer beside each in attention levels), closed
    by a downsampler (`.op`)."""
    blocks: list[list[tuple[int, int]]] = [[]]
    index = 1
    while True:
        if f"input_blocks.{index}.0.op.weight" in shapes:
            blocks.append([])
        elif f"input_blocks.{index}.0.in_layers.2.weight" in shapes:
            prefix = f"input_blocks.{index}.1.transformer_blocks."
            depth = len({k[len(prefix):].split(".")[0] for k in shapes if k.startswith(prefix)})
            blocks[-1].append((shapes[f"input_blocks.{index}.0.in_layers.2.weight"][0], depth))
        else:
            break
        index += 1
    levels = [(level[0][0], level[0][1] > 0, max(level[0][1], 1)) for level in blocks]
    hint = sorted(int(k.split(".")[1]) for k in shapes if k.startswith("input_hint_block.")
                  and k.endswith(".weight"))
    extra = {"in_channels": shapes["input_blocks.0.0.weight"][1],
             "conditioning_channels": shapes["input_hint_block.0.weight"][1],
             # conv_in, then every second conv of the six (the strided ones), conv_out last
             "cond_out": [shapes[f"input_hint_block.{i}.weight"][0] for i in hint[:-1]][0::2],
             "layers_per_block": len(blocks[0]), "add": shapes.get("label_emb.0.0.weight"),
             "proj_in": next((v for k, v in shapes.items() if k.endswith("proj_in.weight")), None)}
    return levels, extra


def _diffusers_levels(shapes: dict) -> tuple[list, dict]:
    levels = []
    count = 1 + max(int(k.split(".")[1]) for k in shapes if k.startswith("down_blocks."))
    for i in range(count):
        width = shapes[f"down_blocks.{i}.resnets.0.conv1.weight"][0]
        prefix = f"down_blocks.{i}.attentions.0.transformer_blocks."
        depth = len({k[len(prefix):].split(".")[0] for k in shapes if k.startswith(prefix)})
        levels.append((width, depth > 0, max(depth, 1)))
    resnets = {k.split(".")[3] for k in shapes if k.startswith("down_blocks.0.resnets.")}
    blocks = sorted({int(k.split(".")[2]) for k in shapes
                     if k.startswith("controlnet_cond_embedding.blocks.")})
    extra = {"in_channels": shapes["conv_in.weight"][1],
             "conditioning_channels": shapes["controlnet_cond_embedding.conv_in.weight"][1],
             "cond_out": [shapes["controlnet_cond_embedding.conv_in.weight"][0]] + [
                 shapes[f"controlnet_cond_embedding.blocks.{b}.weight"][0] for b in blocks[1::2]],
             "layers_per_block": len(resnets), "add": shapes.get("add_embedding.linear_1.weight"),
             "proj_in": next((v for k, v in shapes.items() if k.endswith("proj_in.weight")), None)}
    return levels, extra


# What shapes do not tell: taken from the UNet the ControlNet will steer when it is known (a
# ControlNet is a copy of its UNet's encoder), else from the family's shipped config.
_BORROWED = ("attention_head_dim", "norm_num_groups", "upcast_attention", "addition_time_embed_dim")


def _config_from_shapes(shapes: dict, unet: dict | None = None) -> dict:
    """diffusers ControlNetModel config from tensor shapes; heads, norm groups, attention
    upcast and the size-id width from `unet` (the model's UNet config) or the family config."""
    shapes = {k.removeprefix("control_model."): v for k, v in shapes.items()}
    if "input_hint_block.0.weight" in shapes:
        levels, extra = _ldm_levels(shapes)
    elif "controlnet_cond_embedding.conv_in.weight" in shapes:
        levels, extra = _diffusers_levels(shapes)
    else:
        raise ValueError("no hint block (input_hint_block / controlnet_cond_embedding)")
    cross = next(v[1] for k, v in shapes.items() if k.endswith("attn2.to_k.weight"))
    if not unet or unet.get("cross_attention_dim") != cross:
        family = FAMILIES.get(cross, ("v1", None))[0]
        unet = dict(json.loads((CONFIGS / f"{family}.json").read_text())["unet"],
                    norm_num_groups=32)
    heads = unet["attention_head_dim"]
    if isinstance(heads, (list, tuple)) and len(heads) != len(levels):
        heads = heads[0]
    config = {
        "_class_name": "ControlNetModel", "in_channels": extra["in_channels"],
        "conditioning_channels": extra["conditioning_channels"],
        "conditioning_embedding_out_channels": extra["cond_out"],
        "block_out_channels": [lv[0] for lv in levels],
        "down_block_types": ["CrossAttnDownBlock2D" if lv[1] else "DownBlock2D" for lv in levels],
        "transformer_layers_per_block": [lv[2] for lv in levels],
        "layers_per_block": extra["layers_per_block"], "cross_attention_dim": cross,
        "attention_head_dim": heads, "norm_num_groups": unet.get("norm_num_groups", 32),
        "use_linear_projection": bool(extra["proj_in"] and len(extra["proj_in"]) == 2),
        "upcast_attention": bool(unet.get("upcast_attention", False)),
    }
    if unet.get("num_attention_heads"):  # configs that name heads by their count
        config["num_attention_heads"] = unet["num_attention_heads"]
    if extra["add"] is not None:  # SDXL: pooled text + size ids
        config.update(addition_embed_type="text_time",
                      addition_time_embed_dim=unet.get("addition_time_embed_dim") or 256,
                      projection_class_embeddings_input_dim=extra["add"][1])
    return config


def check_fits(entry: ControlNetEntry, unet_config: dict, model_name: str,
               field: str = "model") -> None:
    """ParamError naming the ControlNet when it was made for another model family."""
    config = describe(entry, field)
    want, have = unet_config.get("cross_attention_dim"), config.get("cross_attention_dim")
    widths = list(unet_config.get("block_out_channels") or [])
    blocks = list(config["block_out_channels"])
    if (want and have and want != have) or (widths and blocks != widths):
        made_for = FAMILIES.get(have, (None, f"cross-attention width {have}"))[1]
        this = FAMILIES.get(want, (None, f"cross-attention width {want}"))[1]
        raise ParamError(field, f"ControlNet {entry.name!r} was made for {made_for} (blocks "
                         f"{blocks}); {model_name} is {this} (blocks "
                         f"{widths}), so it cannot steer it")


# ------------------------------------------------------------------ loading
def _config_folder(config: dict) -> Path:
    text = json.dumps(config, indent=1, sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    folder = models_cache_dir() / "controlnet-configs" / digest
    if not (folder / "config.json").exists():
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / f"config.json.{os.getpid()}"
        partial.write_text(text + "\n")
        partial.replace(folder / "config.json")
    return folder


def load_controlnet(entry: ControlNetEntry, dtype, device, unet: dict | None = None):
    """A ControlNetModel from a folder or a single file (its config completed from `unet`, the
    model's UNet config); EngineError naming the file."""
    from diffusers import ControlNetModel

    try:
        if entry.kind == "folder":
            variant = "fp16" if entry.weights.name.endswith(".fp16.safetensors") else None
            model = ControlNetModel.from_pretrained(entry.path, variant=variant, torch_dtype=dtype)
        else:
            model = ControlNetModel.from_single_file(
                str(entry.path), config=str(_config_folder(describe(entry, unet=unet))),
                local_files_only=True, torch_dtype=dtype)
    except Exception as error:  # safetensors and diffusers raise their own types
        raise EngineError(f"ControlNet {entry.name!r} ({entry.path.name}) could not be loaded: "
                          f"{str(error).splitlines()[0][:300]}") from None
    return model.to(device).eval()


def cached_controlnet(engine, entry: ControlNetEntry, dtype, device, unet: dict):
    """The loaded ControlNet, kept on the engine (`engine._controlnets`) while unchanged."""
    stat = entry.weights.stat()
    borrowed = tuple(str(unet.get(k)) for k in _BORROWED)
    key = (str(entry.path), stat.st_size, stat.st_mtime, str(dtype), str(device), borrowed)
    cache: dict = engine._controlnets
    if key not in cache:
        while len(cache) >= CACHED_MODELS:
            cache.pop(next(iter(cache)))  # the oldest first
        cache[key] = load_controlnet(entry, dtype, device, unet)
    return cache[key]


# ------------------------------------------------------------------ one generation
def control_image(unit, width: int, height: int, region=None):
    """The unit's control map at the generation size. `region` (inpaint "only masked"):
    (box, full image size): the map is fitted to the whole image, then the box is cut out."""
    from engines.diffusion.control_modules import fit, preprocess

    full = region[1] if region else (width, height)
    resolution = min(full) if unit.pixel_perfect else unit.processor_res
    try:
        control = preprocess(unit.module, unit.image, resolution, unit.threshold_a,
                             unit.threshold_b)
    except ParamError as error:
        raise ParamError("controlnet", f"ControlNet module {unit.module}: {error}") from None
    control = fit(control, full[0], full[1], unit.resize_mode)
    if region:
        control = control.crop(region[0]).resize((width, height), Image.BICUBIC)
    return control


def _pipeline_class(pipe, mode: str):
    import diffusers

    xl = getattr(pipe, "text_encoder_2", None) is not None
    suffix = {"txt2img": "", "img2img": "Img2Img", "inpaint": "Inpaint"}[mode]
    return getattr(diffusers, f"StableDiffusion{'XL' if xl else ''}ControlNet{suffix}Pipeline")


def _check_steers(entry: ControlNetEntry, pipe, unet_config: dict, model_name: str) -> None:
    """ParamError unless the ControlNet fits this UNet and its hint encoder lands on the
    model's latent grid (1/8 of the image for SD, 1/4 for the embedded 64 px model)."""
    check_fits(entry, unet_config, model_name, field="controlnet")
    steps = len(describe(entry).get("conditioning_embedding_out_channels") or (0,) * 4) - 1
    if 2 ** steps != pipe.vae_scale_factor:
        raise ParamError("controlnet", f"ControlNet {entry.name!r} reads images at 1/{2 ** steps} "
                         f"scale; {model_name}'s latents are 1/{pipe.vae_scale_factor}")


def control_run(engine, pipe, mode: str, params, width: int, height: int,
                extra: dict) -> tuple[Any, dict, dict]:
    """(ControlNet pipeline, call arguments, info) for a generation with `params.controlnet`
    (SD-like families only: the others are refused when the job is queued). Built from `pipe`
    (current VAE, LoRAs and speed options included) each time; the engine's own pipelines are
    untouched."""
    extra = dict(extra)
    region = extra.pop("control_region", None)
    unet_config = dict(pipe.unet.config)
    units = params.controlnet
    models, maps, records = [], [], []
    for unit in units:
        entry = resolve(unit.model, params.controlnet_dirs, field="controlnet")
        _check_steers(entry, pipe, unet_config, engine.model_name)
        models.append(cached_controlnet(engine, entry, pipe.unet.dtype, pipe.device, unet_config))
        maps.append(control_image(unit, width, height, region))
        records.append({"model": entry.title, "module": unit.module, "weight": unit.weight,
                        "resize_mode": unit.resize_mode, "guidance_start": unit.guidance_start,
                        "guidance_end": unit.guidance_end, "control_mode": unit.control_mode})
    # The units' control modes (control_modes.py): one unit is the plain ControlNet, several a
    # MultiControlNetModel; a mix of modes, or "My prompt is more important", a ModeControlNets.
    cfg = params.guidance_scale > 1 and pipe.unet.config.get("time_cond_proj_dim") is None
    guess, controlnet = controlnet_for_modes(models, [u.control_mode for u in units], cfg)
    single = controlnet is models[0]
    control = _pipeline_class(pipe, mode).from_pipe(pipe, controlnet=controlnet)
    control.set_progress_bar_config(disable=True)
    extra["image" if mode == "txt2img" else "control_image"] = maps[0] if single else maps
    weights = [u.weight for u in units]
    extra.update(controlnet_conditioning_scale=weights[0] if single else weights,
                 control_guidance_start=[u.guidance_start for u in units],
                 control_guidance_end=[u.guidance_end for u in units], guess_mode=guess)
    return control, extra, {"controlnet": records}
