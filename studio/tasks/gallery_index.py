"""The "index_gallery" task: embed every gallery item that has no vector yet, for the semantic
search (studio/gallery/semantic.py). Queued at batch priority by a search that finds more than
semantic.INLINE_LIMIT items missing (a first search over an old gallery); each batch of 32 is
committed, so a stopped job keeps its work and the next one goes on from there.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from engines.base import CancelToken, Progress, ProgressCallback
from studio.tasks import TaskResult, TaskSpec, check_fields, register

if TYPE_CHECKING:
    from studio.context import StudioContext

MAX_ITEMS = 1_000_000  # one job indexes the whole gallery


def validate_index_gallery(ctx: "StudioContext", params: dict) -> None:
    check_fields("index_gallery", params, ())


def run_index_gallery(ctx: "StudioContext", params: dict, on_progress: ProgressCallback,
                      cancel: CancelToken) -> TaskResult:
    from studio.gallery.semantic import SemanticIndex, index_missing

    index = SemanticIndex(ctx.db)
    total = index.missing_count()
    stored = 0

    def batch_done(done: int, kept: int) -> None:
        nonlocal stored
        stored += kept
        on_progress(Progress(min(done, total), max(total, 1), f"embedded {done}/{total} gallery items"))

    index_missing(ctx, index, MAX_ITEMS, cancel=cancel, on_batch=batch_done)
    return TaskResult(text=None, info={"indexed": stored})


register(TaskSpec("index_gallery", "embed", validate_index_gallery, run_index_gallery,
                  "Embed gallery items' prompts and texts for the semantic search"))
