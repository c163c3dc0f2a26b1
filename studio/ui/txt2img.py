"""Text to image tab — placeholder until issue 4 lands. It says so plainly; it generates nothing."""
from __future__ import annotations

import gradio as gr

TAB_ID = "txt2img"
TITLE = "Text to image"


def build(ctx) -> dict:
    gr.Markdown("**Not available yet.** The text-to-image and img2img workbench arrives with issue 4; "
                "nothing is generated on this tab until then.")
    return {}
