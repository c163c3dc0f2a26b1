"""Which image-tab controls a model's family takes: a tab disables the others when a model is
picked, and puts them back to their neutral value so that nothing it cannot change is sent
(engines/diffusion/families.py says what each family refuses; headers only, no torch).

    wire_family_controls(c["model"], c)     # c: the tab's controls by key
"""
from __future__ import annotations

from functools import partial

import gradio as gr

# The tabs' control keys -> (task field, neutral value sent while disabled).
TAB_FIELDS = {"negative": ("negative_prompt", ""), "scheduler": ("scheduler", "DPM++ 2M"),
              "token_merging": ("token_merging", 0), "step_cache": ("step_cache", 0),
              "candidates": ("candidates", 0), "keep": ("keep", 1), "clip_skip": ("clip_skip", 1)}
REASON = "not taken by {label}"


def family_refuses(model: str | None) -> tuple[str, set[str]]:
    """(family label, task fields it refuses) for a model id; the embedded model refuses none."""
    from engines.diffusion.families import family_info

    info = family_info(model or "genstudio-tiny-sd")
    return info["label"], set(info["refuses"])


def control_updates(model: str | None, names: tuple[str, ...]) -> list:
    """One gr.update per task field name: interactive unless the family refuses the field, in
    which case it also goes back to its neutral value."""
    label, refused = family_refuses(model)
    neutral = dict(TAB_FIELDS.values())
    updates = []
    for name in names:
        if name in refused:
            updates.append(gr.update(interactive=False, value=neutral.get(name),
                                     info=REASON.format(label=label)))
        else:
            updates.append(gr.update(interactive=True, info=None))
    return updates


def wire_family_controls(model: gr.Dropdown, controls: dict) -> None:
    keys = [k for k in TAB_FIELDS if k in controls]
    names = tuple(TAB_FIELDS[k][0] for k in keys)
    model.change(partial(control_updates, names=names), model, [controls[k] for k in keys],
                 api_visibility="private")
