"""Single `.safetensors` Stable Diffusion checkpoints (the A1111 / ComfyUI layout), offline.

A single file holds weights only; diffusers' `from_single_file` reads everything else (configs,
scheduler, tokenizer) from the family's hub repository. The hub is out of reach here, so the
project ships those files for each family it supports in assets/sd-configs (built from public
sources by scripts/make_sd_configs.py) and hands diffusers a local folder assembled from them.

1. `checkpoint_family(path)`: which family the weights belong to, read from tensor shapes only
   (no tensor is loaded), using diffusers' own detection so both agree.
2. `config_folder(family)`: a diffusers-layout folder with the family's configs and tokenizer,
   written once to the model cache.
3. `sidecar_prediction_type(path)`: a `<checkpoint>.yaml` beside the file (A1111's convention)
   overrides the prediction type, e.g. for SD 2.x 512-px epsilon models.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from engines.base import EngineError, models_cache_dir

CONFIGS = Path(__file__).resolve().parents[2] / "assets" / "sd-configs"
SUPPORTED = {
    "v1": "Stable Diffusion 1.x",
    "v2": "Stable Diffusion 2.x (768, v-prediction)",
    "xl_base": "Stable Diffusion XL",
}
# What diffusers may detect that this engine does not run, with the reason users see.
UNSUPPORTED = {
    "inpainting": "an SD 1.x inpainting-only checkpoint (9-channel UNet)",
    "inpainting_v2": "an SD 2.x inpainting-only checkpoint (9-channel UNet)",
    "xl_inpaint": "an SDXL inpainting-only checkpoint (9-channel UNet)",
    "xl_refiner": "an SDXL refiner (it only refines images, it cannot start from noise)",
    "upscale": "an upscaler",
    "playground-v2-5": "Playground v2.5 (EDM scheduler)",
}


class _ShapeOnly:
    """Stands in for a tensor where diffusers' detection only reads `.shape`."""

    def __init__(self, shape):
        self.shape = tuple(shape)


