"""Prompt adherence of the embedded tiny SD model, GenEval-style: per-attribute accuracy.

The judge (engines/training/sd_judge.py; trained and cached under runs/ when missing) reads
shape, colour, background, position and size off each generated image; an attribute counts as
followed when the judge reads what the prompt asked for. Prompts are fixed and seeded: "seen"
use (shape, colour, background) triples from training, "held-out" only triples no part of the
model was trained on. Two reference rows bound what the model can score: the judge on real
procedural images (the instrument's own accuracy) and on images passed through the VAE.

    python benchmarks/prompt_adherence.py --model assets/sd-tiny --n 96
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
REPO = Path(__file__).resolve().parent.parent
# Run as `python benchmarks/<x>.py`, this folder comes first on sys.path and its queue.py would
# shadow the standard library's `queue` (torch imports it): put the repo root there instead.
sys.path[:] = [str(REPO)] + [p for p in sys.path if Path(p or ".").resolve() != REPO / "benchmarks"]

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from engines.training.sd_data import eval_scenes, render  # noqa: E402
from engines.training.sd_judge import SHIPPED_JUDGE, accuracy, load_judge  # noqa: E402
from engines.training.sd_vae_decoder import through_vae  # noqa: E402

COLUMNS = ("shape", "colour", "background", "position", "size", "all4")


def load_pipeline(model: Path):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(model, safety_checker=None, feature_extractor=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def generate(pipe, prompts: list[str], steps: int, guidance: float, seed: int, batch: int = 32,
             step_cache: int = 0):
    from engines.diffusion.speed import set_step_cache

    images = []
    for i in range(0, len(prompts), batch):
        set_step_cache(pipe.unet, step_cache)  # 0 = exact; each run starts with a full call
        # One generator per image, seeded by its index: a prompt's image does not depend on --n.
        gens = [torch.Generator().manual_seed(seed + j) for j in range(i, min(i + batch, len(prompts)))]
        images += pipe(prompts[i : i + batch], num_inference_steps=steps, guidance_scale=guidance,
                       generator=gens, height=64, width=64).images
    return images


def grid(images: list, captions: list[str], cols: int, cell: int = 128) -> Image.Image:
    rows = (len(images) + cols - 1) // cols
    text_h = 30
    out = Image.new("RGB", (cols * cell, rows * (cell + text_h)), "white")
    draw = ImageDraw.Draw(out)
    for k, (im, cap) in enumerate(zip(images, captions)):
        x, y = (k % cols) * cell, (k // cols) * (cell + text_h)
        out.paste(im.resize((cell, cell), Image.Resampling.NEAREST), (x, y))
        short = cap.removeprefix("a ").replace(" on a ", ", ").replace(" background", " bg")
        short = short.replace(" at the ", ", ").replace(" in the ", ", ")
        for k_line, line in enumerate(textwrap.wrap(short, width=22)[:2]):
            draw.text((x + 3, y + cell + 2 + 13 * k_line), line, fill="black")
    return out


def table(rows: dict[str, dict]) -> str:
    lines = ["| | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for name, acc in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{acc[c]:.2f}" for c in COLUMNS) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None):
    p = argparse.ArgumentParser(description="per-attribute prompt adherence of a tiny SD folder")
    p.add_argument("--model", type=Path, default=Path("assets/sd-tiny"))
    p.add_argument("--judge", type=Path, default=SHIPPED_JUDGE,
                   help="the attribute classifier (trained by the recipe when the file is absent)")
    p.add_argument("--n", type=int, default=96, help="prompts per split")
    p.add_argument("--steps", type=int, default=20)
    # 2.0 was chosen on seen prompts only (2 / 3 / 4 / 5 / 8 tried); higher guidance
    # over-saturates and shifts colours (orange -> yellow, purple -> blue). The first value
    # makes the grid; every value gets its rows.
    p.add_argument("--guidance", type=float, nargs="+", default=[2.0, 5.0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--step-cache", type=int, default=0,
                   help="score the DeepCache-style step cache at this interval (0 = exact)")
    p.add_argument("--openvino", choices=["f32", "bf16"],
                   help="run the UNet on OpenVINO at this precision (engines/diffusion/openvino.py)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--md", type=Path, default=Path("runs/sd_tiny/prompt_adherence.md"))
    p.add_argument("--grid", type=Path, default=Path("docs/images/sd_tiny_grid.png"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    # 1. Instrument and model.
    judge = load_judge(args.judge)
    pipe = load_pipeline(args.model)
    if args.openvino:
        from engines.diffusion.openvino import enable_openvino

        enable_openvino(pipe.unet, args.openvino, args.threads)
    rows, samples = {}, {}
    t0 = time.time()
    # 2. Generate and judge each split.
    for split, name in (("train", "seen"), ("held_out", "held-out")):
        scenes = eval_scenes(args.n, split)
        prompts = [s.caption() for s in scenes]
        for k, guidance in enumerate(args.guidance):
            images = generate(pipe, prompts, args.steps, guidance, args.seed,
                              step_cache=args.step_cache)
            rows[f"generated, {name} prompts, guidance {guidance:g}"] = accuracy(judge, images, scenes)
            if k == 0:
                samples[name] = (images, prompts)
        # References: the same scenes drawn by the generator, and those drawings through the VAE.
        real = [render(s, np.random.default_rng([99, i])) for i, s in enumerate(scenes)]
        rows[f"reference: real images ({name})"] = accuracy(judge, real, scenes)
        rows[f"reference: real through VAE ({name})"] = accuracy(judge, through_vae(pipe.vae, real), scenes)
    seconds = time.time() - t0
    # 3. Report.
    info = json.loads((args.model / "training_info.json").read_text()) if (args.model / "training_info.json").exists() else {}
    md = (f"Model `{args.model}` (UNet step {info.get('step', '?')}), {args.n} prompts per split, "
          f"DPM++ 2M {args.steps} steps, seed {args.seed}, step cache {args.step_cache}, "
          f"UNet on {'OpenVINO ' + args.openvino if args.openvino else 'PyTorch'}; "
          f"{seconds:.0f} s including references.\n\n" + table(rows) + "\n")
    print(md)
    args.md.parent.mkdir(parents=True, exist_ok=True)
    args.md.write_text(md)
    args.md.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    # 4. Sample grid: the first 12 seen and 12 held-out prompts, one image each.
    imgs = samples["seen"][0][:12] + samples["held-out"][0][:12]
    caps = samples["seen"][1][:12] + samples["held-out"][1][:12]
    args.grid.parent.mkdir(parents=True, exist_ok=True)
    grid(imgs, caps, cols=6).save(args.grid)
    print(f"wrote {args.md} and {args.grid}")


if __name__ == "__main__":
    main()
