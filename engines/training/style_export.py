"""Write a trained CycleGAN as a style folder the style engine reads (engines/style/engine.py):
generator.safetensors (A->B only, fp32), style.json (name, architecture, settings, losses) and
thumbnails of the training images. Written beside the target and renamed into place once
complete, so a crash never leaves a half-written style under its name."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from PIL import Image


def export_style(model, state, style_dir: Path, name: str, description: str,
                 style_images: list[Image.Image], content_images: list[Image.Image],
                 extra: dict | None = None) -> Path:
    """`model`: engines.training.cyclegan.CycleGAN; `state`: its TrainState."""
    from safetensors.torch import save_file

    style_dir = Path(style_dir)
    tmp = style_dir.with_name(style_dir.name + ".partial")
    (tmp / "thumbs").mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().contiguous().clone() for k, v in model.G_AB.state_dict().items()}
    save_file(weights, str(tmp / "generator.safetensors"), metadata={"format": "cyclegan-resnet"})
    for kind, images in (("style", style_images), ("content", content_images)):
        for i, image in enumerate(images[:6]):
            thumb = image.convert("RGB")
            thumb.thumbnail((96, 96))
            thumb.save(tmp / "thumbs" / f"{kind}_{i}.jpg", quality=85)
    c = model.config
    meta = {"name": name, "description": description, "kind": "cyclegan",
            "generator": {"ngf": c.ngf, "n_blocks": c.n_blocks, "norm_affine": False},
            "training": {**asdict(c), "iterations_done": state.iteration,
                         "seconds": round(state.seconds, 1),
                         "style_images": len(style_images), "content_images": len(content_images)},
            "final_losses": {k: v[-1] for k, v in state.losses.items() if v},
            **(extra or {})}
    (tmp / "style.json").write_text(json.dumps(meta, indent=2))
    if style_dir.exists():
        import shutil

        shutil.rmtree(style_dir)
    tmp.replace(style_dir)
    return style_dir
