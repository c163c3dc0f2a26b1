"""Gallery over HTTP: list/search (`mode=words`: every word, as a prefix; `mode=semantic`: by
meaning, studio/gallery/semantic.py), one item, its file, favourite, delete."""
from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import FileResponse

from studio.api.auth import require_auth
from studio.gallery import semantic
from studio.gallery.store import GalleryQuery, ItemView


def _json(item: ItemView) -> dict:
    return {"id": item.id, "kind": item.kind, "task": item.task, "engine": item.engine,
            "model": item.model, "prompt": item.prompt, "negative_prompt": item.negative_prompt,
            "text": item.text, "params": item.params, "seed": item.seed, "width": item.width,
            "height": item.height, "duration_s": item.duration_s, "parent_id": item.parent_id,
            "favourite": item.favourite, "tags": list(item.tags),
            "created_at": item.created_at.isoformat() + "Z",
            "file_url": f"/api/gallery/{item.id}/file" if item.file_path else None}


def router(ctx) -> APIRouter:
    api = APIRouter(prefix="/api/gallery", tags=["gallery"], dependencies=[Depends(require_auth(ctx))])

    def lookup(item_id: int) -> ItemView:
        try:
            return ctx.gallery.get(item_id)
        except LookupError as error:
            raise HTTPException(404, str(error))

    @api.get("")
    def list_items(search: str = "", kind: str | None = None, task: str | None = None,
                   engine: str | None = None, model: str | None = None, tag: str | None = None,
                   favourites_only: bool = False, date_from: datetime | None = None,
                   date_to: datetime | None = None, page: int = Query(1, ge=1),
                   page_size: int = Query(50, ge=1, le=500),
                   mode: Literal["words", "semantic"] = "words") -> dict:
        query = GalleryQuery(
            search=search, kind=kind, task=task, engine=engine, model=model, tag=tag,
            favourites_only=favourites_only, date_from=date_from, date_to=date_to, page=page,
            page_size=page_size)
        not_indexed = 0
        if mode == "semantic":  # most similar first; `not_indexed`: items still being embedded
            result, not_indexed = semantic.search(ctx, query)
        else:
            result = ctx.gallery.query(query)
        return {"total": result.total, "page": result.page, "pages": result.pages, "mode": mode,
                "not_indexed": not_indexed, "items": [_json(i) for i in result.items]}

    @api.get("/{item_id}")
    def get_item(item_id: int) -> dict:
        item = lookup(item_id)
        return {**_json(item), "lineage": [a.id for a in ctx.gallery.lineage(item_id)],
                "children": [c.id for c in ctx.gallery.children(item_id)]}

    @api.get("/{item_id}/file")
    def get_file(item_id: int):
        item = lookup(item_id)
        if item.file_path is None or not item.file_path.exists():
            raise HTTPException(404, f"item {item_id} has no file")
        return FileResponse(item.file_path, media_type="image/png", filename=f"genstudio-{item_id}.png")

    @api.post("/{item_id}/favourite")
    def favourite(item_id: int, value: bool = True) -> dict:
        lookup(item_id)
        ctx.gallery.set_favourite(item_id, value)
        return {"id": item_id, "favourite": value}

    @api.delete("/{item_id}")
    def delete(item_id: int) -> dict:
        lookup(item_id)
        ctx.gallery.delete(item_id)
        return {"deleted": item_id}

    return api
