"""Code tab — placeholder until issue 3 lands. It says so plainly; it generates nothing."""
from __future__ import annotations

import gradio as gr

TAB_ID = "code"
TITLE = "Code"


def build(ctx) -> dict:
    gr.Markdown("**Not available yet.** The code assistant workbench arrives with issue 3; "
                "nothing is generated on this tab until then.")
    return {}
