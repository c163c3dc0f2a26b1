""""Reuse parameters" of the image tabs (Text to image, Inpaint): a gallery item's saved params
back into a tab's controls. Values are keyed by the tabs' control names (sampling_panel's
"steps", "cfg", "scheduler", "seed"...), so each tab picks the ones it has, in its own order.
"""
from __future__ import annotations

from typing import Any

import gradio as gr

from studio.ui.widgets import DEFAULT_MODEL


def diffusion_item(ctx, item_id):
    """The gallery item `item_id`, or gr.Error when there is none or another engine made it."""
    try:
        item = ctx.gallery.get(int(item_id))
    except (LookupError, TypeError, ValueError):
        raise gr.Error(f"No gallery item #{item_id}.")
    if item.engine != "diffusion":
        raise gr.Error(f"Item #{item.id} was not made by the diffusion engine.")
    return item


def item_values(item) -> dict[str, Any]:
    """Control name -> value from the item's params; the controls' defaults where it has none
    (the task stores only what the request sent, so e.g. clip_skip 1 is absent)."""
    p = item.params
    return {"prompt": item.prompt, "negative": item.negative_prompt,
            "steps": p.get("steps", 20), "cfg": p.get("guidance_scale", 7),
            "scheduler": p.get("scheduler", "DPM++ 2M"),
            "width": p.get("width", item.width or 64), "height": p.get("height", item.height or 64),
            "seed": item.seed if item.seed is not None else -1,
            "model": p.get("model", DEFAULT_MODEL), "strength": p.get("strength", 0.75),
            "clip_skip": p.get("clip_skip", 1)}

