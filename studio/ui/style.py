"""Style transfer tab — placeholder until issue 5 lands. It says so plainly; it generates nothing."""
from __future__ import annotations

import gradio as gr

TAB_ID = "style"
TITLE = "Style transfer"


def build(ctx) -> dict:
    gr.Markdown("**Not available yet.** The GAN style transfer workbench arrives with issue 5; "
                "nothing is generated on this tab until then.")
    return {}
