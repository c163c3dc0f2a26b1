"""Model import task ("import_model", filed under engine "diffusion"): copy a model file or folder into the
A1111-named folder of its kind under <data>/models, as a job (a big checkpoint takes a while
and shows in the Queue tab); studio/model_inventory.py lists, hashes and deletes.

  path     a .safetensors or .gguf file, or a diffusers / transformers folder, on this machine
  kind     checkpoint, lora, embedding, vae, controlnet, upscaler, llm; default: read from
           the header or config
  source   a hub id or URL instead of a path: needs the studio online with downloads allowed
"""
from __future__ import annotations

from pathlib import Path

from engines.base import ParamError, Progress
from studio.tasks import TaskResult, TaskSpec, register


def prepare(ctx, params) -> tuple[Path, Path, str]:
    from studio.model_inventory import detect_kind, import_target

    if not isinstance(params, dict):
        raise ValueError(f"parameters must be an object, got {type(params).__name__}")
    unknown = sorted(set(params) - {"path", "kind", "source"})
    if unknown:
        raise ValueError(f"unknown parameter(s) for import_model: {', '.join(unknown)}")
    if params.get("source") is not None:
        if ctx.config.offline:
            raise ParamError("source", "the studio is offline (--offline or no hub reachable): "
                                       "hub ids and URLs cannot be downloaded; copy the files "
                                       "here and import them by path")
        raise ParamError("source", "downloading from a hub or URL is not available in this "
                                   "studio yet; download the files and import them by path")
    raw = params.get("path")
    if not isinstance(raw, str) or not raw.strip():
        raise ParamError("path", "`path` must be a file or folder on this machine")
    source = Path(raw.strip()).expanduser()
    if not source.exists():
        raise ParamError("path", f"no such file or folder: {source}")
    kind = params.get("kind") or detect_kind(source)
    return source, import_target(ctx, source, kind), kind


def _validate(ctx, params: dict) -> None:
    prepare(ctx, params)


def _run(ctx, params: dict, on_progress, cancel) -> TaskResult:
    from studio.model_inventory import copy_model, inventory

    source, target, kind = prepare(ctx, params)
    on_progress(Progress(0, 2, f"copying {source.name} into {target.parent.name}/"))
    cancel.raise_if_cancelled()
    copy_model(source, target)
    on_progress(Progress(1, 2, "hashing"))
    entry = next((e for e in inventory(ctx, kind, compute=True)
                  if e.path and Path(e.path) == target), None)
    on_progress(Progress(2, 2, "imported"))
    info = entry.row() if entry else {"path": str(target), "kind": kind}
    return TaskResult(text=f"Imported {target.name} as a {kind}", info=info)


register(TaskSpec("import_model", "diffusion", _validate, _run,
                  "Copy a model file or folder into the models folder of its kind"))
