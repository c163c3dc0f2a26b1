"""Which models the studio offers, and the check that a request names one of them.

A client (a web page, an API script, a queue file) may name a model, but only one the studio
lists: the embedded models, what lies in the models folders (<data>/models, A1111's sub-folders,
--models-dir extras) and hub ids already in the Hugging Face cache. Anything else — another path
on the disk, `../../etc/passwd`, a hub id that would be downloaded inside a job — is refused when
the job is queued, with the same sentence whether or not such a file exists, so the check reveals
nothing about the disk.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from engines.base import ParamError

if TYPE_CHECKING:
    from studio.context import StudioContext

DIFFUSION_SUBFOLDERS = ("Stable-diffusion",)  # A1111's folder for checkpoints, beside models/


def diffusion_roots(ctx: "StudioContext") -> list[Path]:
    """Folders whose entries (diffusers folders, .safetensors files) are offered checkpoints."""
    models = Path(ctx.config.models_dir)
    return [models, *(models / sub for sub in DIFFUSION_SUBFOLDERS),
            *(Path(p) for p in ctx.config.extra_models_dirs)]


def llm_roots(ctx: "StudioContext") -> tuple[Path, ...]:
    return (Path(ctx.config.models_dir), *(Path(p) for p in ctx.config.extra_models_dirs))


def check_diffusion_model(ctx: "StudioContext", model: object) -> None:
    """ParamError unless `model` is the embedded model, an entry of a models folder or a cached
    hub id."""
    from engines.diffusion.loading import ALIASES

    if not isinstance(model, str) or not model.strip():
        raise ParamError("model", f"`model` must be a model name, got {model!r}")
    if model in ALIASES:
        return
    path = Path(model).expanduser()
    if _inside(path, diffusion_roots(ctx)) and (
            (path / "model_index.json").is_file() or
            (path.suffix.lower() == ".safetensors" and path.is_file())):
        return
    if _is_hub_id(model) and _hub_cached(model, "model_index.json"):
        return
    raise _not_offered(model, "GET /sdapi/v1/sd-models")


def list_offered(ctx: "StudioContext", kind: str | None = None, compute: bool = False) -> list:
    """Every model the studio offers, by kind (checkpoint, lora, embedding, vae, upscaler, llm,
    style), with family, size, format and cached hashes: studio/model_inventory.py."""
    from studio.model_inventory import inventory

    return inventory(ctx, kind, compute)


def check_family(model: str, task: str, params: dict) -> None:
    """ParamError unless the model's family runs `task` and takes every field set in `params`
    (engines/diffusion/families.py, headers only); an unsupported family is refused in one
    sentence that names it."""
    from engines.base import EngineError
    from engines.diffusion.families import check_fields, detect_family

    try:
        family = detect_family(model)
    except EngineError as error:
        raise ParamError("model", str(error)) from None
    check_fields(family, task, params)


def check_llm_model(ctx: "StudioContext", model: object) -> None:
    """ParamError unless `model` is listed by the language-model catalogue (embedded, extras,
    the models folders, the Hugging Face cache)."""
    from engines.llm.catalog import list_models

    if not isinstance(model, str) or not model.strip():
        raise ParamError("model", f"`model` must be a model id, got {model!r}")
    offered = {source.model_id for source in list_models(llm_roots(ctx))}
    if model.strip() in offered:
        return
    path = Path(model).expanduser()  # a file of a models folder named another way (relative...)
    if _inside(path, list(llm_roots(ctx))) and str(path.resolve()) in {
            str(Path(m).resolve()) for m in offered if "/" in m or m.endswith(".gguf")}:
        return
    raise _not_offered(model, "GET /v1/models")


def _inside(path: Path, roots: list[Path]) -> bool:
    """Directly inside one of the roots, after resolving `..` and links."""
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError):
        return False
    return any(resolved.parent == root.resolve() for root in roots if root.is_dir())


def _is_hub_id(model: str) -> bool:
    owner, _, name = model.partition("/")
    return bool(owner and name) and "/" not in name and not model.startswith((".", "~")) \
        and all(part.replace("-", "").replace("_", "").replace(".", "").isalnum()
                for part in (owner, name))


def _hub_cached(repo_id: str, filename: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, filename), str)
    except Exception:  # a malformed id or an unreadable cache: not offered
        return False


def _not_offered(model: str, listing: str) -> ParamError:
    shown = model if len(model) <= 120 else model[:117] + "..."
    return ParamError("model", f"`model` {shown!r} is not one of this studio's models ({listing} "
                               f"lists them; put new ones in the models folder)")
