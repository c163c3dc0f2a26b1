"""A VAE other than the model's own, per generation (A1111's `sd_vae` / "SD VAE" setting).

Files live in the VAE folders (A1111's `models/VAE`, subfolders allowed) and are named by their
file name with extension, as A1111 lists them: a single `.safetensors` in the original (LDM)
layout such as `vae-ft-mse-840000-ema-pruned.safetensors` or `sdxl_vae.safetensors`, in the
diffusers layout, or a diffusers `AutoencoderKL` folder (config.json + weights).

A VAE must have the architecture of the model's own one (same latent channels and blocks): the
weights go into a copy of the model's VAE built from its config, and a file that does not fit
is refused with its name. Hash and name are A1111's infotext "VAE hash" (sha256, 10 hex
digits) and "VAE".
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from engines.base import ParamError, file_sha256, files_below

AUTOMATIC = ("Automatic", "None", "")  # A1111 values meaning "the model's own VAE"


def find_vaes(folders: Iterable[str | Path]) -> dict[str, Path]:
    """{file name: path} for .safetensors files and diffusers VAE folders."""
    found: dict[str, Path] = {}
    for _, path in files_below(folders):
        in_folder_vae = (path.parent / "config.json").is_file()  # listed as its folder
        if path.is_file() and path.suffix.lower() == ".safetensors" and not in_folder_vae:
            found.setdefault(path.name, path)
        elif path.is_dir() and (path / "config.json").is_file():
            found.setdefault(path.name, path)
    return found


def resolve_vae(value: str, folders: Iterable[str | Path]) -> Path | None:
    """None for the model's own VAE; else the path, or ParamError("vae") naming the choices."""
    if value is None or value in AUTOMATIC:
        return None
    vaes = find_vaes(folders)
    path = vaes.get(value) or next((p for name, p in vaes.items() if Path(name).stem == value), None)
    if path is None:
        known = ", ".join(sorted(vaes)) or "none (put VAE .safetensors files in models/VAE)"
        raise ParamError("vae", f"unknown `vae` {value!r}; known: Automatic, {known}")
    return path


def vae_hash(path: Path) -> str:
    """A1111's "VAE hash": sha256 of the file (a folder: its weights file), 10 hex digits."""
    if path.is_dir():
        path = next(iter(sorted(path.glob("*.safetensors"))), path / "missing")
    return file_sha256(path)[:10]


def load_vae(path: Path, like):
    """An AutoencoderKL with the weights at `path` and the architecture of `like` (the model's
    own VAE), on its device and dtype; ParamError("vae") if the weights do not fit."""
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
    from safetensors.torch import load_file

    try:
        if path.is_dir():
            weights = sorted(path.glob("*.safetensors"))
            if not weights:
                raise ParamError("vae", f"VAE folder {path.name} has no .safetensors weights")
            state = load_file(str(weights[0]))
        else:
            state = load_file(str(path))
    except ParamError:
        raise
    except Exception as error:
        raise ParamError("vae", f"VAE {path.name} is not a readable .safetensors file: "
                         f"{str(error).splitlines()[0][:200]}") from None
    state = {k.removeprefix("first_stage_model.").removeprefix("vae."): v for k, v in state.items()}
    if any(k.startswith("encoder.down.") for k in state):  # the original (LDM) layout
        state = convert_ldm_vae_checkpoint(state, dict(like.config))
    vae = AutoencoderKL.from_config(like.config)
    try:
        missing, unexpected = vae.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shape mismatches
        raise ParamError("vae", f"VAE {path.name} does not fit this model's VAE: "
                         f"{str(error).splitlines()[-1].strip()[:200]}") from None
    if missing or unexpected:
        sample = (missing or unexpected)[:2]
        raise ParamError("vae", f"VAE {path.name} does not fit this model's VAE "
                         f"({len(missing)} missing and {len(unexpected)} unexpected weights, "
                         f"e.g. {', '.join(sample)})")
    return vae.to(like.device, like.dtype).eval()
