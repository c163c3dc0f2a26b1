"""A "Variations" row for any tab that shows a gallery item: N variations of it through a
prior/decoder model's image embedding (DALL·E 2), as a `variations` job
(studio/tasks/variations.py). The gallery's detail panel and the image tabs carry one:

    with detail_group:
        variations_row(ctx, selected_item_state)
    variations_for_results(ctx, results_panel, "txt2img")   # under an image tab's results
"""
from __future__ import annotations

from functools import partial

import gradio as gr

from studio.ui.widgets import PRIVATE, follow_job, progress_html


def make_variations(ctx, item_id, count, prompt):
    """Yields the status line while the job runs; the variations are the item's children."""
    if item_id is None:
        raise gr.Error("Open an image first.")
    params = {"image_id": int(item_id), "count": int(count)}
    if (prompt or "").strip():
        params["prompt"] = prompt.strip()
    update = None
    for update in follow_job(ctx, "variations", params):
        if not update.finished:
            yield progress_html(update.step, update.total,
                                update.message or f"Job #{update.job_id} {update.status}")
    if update is not None and update.status == "completed":
        ids = update.result["item_ids"]
        yield (f"Saved {len(ids)} variation(s) of #{item_id}: "
               + ", ".join(f"#{i}" for i in ids) + " (children of the image; refresh the grid)")
    else:
        yield f"⚠️ {update.error if update else 'not started'}"


def make_variations_of_result(ctx, ids, chosen, count, prompt):
    """The image tabs' button: the clicked result (or the first) of the results strip."""
    from studio.ui.widgets import selected_item

    yield from make_variations(ctx, selected_item(ids, chosen), count, prompt)


def variations_for_results(ctx, panel, prefix: str) -> dict:
    """The same row under an image tab's results strip (widgets.ResultsPanel)."""
    return _row(prefix, partial(make_variations_of_result, ctx), [panel.ids, panel.chosen])


def variations_row(ctx, item_state: gr.State, prefix: str = "gallery") -> dict:
    return _row(prefix, partial(make_variations, ctx), [item_state])


def _row(prefix: str, handler, sources: list) -> dict:
    with gr.Row():
        count = gr.Slider(1, 8, value=4, step=1, label="Variations", scale=1,
                          elem_id=f"{prefix}-variations-count")
        prompt = gr.Textbox(label="Steer with a prompt (optional)", scale=2,
                            elem_id=f"{prefix}-variations-prompt")
        button = gr.Button("Make variations (DALL·E 2)", size="sm", scale=1,
                           elem_id=f"{prefix}-variations-run")
    status = gr.HTML(elem_id=f"{prefix}-variations-status")
    button.click(handler, sources + [count, prompt], [status], **PRIVATE)
    return {"variations_status": status}
