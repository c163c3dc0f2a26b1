"""What every engine shares: the protocol, progress and cancel plumbing, errors, device choice,
and the manager that loads engines on first use and keeps memory under a budget.

torch is imported inside functions only, so that importing this module (the UI and the queue do)
stays cheap and the studio serves its page before any model library is loaded.
"""
from __future__ import annotations

import hashlib
import importlib
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterator, Protocol, runtime_checkable
from contextlib import contextmanager
from pathlib import Path


def models_cache_dir() -> Path:
    """Where engines keep files they assemble or derive (no downloads): GENSTUDIO_MODELS_CACHE,
    else ~/.cache/genstudio/models."""
    root = os.environ.get("GENSTUDIO_MODELS_CACHE") or Path.home() / ".cache" / "genstudio" / "models"
    return Path(root)


class EngineError(RuntimeError):
    """A generation failed for a reason the user should read (bad checkpoint, out of memory...)."""


class Cancelled(Exception):
    """Raised inside generate() when the caller's CancelToken was set; nothing is saved."""


class ParamError(ValueError):
    """A parameter the caller sent is wrong. `field` names it (in the engine's spelling), so an
    API maps it to its own error shape without reading the message."""

    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Progress:
    step: int
    total: int
    message: str = ""
    preview: Any = None  # a PIL image every few steps, where the engine can make one
    text: str | None = None  # text engines: the whole text generated so far (not a delta)

    @property
    def fraction(self) -> float:
        return self.step / self.total if self.total else 0.0


ProgressCallback = Callable[[Progress], None]


class CancelToken:
    """A plain flag, checked by engines between steps (diffusers' way: no thread killing)."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled()


def no_progress(_: Progress) -> None:
    pass


@runtime_checkable
class Engine(Protocol):
    """One model family. Constructed cheaply; weights are read in load(), never at import."""

    kind: ClassVar[str]  # "llm", "diffusion", "style"
    model_id: str

    @property
    def loaded(self) -> bool: ...

    def load(self) -> None: ...

    def unload(self) -> None: ...

    def memory_bytes(self) -> int:
        """Approximate bytes held while loaded (weights), for the manager's budget."""
        ...

    def generate(self, params: Any, on_progress: ProgressCallback | None = None,
                 cancel: CancelToken | None = None) -> Any: ...


