"""Checkpoints and options for the A1111-compatible API.

Checkpoints: the embedded model (when present) and every diffusers folder (model_index.json) or
`.safetensors` file in the models folder (`<data>/models`, also `<data>/models/Stable-diffusion`,
A1111's own layout) and the extra models folders. Titles are A1111's: `name [hash]`, where the
hash (sha256, first 10 hex digits, as A1111's "Model hash") is computed for files up to
HASH_EAGER_BYTES and otherwise once a generation has reported it.

Options: A1111's `/sdapi/v1/options` dictionary. `sd_model_checkpoint` selects the checkpoint
every later request uses (loaded on first use, not at once); other keys are stored and echoed.
Kept in `<data>/a1111-options.json` so the choice survives a restart.
"""
from __future__ import annotations

import json
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engines.base import ParamError, check_int
if TYPE_CHECKING:
    from studio.context import StudioContext

HASH_EAGER_BYTES = 256 << 20
OPTIONS_FILE = "a1111-options.json"
DEFAULT_OPTIONS: dict[str, Any] = {
    "samples_format": "png",
    "CLIP_stop_at_last_layers": 1,
    "sdxl_clip_l_skip": False,  # "Clip skip SDXL": SDXL's CLIP-L follows Clip skip
    "use_old_scheduling": False,  # "Use old prompt editing timelines"
    "sd_vae": "Automatic",
    "live_previews_enable": True,
    "show_progress_every_n_steps": 5,
    "eta_noise_seed_delta": 0,
}


@dataclass(frozen=True)
class Checkpoint:
    model_id: str  # what the diffusion task takes as `model`
    model_name: str
    filename: str
    file_name: str  # name with extension: A1111's title stem
    hash: str | None

    @property
    def title(self) -> str:
        return f"{self.file_name} [{self.hash}]" if self.hash else self.file_name

    def matches(self, name: str) -> bool:
        name = name.strip()
        stem = name.split(" [")[0].strip()
        return name in (self.title, self.model_id, self.filename, self.hash) or stem in (
            self.file_name, self.model_name)


class Checkpoints:
    def __init__(self, ctx: "StudioContext") -> None:
        self.ctx = ctx
        self._hashes: dict[tuple[str, int, float], str | None] = {}
        self._known: dict[str, str] = {}  # model id -> hash reported by a generation

    def default_id(self) -> str:
        from engines.diffusion.loading import DEFAULT_MODEL

        try:
            return self.ctx.engines.spec("diffusion").default_model
        except ValueError:
            return DEFAULT_MODEL

    def roots(self) -> list[Path]:
        models = Path(self.ctx.config.models_dir)
        return [models, models / "Stable-diffusion",
                *(Path(p) for p in self.ctx.config.extra_models_dirs)]

    def remember_hash(self, model_id: str, value: str | None) -> None:
        if value:
            self._known[model_id] = value

    def _hash(self, model_id: str, weights: Path | None) -> str | None:
        if model_id in self._known:
            return self._known[model_id]
        if weights is None or not weights.is_file():
            return None
        stat = weights.stat()
        key = (str(weights), stat.st_size, stat.st_mtime)
        if key not in self._hashes:
            if stat.st_size > HASH_EAGER_BYTES:
                return None
            import hashlib

            digest = hashlib.sha256()
            with open(weights, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 22), b""):
                    digest.update(chunk)
            self._hashes[key] = digest.hexdigest()[:10]
        return self._hashes[key]

    @staticmethod
    def _folder_weights(folder: Path) -> Path | None:
        found = (sorted((folder / "unet").glob("*.safetensors"))  # or a DiT (PixArt, SD3)
                 or sorted((folder / "transformer").glob("*.safetensors")))
        return found[0] if found else None

    def list(self) -> list[Checkpoint]:
        from engines.diffusion.loading import ALIASES

        found: list[Checkpoint] = []
        default = self.default_id()
        embedded = ALIASES.get(default)
        if embedded is not None and (embedded / "model_index.json").exists():
            found.append(Checkpoint(default, default, str(embedded), default,
                                    self._hash(default, self._folder_weights(embedded))))
        seen = set()
        for root in self.roots():
            if not root.is_dir():
                continue
            for path in sorted(root.iterdir()):
                resolved = str(path.resolve())
                if resolved in seen:
                    continue
                if path.is_dir() and (path / "model_index.json").is_file():
                    seen.add(resolved)
                    found.append(Checkpoint(str(path), path.name, str(path), path.name,
                                            self._hash(str(path), self._folder_weights(path))))
                elif path.is_file() and path.suffix.lower() == ".safetensors":
                    seen.add(resolved)
                    found.append(Checkpoint(str(path), path.stem, str(path), path.name,
                                            self._hash(str(path), path)))
        return found

    def find(self, name: Any) -> Checkpoint | None:
        if not isinstance(name, str) or not name.strip():
            return None
        for checkpoint in self.list():
            if checkpoint.matches(name):
                return checkpoint
        return None

    def describe(self, model_id: str) -> Checkpoint:
        """The checkpoint for a model id, listed or not (e.g. the default before it exists)."""
        for checkpoint in self.list():
            if checkpoint.model_id == model_id:
                return checkpoint
        name = Path(model_id).name or model_id
        return Checkpoint(model_id, Path(name).stem, model_id, name, self._known.get(model_id))


