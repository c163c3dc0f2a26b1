"""Every model the studio can use, by kind, for the Models tab (and any listing that wants it):
checkpoints, LoRA, embeddings, VAE, ControlNet, upscalers, language models, styles. Each with its family
(headers only), size, format, SHA-256 and A1111's short hash, source, and where it lives.

Hashes are lazy: a file's SHA-256 is computed once per (path, size, mtime) and kept in
`<data>/model-hashes.json`; listing a large file that was never hashed shows no hash until
`hash_all()` (the tab's "Compute hashes") has run, so rendering never reads gigabytes.

Imports and deletions act on the A1111-named folders under <data>/models (A1111_FOLDERS).
"""
from __future__ import annotations

import hashlib
import json
import shutil
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from engines.base import ParamError

if TYPE_CHECKING:
    from studio.context import StudioContext

KINDS = ("checkpoint", "lora", "embedding", "vae", "controlnet", "upscaler", "llm", "style")
A1111_FOLDERS = {"checkpoint": "Stable-diffusion", "lora": "Lora", "embedding": "embeddings",
                 "vae": "VAE", "controlnet": "ControlNet", "upscaler": "ESRGAN", "llm": ""}
# ControlNet models are listed (and imported) for their owners; no task of this studio uses one.
_CONTROLNET_FAMILIES = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL"}
HASH_EAGER_BYTES = 64 << 20  # smaller files are hashed while listing; bigger ones on request
HASHES_FILE = "model-hashes.json"
_lock = threading.Lock()