# ---------------------------------------------------------------- validation helpers
def check_range(name: str, value: float, low: float, high: float) -> None:
    """Raise ValueError naming the parameter and the bad value (diffusers' check_inputs style)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ParamError(name, f"`{name}` must be a number, got {value!r}")
    if not (low <= value <= high):
        raise ParamError(name, f"`{name}` must be between {low} and {high}, got {value!r}")


def check_int(name: str, value: int, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ParamError(name, f"`{name}` must be a whole number, got {value!r}")
    check_range(name, value, low, high)


def check_image(name: str, value: Any, max_pixels: int, min_side: int = 8) -> None:
    """A PIL image of at least `min_side` px a side and at most `max_pixels` pixels."""
    from PIL import Image  # lazily: params are built in processes that never open an image

    if not isinstance(value, Image.Image):
        raise ParamError(name, f"`{name}` must be an image, got {type(value).__name__}")
    if value.width < min_side or value.height < min_side:
        raise ParamError(name, f"`{name}` is {value.width}x{value.height}; at least "
                               f"{min_side}x{min_side} is needed")
    if value.width * value.height > max_pixels:
        raise ParamError(name, f"`{name}` is {value.width}x{value.height}, over the pixel budget "
                               f"of {max_pixels} pixels")


# ---------------------------------------------------------------- model files
_sha256_cache: dict[tuple[str, int, float, int], str] = {}


def safetensors_header(path: Path) -> tuple[dict[str, dict], dict[str, str]]:
    """({key: {"shape", "dtype", "data_offsets"}}, metadata) of a .safetensors file, read from its
    header alone (no tensor loaded). ValueError when it is not one, or is cut short: a header
    that promises more bytes than the file holds."""
    import json

    with open(path, "rb") as handle:
        size = int.from_bytes(handle.read(8), "little")
        if not 2 <= size <= 100_000_000 or size + 8 > path.stat().st_size:
            raise ValueError("bad header length")
        try:
            header = json.loads(handle.read(size))
        except UnicodeDecodeError as error:
            raise ValueError(str(error)) from None
    if not isinstance(header, dict):
        raise ValueError("not a tensor table")
    metadata = header.pop("__metadata__", None) or {}
    if not all(isinstance(v, dict) and "shape" in v for v in header.values()):
        raise ValueError("not a tensor table")
    end = max((v.get("data_offsets", [0, 0])[1] for v in header.values()), default=0)
    if 8 + size + end > path.stat().st_size:
        raise ValueError(f"truncated: {path.stat().st_size} bytes, {8 + size + end} expected")
    return header, metadata


def file_sha256(path: Path, skip: int = 0) -> str:
    """Hex sha256 of a file from byte `skip` on, cached while its size and time are unchanged
    (A1111's model, VAE and embedding hashes are prefixes of it)."""
    stat = Path(path).stat()
    key = (str(path), stat.st_size, stat.st_mtime, skip)
    if key not in _sha256_cache:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            handle.seek(skip)
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
        _sha256_cache[key] = digest.hexdigest()
    return _sha256_cache[key]


def files_below(folders) -> Iterator[tuple[Path, Path]]:
    """(folder, path) for everything below each existing folder, in order, sorted."""
    for folder in folders:
        folder = Path(folder)
        if folder.is_dir():
            for path in sorted(folder.rglob("*")):
                yield folder, path


# ---------------------------------------------------------------- device choice
def choose_device(preference: str = "auto") -> str:
    """'auto' picks CUDA, then Apple MPS, then CPU. An explicit choice that is absent is an error."""
    import torch

    if preference not in ("auto", "cpu", "cuda", "mps"):
        raise ValueError(f"`device` must be auto, cpu, cuda or mps, got {preference!r}")
    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if preference == "cuda" and not cuda:
        raise EngineError("--device cuda was asked for, but torch sees no CUDA GPU")
    if preference == "mps" and not mps:
        raise EngineError("--device mps was asked for, but this torch has no Apple MPS support")
    if preference != "auto":
        return preference
    return "cuda" if cuda else "mps" if mps else "cpu"


def choose_dtype(device: str, half_precision: bool = False):
    """float32 on CPU (half is slower there and loses accuracy); fp16 on GPUs when asked for."""
    import torch

    if device == "cpu" or not half_precision:
        return torch.float32
    return torch.float16


# ---------------------------------------------------------------- manager
@dataclass(frozen=True)
class EngineSpec:
    kind: str
    factory: str  # "module:Class", imported on first use so start-up stays fast
    default_model: str


class EngineManager:
    """Loads engines on first use; unloads the least recently used ones when the memory budget
    would be exceeded. One lock per manager (= per device): two generations never share a device
    at once, whether they come from the UI, the queue or the HTTP APIs."""

    def __init__(self, device: str = "auto", memory_budget_bytes: int = 8 << 30) -> None:
        self.device_preference = device
        self.memory_budget_bytes = memory_budget_bytes
        self._specs: dict[str, EngineSpec] = {}
        self._engines: OrderedDict[tuple[str, str], Engine] = OrderedDict()
        self._lock = threading.RLock()  # guards the table and serialises device use
        self._device: str | None = None

    # --- registry
    def register(self, spec: EngineSpec) -> None:
        self._specs[spec.kind] = spec

    def kinds(self) -> list[str]:
        return list(self._specs)

    def spec(self, kind: str) -> EngineSpec:
        if kind not in self._specs:
            raise ValueError(f"unknown engine {kind!r}; known: {', '.join(self._specs) or 'none'}")
        return self._specs[kind]

    def engine_class(self, kind: str) -> type:
        """The engine class (its module imported, nothing loaded): gives access to its params
        dataclasses for validation before any weights are read."""
        module_name, class_name = self.spec(kind).factory.split(":")
        return getattr(importlib.import_module(module_name), class_name)

    @property
    def device(self) -> str:
        if self._device is None:
            self._device = choose_device(self.device_preference)
        return self._device

    # --- use
    def get(self, kind: str, model_id: str | None = None) -> Engine:
        """The engine for (kind, model), loaded, marked most recently used."""
        model_id = model_id or self.spec(kind).default_model
        key = (kind, model_id)
        with self._lock:
            engine = self._engines.get(key)
            if engine is None:
                engine = self.engine_class(kind)(model_id=model_id, device=self.device)
                self._engines[key] = engine
            self._engines.move_to_end(key)
            if not engine.loaded:
                started = time.perf_counter()
                engine.load()
                engine.load_seconds = time.perf_counter() - started  # shown in the UI
                self._enforce_budget(keep=key)
            return engine

    @contextmanager
    def use(self, kind: str, model_id: str | None = None) -> Iterator[Engine]:
        """Hold the device for one generation: `with manager.use("diffusion") as engine: ...`"""
        with self._lock:
            yield self.get(kind, model_id)

    def loaded(self) -> list[tuple[str, str, int]]:
        with self._lock:
            return [(k, m, e.memory_bytes()) for (k, m), e in self._engines.items() if e.loaded]

    def unload(self, kind: str | None = None) -> None:
        with self._lock:
            for (k, _), engine in self._engines.items():
                if kind in (None, k) and engine.loaded:
                    engine.unload()

    def _enforce_budget(self, keep: tuple[str, str]) -> None:
        # Oldest first; never the engine that was just loaded, even if it alone is over budget.
        total = sum(e.memory_bytes() for e in self._engines.values() if e.loaded)
        for key, engine in list(self._engines.items()):
            if total <= self.memory_budget_bytes:
                break
            if key != keep and engine.loaded:
                total -= engine.memory_bytes()
                engine.unload()
