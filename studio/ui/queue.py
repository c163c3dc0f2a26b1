"""Queue tab — placeholder until issue 6 lands. It says so plainly; it generates nothing."""
from __future__ import annotations

import gradio as gr

TAB_ID = "queue"
TITLE = "Queue"


def build(ctx) -> dict:
    gr.Markdown("**Not available yet.** The batch prompt queue workbench arrives with issue 6; "
                "nothing is generated on this tab until then.")
    return {}
