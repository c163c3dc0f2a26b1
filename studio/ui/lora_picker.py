"""LoRA picker for the image tabs: lists the LoRAs in <data>/models/Lora with their trigger
words and preview, and inserts `<lora:name:weight>` (plus the trigger words, when the prompt
lacks them) into the prompt. A second accordion trains a new LoRA as a queue job
(studio/ui/lora_training.py).

    from studio.ui import lora_picker
    lora_picker.build(ctx, prompt_textbox)

Reads only file names, safetensors headers and A1111's sidecar files (`<name>.json` with
"activation text", `<name>.preview.png`): no torch, no weights.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gradio as gr

from studio.ui.widgets import PRIVATE

PREVIEW_SUFFIXES = (".preview.png", ".png", ".preview.jpg", ".jpg", ".jpeg", ".webp")


def _folder(ctx) -> Path:
    return Path(ctx.config.models_dir) / "Lora"


def lora_files(ctx) -> dict[str, Path]:
    from engines.diffusion.lora import find_files

    return find_files([_folder(ctx)])


def trigger_words(path: Path) -> str:
    """A1111's "activation text" from `<name>.json`, else the file's trigger metadata, else its
    most frequent training tags (kohya's ss_tag_frequency)."""
    from engines.base import ParamError
    from engines.diffusion.lora import read_header

    sidecar = path.with_suffix(".json")
    try:
        text = json.loads(sidecar.read_text()).get("activation text", "") if sidecar.exists() else ""
    except (OSError, ValueError, AttributeError):
        text = ""
    if text:
        return str(text)
    try:
        _, metadata = read_header(path)
    except ParamError:
        return ""
    if metadata.get("modelspec.trigger_phrase"):
        return metadata["modelspec.trigger_phrase"]
    try:
        counts: dict[str, int] = {}
        for tags in json.loads(metadata.get("ss_tag_frequency", "{}")).values():
            for tag, n in tags.items():
                counts[tag.strip()] = counts.get(tag.strip(), 0) + int(n)
        return ", ".join(sorted(counts, key=lambda t: -counts[t])[:5])
    except (ValueError, AttributeError, TypeError):
        return ""


def preview_path(path: Path) -> str | None:
    for suffix in PREVIEW_SUFFIXES:
        candidate = path.parent / f"{path.stem}{suffix}"
        if candidate.exists():
            return str(candidate)
    return None


def insert_tag(prompt: str, name: str | None, weight: float, triggers: str) -> str:
    """The prompt with `<lora:name:weight>` appended, and the trigger words when missing."""
    if not name:
        raise gr.Error("Pick a LoRA first")
    prompt = (prompt or "").rstrip()
    if triggers and triggers.lower() not in prompt.lower():
        prompt = f"{prompt}, {triggers}" if prompt else triggers
    tag = f"<lora:{name}:{round(float(weight), 2):g}>"
    return f"{prompt} {tag}" if prompt else tag


def describe(ctx, name: str | None) -> tuple[str, str | None, str]:
    files = lora_files(ctx)
    if not name or name not in files:
        return "", None, ""
    path = files[name]
    triggers = trigger_words(path)
    text = f"**{name}** — `{path.relative_to(_folder(ctx))}`"
    text += f"<br>Trigger words: `{triggers}`" if triggers else "<br>No trigger words recorded"
    return text, preview_path(path), triggers


def build(ctx, prompt_textbox: gr.Textbox) -> dict[str, Any]:
    """The picker (inside the caller's layout); returns its components."""
    c: dict[str, Any] = {}
    names = sorted(lora_files(ctx))
    with gr.Accordion(f"LoRA ({len(names)})", open=False, elem_id="lora-picker") as c["box"]:
        with gr.Row():
            c["choice"] = gr.Dropdown(names, value=None, label="LoRA", scale=3,
                                      elem_id="lora-choice", allow_custom_value=False)
            c["weight"] = gr.Slider(0, 2, value=1, step=0.05, label="Weight", scale=2)
        with gr.Row():
            c["insert"] = gr.Button("Insert into prompt", size="sm", elem_id="lora-insert")
            c["refresh"] = gr.Button("Refresh list", size="sm")
        with gr.Row():
            c["info"] = gr.Markdown(f"Put `.safetensors` LoRAs in `{_folder(ctx)}`; "
                                    "use them as `<lora:name:weight>` in a prompt.")
            c["preview"] = gr.Image(show_label=False, height=128, interactive=False,
                                    visible=True, container=False)
        c["triggers"] = gr.State("")
    c["choice"].change(lambda name: describe(ctx, name), c["choice"],
                       [c["info"], c["preview"], c["triggers"]], **PRIVATE)
    c["insert"].click(insert_tag, [prompt_textbox, c["choice"], c["weight"], c["triggers"]],
                      prompt_textbox, **PRIVATE)
    c["refresh"].click(lambda: gr.Dropdown(choices=sorted(lora_files(ctx)), value=None), None,
                       c["choice"], **PRIVATE)
    try:
        from studio.ui import lora_training
    except ImportError:  # the trainer UI is optional
        return c
    c["training"] = lora_training.build(ctx)
    return c
