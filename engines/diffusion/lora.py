"""LoRA files and `<lora:name:weight>` prompt tags, the AUTOMATIC1111 way, on diffusers + peft.

    <lora:name>              weight 1 for the UNet and the text encoder(s)
    <lora:name:0.8>          weight 0.8 for both (0 = off)
    <lora:name:0.8:0.5>      text encoder 0.8, UNet 0.5 (A1111's te / unet multipliers)
    <lora:name:te=0.8:unet=0.5>   the same, named

Files are `.safetensors` found by file name (without extension) in the LoRA folders and their
subfolders (A1111's `models/Lora`). Two key layouts are read, both by diffusers'
`load_lora_weights` (no LoRA maths here):
  - kohya / A1111 / ComfyUI: `lora_unet_...`, `lora_te_...` (SDXL `lora_te1_`, `lora_te2_`),
    `.lora_down.weight`, `.lora_up.weight`, `.alpha`;
  - diffusers / peft: `unet....lora_A.weight` / `.lora_B.weight` (or the older `.lora.down`),
    `text_encoder....`, `text_encoder_2....`.

Checks before any weights load, each raising ParamError("prompt", ...) naming the LoRA: the
name exists, the file's header is readable, its keys are a LoRA layout, and its tensor shapes
fit the model's family (cross-attention width: 768 SD 1.x, 1024 SD 2.x, 2048 SDXL).

The engine loads the requested LoRAs before a generation and unloads them after it
(`applied`), so a job without LoRA never sees weights of an earlier one. `addnet_hash` is A1111's
"Lora hashes" value (sha256 of the tensor bytes after the header, first 12 hex digits).
"""
from __future__ import annotations

import json
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from engines.base import ParamError, file_sha256, files_below, safetensors_header

# A1111's extra-network syntax: <kind:arg1:arg2...>; kinds handled here are lora (and lyco,
# its LyCORIS alias in older A1111 versions).
RE_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")
LORA_KINDS = ("lora", "lyco")
FAMILIES = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL"}
MAX_WEIGHT = 10.0


@dataclass(frozen=True)
class LoraTag:
    name: str
    te_weight: float
    unet_weight: float


def parse_tags(prompt: str) -> tuple[str, list[LoraTag]]:
    """(prompt without its LoRA tags, the tags). Other extra-network tags stay in the text."""
    tags: list[LoraTag] = []

    def take(match: re.Match) -> str:
        if match.group(1) not in LORA_KINDS:
            return match.group(0)
        tags.append(_parse_args(match.group(2), match.group(0)))
        return ""

    return RE_EXTRA_NETWORK.sub(take, prompt), tags