def checkpoint_family(path: str | Path) -> str:
    """The family of a single-file checkpoint, or an EngineError saying why it cannot run."""
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            shapes = {key: _ShapeOnly(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except Exception as error:  # safetensors raises its own error types for corrupt headers
        raise EngineError(f"{Path(path).name} is not a readable .safetensors file: {error}") from error
    if not any(key.startswith("model.diffusion_model.") for key in shapes):
        raise EngineError(f"{Path(path).name} is not a Stable Diffusion checkpoint: it has no "
                          f"`model.diffusion_model.` (UNet) weights; LoRAs, VAEs and embeddings "
                          f"are separate files")
    try:
        family = infer_diffusers_model_type(shapes)
    except Exception:  # a detection branch that needs tensor values: not one of ours anyway
        family = "unknown"
    if family in SUPPORTED:
        return family
    what = UNSUPPORTED.get(family, f"a {family!r} model")
    raise EngineError(f"{Path(path).name} looks like {what}, which this engine does not run; "
                      f"supported single files: {', '.join(SUPPORTED.values())} "
                      f"(including Turbo and LCM fine-tunes of them)")


def native_side(model: str | Path) -> int | None:
    """The image side a checkpoint was trained at (512 SD 1.x, 768 SD 2.x, 1024 SDXL) for the
    tabs' defaults, or None if unknown. Reads only the safetensors JSON header or the folder's
    UNet config: no torch, so the UI may call it."""
    path = Path(model)
    try:
        if path.is_dir():
            unet = json.loads((path / "unet" / "config.json").read_text())
            vae = json.loads((path / "vae" / "config.json").read_text())
            return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
        if path.suffix.lower() == ".safetensors" and path.is_file():
            with open(path, "rb") as handle:
                size = int.from_bytes(handle.read(8), "little")
                if not 0 < size < 100_000_000:
                    return None
                header = json.loads(handle.read(size))
            if _SDXL_KEY in header:
                return 1024
            v2 = header.get(_SD2_KEY, {}).get("shape", [0])
            return 768 if v2[-1] == 1024 else 512
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return None


# Keys diffusers' detection uses for these families (single_file_utils.CHECKPOINT_KEY_NAMES).
_SDXL_KEY = "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias"
_SD2_KEY = "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight"


def sidecar_prediction_type(path: str | Path) -> str | None:
    """The prediction type an A1111-style sidecar `<checkpoint>.yaml` declares, or None when
    there is none. Weights cannot tell SD 2.x's 768-px v-prediction model from its 512-px
    epsilon base; A1111 users put the original inference yaml beside such files."""
    import yaml

    sidecar = Path(path).with_suffix(".yaml")
    if not sidecar.is_file():
        return None
    try:
        original = yaml.safe_load(sidecar.read_text(encoding="utf-8"))
        params = original["model"]["params"]
    except (OSError, UnicodeDecodeError, yaml.YAMLError, KeyError, TypeError) as error:
        raise EngineError(f"{sidecar.name} beside the checkpoint is not an LDM inference yaml "
                          f"(expected model.params): {error}") from error
    return "v_prediction" if params.get("parameterization") == "v" else "epsilon"


def _model_index(family: str, config: dict) -> dict:
    index = {
        "_class_name": config["pipeline"],
        "scheduler": ["diffusers", config["scheduler"]["_class_name"]],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "feature_extractor": [None, None],
    }
    for name in ("text_encoder", "text_encoder_2"):
        if name in config:
            index[name] = ["transformers", config[name]["architectures"][0]]
            index[name.replace("text_encoder", "tokenizer")] = ["transformers", "CLIPTokenizer"]
    if family == "xl_base":
        index.update(image_encoder=[None, None], force_zeros_for_empty_prompt=True)
    else:
        index.update(safety_checker=[None, None], requires_safety_checker=False)
    return index


def _write_tokenizer(folder: Path, pad_token: str) -> None:
    from transformers import CLIPTokenizer

    vocab = json.loads((CONFIGS / "clip-tokenizer" / "vocab.json").read_text(encoding="utf-8"))
    lines = (CONFIGS / "clip-tokenizer" / "merges.txt").read_text(encoding="utf-8").splitlines()
    merges = [tuple(line.split()) for line in lines[1:] if line]  # line 0: version header
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77,
                              bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                              unk_token="<|endoftext|>", pad_token=pad_token)
    tokenizer.save_pretrained(folder)


def _write_folder(folder: Path, family: str, config: dict) -> None:
    def dump(relative: str, data: dict) -> None:
        target = folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(data, indent=1) + "\n")

    dump("model_index.json", _model_index(family, config))
    dump("unet/config.json", {"_class_name": "UNet2DConditionModel", **config["unet"]})
    dump("vae/config.json", {"_class_name": "AutoencoderKL", **config["vae"]})
    dump("scheduler/scheduler_config.json", config["scheduler"])
    for name in ("text_encoder", "text_encoder_2"):
        if name in config:
            dump(f"{name}/config.json", {"model_type": "clip_text_model", **config[name]})
            tokenizer = name.replace("text_encoder", "tokenizer")
            _write_tokenizer(folder / tokenizer, config[tokenizer]["pad_token"])


def config_folder(family: str) -> Path:
    """A diffusers folder holding the family's configs and tokenizer (no weights), for
    `from_single_file(config=...)`. Written once per version of the shipped files."""
    if family not in SUPPORTED:
        raise ValueError(f"unknown `family` {family!r}; known: {', '.join(SUPPORTED)}")
    source = CONFIGS / f"{family}.json"
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:12]
    folder = models_cache_dir() / "sd-configs" / f"{family}-{digest}"
    if (folder / "model_index.json").exists():
        return folder
    # Build beside it and rename: a crash half-way leaves no folder that looks complete.
    partial = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    _write_folder(partial, family, json.loads(source.read_text()))
    try:
        partial.rename(folder)
    except OSError:  # another process finished first; its folder is the same
        import shutil

        shutil.rmtree(partial, ignore_errors=True)
    return folder
