"""Model import task ("import_model", filed under engine "diffusion"): copy a model file or
folder into the A1111-named folder of its kind under <data>/models, or download it, as a job (a
big checkpoint takes a while and shows in the Queue tab with its progress);
studio/model_inventory.py lists, hashes and deletes.

  path     a .safetensors or .gguf file, or a diffusers / transformers folder, on this machine
  source   instead of path: an http(s) URL of a .safetensors / .gguf file (resumable) or a hub
           id (a diffusers folder); needs the studio online and GENSTUDIO_ALLOW_DOWNLOADS=1
           (studio/model_download.py)
  kind     checkpoint, lora, embedding, vae, controlnet, upscaler, llm; default: read from
           the header or config
"""
from __future__ import annotations

from pathlib import Path

from engines.base import ParamError, Progress
from studio.tasks import TaskResult, TaskSpec, check_fields, register


def prepare(ctx, params) -> tuple[Path | str, Path | None, str | None]:
    """(source path or URL / hub id, target or None until downloaded, kind or None)."""
    from studio.model_download import check_allowed
    from studio.model_inventory import A1111_FOLDERS, detect_kind, import_target

    check_fields("import_model", params, {"path", "kind", "source"})
    kind = params.get("kind")
    if kind is not None and kind not in A1111_FOLDERS:
        raise ParamError("kind", f"`kind` must be one of {', '.join(A1111_FOLDERS)}, got {kind!r}")
    if params.get("source") is not None:
        check_allowed(ctx, params["source"])
        return params["source"].strip(), None, kind
    raw = params.get("path")
    if not isinstance(raw, str) or not raw.strip():
        raise ParamError("path", "`path` must be a file or folder on this machine")
    source = Path(raw.strip()).expanduser()
    if not source.exists():
        raise ParamError("path", f"no such file or folder: {source}")
    kind = kind or detect_kind(source)
    return source, import_target(ctx, source, kind), kind


def _validate(ctx, params: dict) -> None:
    prepare(ctx, params)


def _download(ctx, source: str, kind: str | None, on_progress, cancel) -> tuple[Path, str]:
    """Fetch into a staging place under the models folder; (file or folder, kind)."""
    from studio.model_download import check_allowed, download_hub, download_url, url_file_name

    staging = Path(ctx.config.models_dir) / ".downloads"
    if check_allowed(ctx, source) == "hub":
        on_progress(Progress(0, 3, f"downloading {source} from the hub"))
        return download_hub(source, staging / source.replace("/", "--")), kind or "checkpoint"

    def on_bytes(done: int, total: int | None) -> None:
        megabytes = f"{done / 1e6:.1f}" + (f" of {total / 1e6:.1f}" if total else "")
        on_progress(Progress(done, total or 0, f"downloading {url_file_name(source)}: "
                                               f"{megabytes} MB"))

    path = download_url(source, staging / url_file_name(source), on_bytes, cancel)
    return path, kind or ""


def _run(ctx, params: dict, on_progress, cancel) -> TaskResult:
    from studio.model_inventory import copy_model, detect_kind, import_target, inventory

    source, target, kind = prepare(ctx, params)
    if target is None:  # 1. a download first, into the models folder's staging place
        fetched, kind = _download(ctx, source, kind, on_progress, cancel)
        kind = kind or detect_kind(fetched)
        target = import_target(ctx, fetched, kind)
        target.parent.mkdir(parents=True, exist_ok=True)
        fetched.rename(target)
    else:  # 1. a copy
        on_progress(Progress(0, 2, f"copying {source.name} into {target.parent.name}/"))
        cancel.raise_if_cancelled()
        copy_model(source, target)
    # 2. Hash it once now, so the listing shows it at once.
    on_progress(Progress(1, 2, "hashing"))
    entry = next((e for e in inventory(ctx, kind, compute=True)
                  if e.path and Path(e.path) == target), None)
    on_progress(Progress(2, 2, "imported"))
    info = entry.row() if entry else {"path": str(target), "kind": kind}
    return TaskResult(text=f"Imported {target.name} as a {kind}", info=info)


register(TaskSpec("import_model", "diffusion", _validate, _run,
                  "Copy or download a model into the models folder of its kind"))