def _parse_args(args: str, tag: str) -> LoraTag:
    positional, named = [], {}
    for part in args.split(":"):
        key, eq, value = part.partition("=")
        if eq:
            named[key.strip()] = value.strip()
        else:
            positional.append(part.strip())
    if not positional or not positional[0]:
        raise ParamError("prompt", f"{tag} names no LoRA; write <lora:name:weight>")

    def number(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ParamError("prompt", f"{tag}: weight {text!r} is not a number") from None
        if not -MAX_WEIGHT <= value <= MAX_WEIGHT:
            raise ParamError("prompt", f"{tag}: weight {value} is outside -{MAX_WEIGHT}..{MAX_WEIGHT}")
        return value

    te = number(named.get("te", positional[1] if len(positional) > 1 else "1"))
    unet = number(named.get("unet", positional[2] if len(positional) > 2 else str(te)))
    return LoraTag(positional[0], te, unet)


# ------------------------------------------------------------------ files
def find_files(folders: Iterable[str | Path], suffixes: tuple[str, ...] = (".safetensors",)
               ) -> dict[str, Path]:
    """{name: path} for every file with these suffixes in the folders and their subfolders.
    The name is the file name without its extension; the first folder wins on a clash."""
    found: dict[str, Path] = {}
    for folder, path in files_below(folders):
        if path.suffix.lower() in suffixes and path.is_file() and not any(
                part.startswith(".") for part in path.relative_to(folder).parts):
            found.setdefault(path.stem, path)
    return found


def read_header(path: Path) -> tuple[dict[str, dict], dict[str, str]]:
    """({key: {"shape": [...], "dtype": ...}}, metadata) from a .safetensors header, without
    reading any tensor; ParamError when the file is not a readable .safetensors."""
    try:
        return safetensors_header(path)
    except (OSError, ValueError, TypeError, AttributeError) as error:
        raise ParamError("prompt", f"{path.name} is not a readable .safetensors file "
                         f"(corrupt or truncated: {error})") from None


@dataclass(frozen=True)
class LoraInfo:
    name: str
    path: Path
    layout: str  # "kohya" | "diffusers"
    parts: tuple[str, ...]  # of "unet", "text_encoder", "text_encoder_2"
    cross_attention_dim: int | None  # what the UNet part was trained for
    text_dims: tuple[int, ...]  # hidden widths of the text encoders it patches
    metadata: dict = field(default_factory=dict, compare=False)

    @property
    def family(self) -> str | None:
        return FAMILIES.get(self.cross_attention_dim) if self.cross_attention_dim else None


def _layout(keys: list[str]) -> str | None:
    if any(k.startswith(("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")) for k in keys):
        return "kohya"
    if any(k.startswith(("unet.", "text_encoder.", "text_encoder_2.")) and
           (".lora_A." in k or ".lora.down." in k or ".lora_linear_layer." in k) for k in keys):
        return "diffusers"
    return None


def describe(name: str, path: Path) -> LoraInfo:
    """What a LoRA file holds, from its header; ParamError naming it if it is not a LoRA."""
    header, metadata = read_header(path)
    keys = list(header)
    layout = _layout(keys)
    if layout is None:
        sample = ", ".join(keys[:2]) or "none"
        raise ParamError("prompt", f"LoRA {name!r} ({path.name}) is not a LoRA in the kohya/A1111 "
                         f"or diffusers layout (keys like {sample})")
    parts = []
    for part, prefixes in (("unet", ("lora_unet_", "unet.")),
                           ("text_encoder", ("lora_te_", "lora_te1_", "text_encoder.")),
                           ("text_encoder_2", ("lora_te2_", "text_encoder_2."))):
        if any(k.startswith(prefixes) for k in keys):
            parts.append(part)
    cross, text = None, []
    for key, value in header.items():
        down = ("lora_down" in key or "lora_A" in key or "lora.down" in key) and key.endswith("weight")
        if not down or len(value["shape"]) != 2:
            continue
        flat = key.replace(".", "_")
        if cross is None and "attn2_to_k" in flat and key.startswith(("lora_unet_", "unet.")):
            cross = int(value["shape"][1])
        if "self_attn_q_proj" in flat and int(value["shape"][1]) not in text:
            text.append(int(value["shape"][1]))
    return LoraInfo(name, path, layout, tuple(parts), cross, tuple(text), metadata)


def check_fits(info: LoraInfo, model_dims: dict | None, model_name: str) -> None:
    """ParamError naming the LoRA when it was made for another model family than this model.
    model_dims: {"cross_attention_dim": int, "text_dims": [int, ...]} or None (unknown)."""
    if not model_dims:
        return
    want = model_dims.get("cross_attention_dim")
    if info.cross_attention_dim and want and info.cross_attention_dim != want:
        made_for = info.family or f"cross-attention width {info.cross_attention_dim}"
        this = FAMILIES.get(want) or f"cross-attention width {want}"
        raise ParamError("prompt", f"LoRA {info.name!r} was made for {made_for}; {model_name} is "
                         f"{this}, so it cannot be applied")
    widths = set(model_dims.get("text_dims") or ())
    if widths and info.text_dims and not set(info.text_dims) <= widths:
        raise ParamError("prompt", f"LoRA {info.name!r} patches a text encoder of width "
                         f"{'/'.join(map(str, info.text_dims))}; {model_name} has "
                         f"{'/'.join(map(str, sorted(widths)))}, so it cannot be applied")


def resolve(tags: list[LoraTag], folders: Iterable[str | Path]) -> list[tuple[LoraInfo, LoraTag]]:
    """The files for a prompt's tags; ParamError naming an unknown or unreadable LoRA."""
    if not tags:
        return []
    files = find_files(folders)
    out = []
    for tag in tags:
        if tag.name not in files:
            known = ", ".join(sorted(files)[:20]) or "none (put .safetensors files in models/Lora)"
            raise ParamError("prompt", f"unknown LoRA {tag.name!r}; known: {known}")
        out.append((describe(tag.name, files[tag.name]), tag))
    return out


def addnet_hash(path: Path) -> str:
    """A1111's LoRA short hash: sha256 of the bytes after the safetensors header, 12 hex digits
    (kohya's "addnet" hash, so a LoRA's hash is the same in A1111, ComfyUI and here)."""
    with open(path, "rb") as handle:
        header = int.from_bytes(handle.read(8), "little")
    return file_sha256(path, skip=8 + header)[:12]


def model_dims(model_id: str) -> dict | None:
    """{"cross_attention_dim", "text_dims"} of a model from its configs or safetensors header,
    without loading it; None when they cannot be read (a hub id: checked at load time)."""
    from engines.diffusion.loading import resolve_model

    try:
        source = resolve_model(model_id)
    except Exception:
        return None  # the model itself is reported by the engine
    path = Path(source.location)
    try:
        if source.kind == "folder":
            unet = json.loads((path / "unet" / "config.json").read_text())
            text = [json.loads((path / sub / "config.json").read_text())["hidden_size"]
                    for sub in ("text_encoder", "text_encoder_2") if (path / sub).is_dir()]
            return {"cross_attention_dim": unet["cross_attention_dim"], "text_dims": text}
        if source.kind == "single_file":
            header, _ = read_header(path)
            cross = next((v["shape"][1] for k, v in header.items() if k.startswith(
                "model.diffusion_model.") and k.endswith("attn2.to_k.weight")), None)
            text = sorted({v["shape"][1] for k, v in header.items()
                           if k.endswith("token_embedding.weight")})
            return {"cross_attention_dim": cross, "text_dims": text}
    except (OSError, ValueError, KeyError, TypeError, IndexError, ParamError):
        return None
    return None


# ------------------------------------------------------------------ onto a pipeline
def pipeline_dims(pipe) -> dict:
    text = [enc.config.hidden_size for enc in (getattr(pipe, "text_encoder", None),
                                               getattr(pipe, "text_encoder_2", None)) if enc is not None]
    return {"cross_attention_dim": pipe.unet.config.cross_attention_dim, "text_dims": text}


@contextmanager
def applied(pipe, loras: list[tuple[LoraInfo, LoraTag]], model_name: str) -> Iterator[list[dict]]:
    """Load the LoRAs onto the pipeline's UNet and text encoder(s) with their weights for the
    duration of the block, then unload them (the modules are restored exactly). Yields one
    {"name", "hash", "te_weight", "unet_weight"} per LoRA that was applied."""
    active = [(info, tag) for info, tag in loras if tag.te_weight or tag.unet_weight]
    records = [{"name": tag.name, "hash": addnet_hash(info.path), "te_weight": tag.te_weight,
                "unet_weight": tag.unet_weight} for info, tag in loras]
    if not active:
        yield records
        return
    adapters, weights = [], []
    try:
        for i, (info, tag) in enumerate(active):
            check_fits(info, pipeline_dims(pipe), model_name)
            adapter = f"genstudio_{i}"
            try:
                with _quiet():
                    pipe.load_lora_weights(str(info.path), adapter_name=adapter)
            except Exception as error:  # diffusers/peft raise many kinds; the user needs one line
                raise ParamError("prompt", f"LoRA {info.name!r} could not be applied to "
                                 f"{model_name}: {str(error).splitlines()[0][:300]}") from error
            adapters.append(adapter)
            weight = {part: tag.unet_weight if part == "unet" else tag.te_weight
                      for part in info.parts if getattr(pipe, part, None) is not None}
            weights.append(weight)
        pipe.set_adapters(adapters, adapter_weights=weights)
        yield records
    finally:
        if adapters or _has_lora(pipe):
            pipe.unload_lora_weights()


@contextmanager
def _quiet():
    """transformers prints a "load report" listing the other adapters' keys as missing when a
    second adapter is loaded; that is expected here, so only errors are shown."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    levels = transformers_logging.get_verbosity(), diffusers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    diffusers_logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(levels[0])
        diffusers_logging.set_verbosity(levels[1])


def _has_lora(pipe) -> bool:
    return any(getattr(getattr(pipe, part, None), "peft_config", None)
               for part in ("unet", "text_encoder", "text_encoder_2"))
