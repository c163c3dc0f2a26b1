"""Inpaint & outpaint tab — placeholder until issue 4 lands. It says so plainly; it generates nothing."""
from __future__ import annotations

import gradio as gr

TAB_ID = "inpaint"
TITLE = "Inpaint & outpaint"


def build(ctx) -> dict:
    gr.Markdown("**Not available yet.** The inpainting and outpainting workbench arrives with issue 4; "
                "nothing is generated on this tab until then.")
    return {}
