"""Chat tab — placeholder until issue 3 lands. It says so plainly; it generates nothing."""
from __future__ import annotations

import gradio as gr

TAB_ID = "chat"
TITLE = "Chat"


def build(ctx) -> dict:
    gr.Markdown("**Not available yet.** The local language model chat workbench arrives with issue 3; "
                "nothing is generated on this tab until then.")
    return {}
