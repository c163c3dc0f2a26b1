"""A1111's extra-network endpoints: LoRAs, textual-inversion embeddings and VAEs.

    GET  /sdapi/v1/loras           [{name, alias, path, metadata}]  (A1111's Lora extension)
    POST /sdapi/v1/refresh-loras   re-reads the folder (it is read on every call anyway)
    GET  /sdapi/v1/embeddings      {loaded: {name: {step, sd_checkpoint, sd_checkpoint_name,
                                   shape, vectors}}, skipped: {...}} for the selected model
    POST /sdapi/v1/refresh-embeddings
    GET  /sdapi/v1/sd-vae          [{model_name, filename}]   POST /sdapi/v1/refresh-vae

Folders are A1111's under the data folder: models/Lora, models/embeddings, models/VAE
(subfolders too). Mounted before studio/api/a1111.py, whose empty placeholders for these paths
it replaces. A LoRA is used with `<lora:name:weight>` in a prompt; an embedding by its name in
a prompt; a VAE with `override_settings: {"sd_vae": "<model_name>"}` or the `sd_vae` option.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends

from studio.api.auth import require_auth


def _folder(ctx, kind: str) -> Path:
    return Path(ctx.config.models_dir) / kind


def list_loras(ctx) -> list[dict[str, Any]]:
    from engines.base import ParamError
    from engines.diffusion.lora import find_files, read_header

    out = []
    for name, path in sorted(find_files([_folder(ctx, "Lora")]).items()):
        try:
            _, metadata = read_header(path)
        except ParamError:
            metadata = {"error": "unreadable file"}
        out.append({"name": name, "alias": metadata.get("ss_output_name") or name,
                    "path": str(path), "metadata": metadata})
    return out


def list_embeddings(ctx, model_id: str | None) -> dict[str, dict]:
    """A1111's answer: embeddings whose width fits the model are "loaded", others "skipped"."""
    from engines.base import ParamError
    from engines.diffusion.lora import model_dims
    from engines.diffusion.textual_inversion import find_embeddings, load_embedding

    dims = (model_dims(model_id) or {}).get("text_dims") if model_id else None
    loaded, skipped = {}, {}
    for name, path in sorted(find_embeddings([_folder(ctx, "embeddings")]).items()):
        try:
            embedding = load_embedding(name, path)
        except ParamError:
            skipped[name] = {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None,
                             "shape": None, "vectors": 0}
            continue
        width = int(next(iter(embedding.vectors.values())).shape[-1])
        entry = {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None,
                 "shape": width, "vectors": embedding.count}
        fits = not dims or all(embedding.for_width(w) is not None for w in dims)
        (loaded if fits else skipped)[name] = entry
    return {"loaded": loaded, "skipped": skipped}


def router(ctx) -> APIRouter:
    from studio.api.a1111_options import Checkpoints, Options

    api = APIRouter(prefix="/sdapi/v1", tags=["A1111-compatible"],
                    dependencies=[Depends(require_auth(ctx))])

    @api.get("/loras")
    def loras() -> list[dict[str, Any]]:
        """LoRA files in models/Lora, for `<lora:name:weight>` in a prompt."""
        return list_loras(ctx)

    @api.post("/refresh-loras")
    def refresh_loras() -> None:
        """The folder is read on every call; nothing to refresh."""

    @api.get("/embeddings")
    def embeddings() -> dict[str, dict]:
        """Textual-inversion embeddings in models/embeddings, triggered by name in a prompt."""
        return list_embeddings(ctx, Options(ctx, Checkpoints(ctx)).model_id)

    @api.post("/refresh-embeddings")
    def refresh_embeddings() -> None:
        """The folder is read on every call; nothing to refresh."""

    @api.get("/sd-vae")
    def sd_vae() -> list[dict[str, str]]:
        """VAEs in models/VAE, for the `sd_vae` option or override setting."""
        from engines.diffusion.vae import find_vaes

        return [{"model_name": name, "filename": str(path)}
                for name, path in sorted(find_vaes([_folder(ctx, "VAE")]).items())]

    @api.post("/refresh-vae")
    def refresh_vae() -> None:
        """The folder is read on every call; nothing to refresh."""

    return api
