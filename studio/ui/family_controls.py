"""Which image-tab controls a model's family takes, for tabs to disable the others when a model
is picked (engines/diffusion/families.py says what each family refuses; headers only, no torch).

    model.change(partial(control_updates, names=("negative_prompt", "scheduler")), [model],
                 [negative_box, sampler_dropdown])
"""
from __future__ import annotations

import gradio as gr

# A tab control's task field -> the words shown when the family lacks it.
REASON = "not taken by {label}"


def family_refuses(model: str | None) -> tuple[str, set[str]]:
    """(family label, task fields it refuses) for a model id; the embedded model refuses none."""
    from engines.diffusion.families import family_info

    info = family_info(model or "genstudio-tiny-sd")
    return info["label"], set(info["refuses"])


def control_updates(model: str | None, names: tuple[str, ...]) -> list:
    """One gr.update per control name: interactive unless the family refuses that field."""
    label, refused = family_refuses(model)
    return [gr.update(interactive=name not in refused,
                      info=REASON.format(label=label) if name in refused else None)
            for name in names]