class Options:
    """The options dictionary, persisted as JSON in the data folder."""

    def __init__(self, ctx: "StudioContext", checkpoints: Checkpoints) -> None:
        self.ctx = ctx
        self.checkpoints = checkpoints
        self.path = Path(ctx.config.data_dir) / OPTIONS_FILE
        self._lock = threading.Lock()
        self._values: dict[str, Any] = {}
        try:
            loaded = json.loads(self.path.read_text())
            if isinstance(loaded, dict):
                self._values = loaded
        except (OSError, ValueError):
            pass

    @property
    def model_id(self) -> str:
        """The selected checkpoint's model id (the default when none is selected or it is gone)."""
        chosen = self._values.get("sd_model_checkpoint")
        checkpoint = self.checkpoints.find(chosen) if chosen else None
        return checkpoint.model_id if checkpoint else self.checkpoints.default_id()

    def get(self) -> dict[str, Any]:
        with self._lock:
            values = {**DEFAULT_OPTIONS, **self._values}
        checkpoint = self.checkpoints.describe(self.model_id)
        values["sd_model_checkpoint"] = checkpoint.title
        values["sd_checkpoint_hash"] = checkpoint.hash
        return values

    def set(self, changes: dict[str, Any]) -> None:
        """Raises ValueError("`sd_model_checkpoint` ...") for an unknown checkpoint."""
        changes = dict(changes)
        if "sd_model_checkpoint" in changes:
            checkpoint = self.resolve(changes["sd_model_checkpoint"])
            changes["sd_model_checkpoint"] = checkpoint.title
        changes.pop("sd_checkpoint_hash", None)
        if "CLIP_stop_at_last_layers" in changes:  # A1111's "Clip skip" slider: 1..12
            check_int("CLIP_stop_at_last_layers", changes["CLIP_stop_at_last_layers"], 1, 12)
        for name in ("sdxl_clip_l_skip", "use_old_scheduling"):  # A1111's checkboxes
            if name in changes and not isinstance(changes[name], bool):
                raise ParamError(name, f"`{name}` must be true or false, got {changes[name]!r}")
        if changes.get("sd_vae") is not None:  # a listed VAE only, never a path to anywhere
            from engines.diffusion.vae import resolve_vae

            try:
                resolve_vae(changes["sd_vae"], [Path(self.ctx.config.models_dir) / "VAE"])
            except ValueError as error:
                raise ParamError("sd_vae", str(error).replace("`vae`", "`sd_vae`")) from None
        with self._lock:
            self._values.update(changes)
            try:
                write_atomically(self.path, json.dumps(self._values, indent=1, default=str))
            except OSError:
                pass  # a read-only data folder: the choice lasts until restart

    def resolve(self, name: Any) -> Checkpoint:
        checkpoint = self.checkpoints.find(name)
        if checkpoint is None:
            titles = ", ".join(c.title for c in self.checkpoints.list()) or "none"
            raise ParamError("sd_model_checkpoint", f"`sd_model_checkpoint`: no checkpoint {name!r}; known: {titles}")
        return checkpoint


def write_atomically(path: Path, text: str) -> None:
    """A crash mid-write leaves the old file or the new one, never half of each: write a temp
    file beside it, fsync, then rename over it (atomic on one filesystem)."""
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
