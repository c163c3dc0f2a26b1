"""Style transfer speed: seconds per 512x512 image for every style (through StyleEngine, as the
studio runs it) and seconds per CycleGAN training iteration at 128 px (the recipe's default
networks, batch 1). Medians; the machine's load average is printed with them, since on a
shared CPU it moves the numbers more than anything else.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/style.py [--threads 2] [--runs 3]
        [--iterations 10] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Run as `python benchmarks/<x>.py`, this folder comes first on sys.path and its queue.py would
# shadow the standard library's `queue` (torch imports it): put the repo root there instead.
sys.path[:] = [str(REPO)] + [p for p in sys.path if Path(p or ".").resolve() != REPO / "benchmarks"]
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch
from PIL import Image

from engines.style.engine import StyleEngine, StyleParams, list_styles


def photo_512() -> Image.Image:
    from engines.training.style_data import load_photo

    return load_photo("astronaut.png", 512).resize((512, 512))


def time_style(style, image: Image.Image, painting: Image.Image, runs: int) -> dict:
    engine = StyleEngine(model_id=style.model_id)
    started = time.perf_counter()
    engine.load()
    load_s = time.perf_counter() - started
    params = StyleParams(image=image, style_image=painting if style.kind == "arbitrary" else None)
    engine.generate(params)  # warm-up
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        engine.generate(params)
        times.append(time.perf_counter() - started)
    params_count = (sum(p.numel() for p in engine._generator.parameters())
                    if engine._generator is not None else None)
    return {"seconds_512": round(statistics.median(times), 3), "load_s": round(load_s, 2),
            "parameters": params_count}


def time_training(iterations: int, threads: int) -> dict:
    from engines.training.cyclegan import CycleGAN, TrainConfig

    torch.set_num_threads(threads)
    config = TrainConfig()
    model = CycleGAN(config)
    a, b = torch.rand(1, 3, 128, 128) * 2 - 1, torch.rand(1, 3, 128, 128) * 2 - 1
    model.step(a, b)  # warm-up
    times = []
    for _ in range(iterations):
        started = time.perf_counter()
        model.step(a, b)
        times.append(time.perf_counter() - started)
    return {"threads": threads, "seconds_per_iteration": round(statistics.median(times), 3),
            "generator_parameters": sum(p.numel() for p in model.G_AB.parameters()),
            "discriminator_parameters": sum(p.numel() for p in model.D_A.parameters())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads for inference")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    image = photo_512()
    painting = Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256, 3), np.uint8))
    results = {"load_average_before": os.getloadavg()[0], "threads": args.threads, "styles": {}}
    print(f"load average {os.getloadavg()[0]:.1f}; torch threads {args.threads}")
    print("| style | kind | parameters | s per 512x512 | load s |\n|---|---|---|---|---|")
    for style in list_styles():
        r = time_style(style, image, painting, args.runs)
        results["styles"][style.id] = r
        print(f"| {style.id} | {style.kind} | {r['parameters'] or 'ONNX int8'} | "
              f"{r['seconds_512']:.2f} | {r['load_s']:.2f} |", flush=True)
    for threads in sorted({1, args.threads}):
        r = time_training(args.iterations, threads)
        results.setdefault("training_128", []).append(r)
        print(f"training at 128 px, batch 1, {threads} thread(s): "
              f"{r['seconds_per_iteration']:.2f} s/iteration (G {r['generator_parameters']:,} "
              f"params, D {r['discriminator_parameters']:,})", flush=True)
    results["load_average_after"] = os.getloadavg()[0]
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
