"""The LoRA picker widget without a browser: listing, trigger words, preview and the inserted
tag; and that it builds inside a Blocks without importing torch."""
from __future__ import annotations

import json
import subprocess
import sys

import torch
from safetensors.torch import save_file


def test_picker_lists_describes_and_inserts(ctx):
    from studio.ui import lora_picker

    folder = ctx.config.models_dir / "Lora" / "styles"
    folder.mkdir(parents=True)
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(1, 1)}, str(folder / "inky.safetensors"),
              metadata={"ss_tag_frequency": json.dumps({"d": {"ink": 5, "lines": 2, "inky": 9}})})
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(1, 1)}, str(folder / "ring.safetensors"))
    (folder / "ring.json").write_text(json.dumps({"activation text": "gsring"}))
    (folder / "ring.preview.png").write_bytes(b"png")
    assert sorted(lora_picker.lora_files(ctx)) == ["inky", "ring"]
    assert lora_picker.trigger_words(folder / "inky.safetensors") == "inky, ink, lines"
    text, preview, triggers = lora_picker.describe(ctx, "ring")
    assert triggers == "gsring" and preview.endswith("ring.preview.png") and "styles/ring" in text
    assert lora_picker.insert_tag("a red circle", "ring", 0.8, "gsring") == \
        "a red circle, gsring <lora:ring:0.8>"
    assert lora_picker.insert_tag("a gsring", "ring", 1, "gsring") == "a gsring <lora:ring:1>"


def test_builds_in_blocks_without_torch(tmp_path):
    code = f"""
import sys, gradio as gr
from pathlib import Path
from types import SimpleNamespace
from studio.ui import lora_picker
ctx = SimpleNamespace(config=SimpleNamespace(models_dir=Path({str(tmp_path)!r})))
with gr.Blocks():
    prompt = gr.Textbox()
    parts = lora_picker.build(ctx, prompt)
assert "choice" in parts and "training" in parts
assert "torch" not in sys.modules, "the picker imported torch"
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