@dataclass(frozen=True)
class ModelEntry:
    kind: str  # one of KINDS
    name: str
    model_id: str  # what a task takes as `model` (or the name in a prompt tag)
    path: str | None  # where it lives; None for built-in resizers
    format: str  # "diffusers folder", "safetensors", "gguf", "transformers folder", ...
    size_bytes: int
    family: str = ""  # "Stable Diffusion 1.x", "Kandinsky 2.2 (prior + decoder)", ...
    source: str = ""  # "embedded (licence ...)", "models folder", "HF cache", "user"
    sha256: str | None = None
    short_hash: str | None = None  # A1111's: the first 10 hex digits of the sha256
    deletable: bool = False  # inside the models folders (never the embedded models)

    def row(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------ hashes
def _hash_store(ctx) -> Path:
    return Path(ctx.config.data_dir) / HASHES_FILE


def _weights_file(path: Path) -> Path | None:
    """The file that stands for a model in A1111's hash: itself, or a folder's denoiser."""
    if path.is_file():
        return path
    for sub in ("unet", "transformer", "prior"):
        found = sorted((path / sub).glob("*.safetensors"))
        if found:
            return found[0]
    found = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.gguf"))
    return found[0] if found else None


def file_sha256(ctx, path: Path, compute: bool) -> str | None:
    """The cached SHA-256 of `path`; computed now when `compute` or the file is small."""
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{int(stat.st_mtime)}"
    with _lock:
        try:
            cache = json.loads(_hash_store(ctx).read_text())
        except (OSError, ValueError):
            cache = {}
    if key in cache:
        return cache[key]
    if not compute and stat.st_size > HASH_EAGER_BYTES:
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    with _lock:
        try:
            cache = json.loads(_hash_store(ctx).read_text())
        except (OSError, ValueError):
            cache = {}
        cache[key] = digest.hexdigest()
        _hash_store(ctx).write_text(json.dumps(cache, indent=1))
    return cache[key]


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _entry(ctx, kind: str, name: str, model_id: str, path: Path | None, fmt: str, family: str,
           source: str, compute: bool) -> ModelEntry:
    sha = None
    if path is not None and path.exists():
        weights = _weights_file(path)
        sha = file_sha256(ctx, weights, compute) if weights else None
    models = Path(ctx.config.models_dir).resolve()
    deletable = path is not None and path.exists() and models in path.resolve().parents
    return ModelEntry(kind, name, model_id, str(path) if path else None, fmt,
                      _size(path) if path is not None and path.exists() else 0, family, source,
                      sha, sha[:10] if sha else None, deletable)


# ------------------------------------------------------------------ listing
def _checkpoints(ctx, compute: bool) -> list[ModelEntry]:
    from engines.diffusion.families import family_info
    from engines.diffusion.loading import ALIASES
    from studio.models import diffusion_roots

    out = []
    for alias, folder in ALIASES.items():
        if (folder / "model_index.json").is_file():
            out.append(_entry(ctx, "checkpoint", alias, alias, folder, "diffusers folder",
                              family_info(alias)["label"], "embedded (trained by this project, "
                              "assets/sd-tiny)", compute))
    seen = set()
    for root in diffusion_roots(ctx):
        if not root.is_dir():
            continue
        for path in sorted(root.iterdir()):
            if str(path.resolve()) in seen or path.name.startswith("."):  # .partial copies
                continue
            if path.is_dir() and (path / "model_index.json").is_file():
                fmt = "diffusers folder"
            elif path.is_file() and path.suffix.lower() == ".safetensors":
                fmt = "safetensors"
            else:
                continue
            seen.add(str(path.resolve()))
            out.append(_entry(ctx, "checkpoint", path.name, str(path), path, fmt,
                              family_info(str(path))["label"], "models folder", compute))
    return out


def _extra_networks(ctx, compute: bool) -> list[ModelEntry]:
    from engines.diffusion import lora
    from engines.diffusion.textual_inversion import find_embeddings
    from engines.diffusion.vae import find_vaes

    models = Path(ctx.config.models_dir)
    out = []
    for name, path in sorted(lora.find_files([models / "Lora"]).items()):
        family = ""
        try:
            family = lora.describe(name, path).family or ""
        except (ValueError, OSError, AttributeError):
            family = "unreadable header"
        out.append(_entry(ctx, "lora", name, f"<lora:{name}:1>", path, path.suffix[1:], family,
                          "models folder", compute))
    for name, path in sorted(find_embeddings([models / "embeddings"]).items()):
        out.append(_entry(ctx, "embedding", name, name, path, path.suffix[1:], "",
                          "models folder", compute))
    for name, path in sorted(find_vaes([models / "VAE"]).items()):
        out.append(_entry(ctx, "vae", name, name, path, path.suffix[1:] or "folder", "",
                          "models folder", compute))
    folder = models / "ControlNet"
    for path in sorted(folder.iterdir()) if folder.is_dir() else ():
        if path.suffix.lower() == ".safetensors" or (path / "config.json").is_file():
            out.append(_entry(ctx, "controlnet", path.stem, str(path), path,
                              "diffusers folder" if path.is_dir() else "safetensors",
                              _controlnet_family(path), "models folder", compute))
    return out


def _controlnet_family(path: Path) -> str:
    try:
        config = json.loads((path / "config.json").read_text()) if path.is_dir() else {}
    except (OSError, ValueError):
        return ""
    return _CONTROLNET_FAMILIES.get(config.get("cross_attention_dim"), "")


def _others(ctx, compute: bool) -> list[ModelEntry]:
    from engines.llm.catalog import list_models
    from engines.style.engine import list_styles
    from engines.upscale.catalog import list_upscalers
    from studio.models import llm_roots

    models = Path(ctx.config.models_dir)
    out = []
    for up in list_upscalers((models, *(Path(p) for p in ctx.config.extra_models_dirs))):
        out.append(_entry(ctx, "upscaler", up.name, up.model_id, up.path,
                          up.kind if up.path is None else (up.path.suffix[1:] or "folder"),
                          f"{up.scale}x" if up.scale else "", up.note or up.kind, compute))
    for source in list_models(llm_roots(ctx)):
        out.append(_entry(ctx, "llm", source.label, source.model_id, source.path, source.format,
                          "", "embedded" if "models folder" not in source.label else
                          "models folder", compute))
    for style in list_styles(ctx.config.styles_dir):
        out.append(_entry(ctx, "style", style.name, style.id, style.folder or style.weights,
                          style.kind, "", style.source, compute))
    return out


def inventory(ctx: "StudioContext", kind: str | None = None, compute: bool = False) -> list[ModelEntry]:
    """Every model by kind (checkpoint, lora, ...); `compute` hashes large files too."""
    if kind is not None and kind not in KINDS:
        raise ParamError("kind", f"`kind` must be one of {', '.join(KINDS)}, got {kind!r}")
    entries: list[ModelEntry] = []
    for lister in (_checkpoints, _extra_networks, _others):
        entries.extend(lister(ctx, compute))
    return [e for e in entries if kind is None or e.kind == kind]


# ------------------------------------------------------------------ import and delete
def detect_kind(path: Path) -> str:
    """What a file or folder holds, from its name and header: ParamError if nothing usable."""
    if path.is_dir():
        if (path / "model_index.json").is_file():
            return "checkpoint"
        config = path / "config.json"
        if config.is_file():
            if "ControlNetModel" in config.read_text(errors="replace")[:4096]:
                return "controlnet"
            return "llm" if any(path.glob("*.safetensors")) else "vae"
        raise ParamError("path", f"{path.name} is a folder but not a model (no model_index.json "
                                 f"or config.json)")
    suffix = path.suffix.lower()
    if suffix == ".gguf":
        return "llm"
    if suffix != ".safetensors":
        raise ParamError("path", f"{path.name}: only .safetensors, .gguf and diffusers folders "
                                 f"are imported (pickled .ckpt/.pt/.bin files can run code)")
    from engines.diffusion.lora import read_header

    try:
        shapes, _ = read_header(path)
    except Exception as error:  # a corrupt header: say so by name
        raise ParamError("path", f"{path.name} is not a readable .safetensors file ({error})") from None
    keys = list(shapes)
    if any(k.startswith("model.diffusion_model.") for k in keys):
        return "checkpoint"
    if any("lora" in k for k in keys):
        return "lora"
    if any(k.startswith(("encoder.", "decoder.", "first_stage_model.")) for k in keys):
        return "vae"
    if len(keys) <= 4:  # textual-inversion files hold one or two vector tables
        return "embedding"
    raise ParamError("path", f"{path.name}: cannot tell which kind of model this is; pick the "
                             f"kind")


def import_target(ctx, source: Path, kind: str) -> Path:
    if kind not in A1111_FOLDERS:
        raise ParamError("kind", f"`kind` must be one of {', '.join(A1111_FOLDERS)}, got {kind!r}")
    target = Path(ctx.config.models_dir) / A1111_FOLDERS[kind] / source.name
    if target.exists():
        raise ParamError("path", f"{target.name} is already in the models folder "
                                 f"({A1111_FOLDERS[kind] or 'models'}/); delete it first")
    return target


def copy_model(source: Path, target: Path, on_bytes=None) -> None:
    """Copy into a temporary name, then rename: a half-copied model is never listed."""
    partial = target.with_name(f".{target.name}.partial")
    if partial.exists():
        shutil.rmtree(partial) if partial.is_dir() else partial.unlink()
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, partial, copy_function=shutil.copy2)
    else:
        shutil.copy2(source, partial)
    partial.rename(target)


def delete_model(ctx, path: str) -> str:
    """Delete a model of the models folders (never the embedded ones); returns its name."""
    target = Path(path)
    models = Path(ctx.config.models_dir).resolve()
    if not target.exists() or models not in target.resolve().parents:
        raise ParamError("path", f"{target.name} is not a model of the models folder")
    if target.is_dir():
        shutil.rmtree(target)
    else:
        target.unlink()
    return target.name
