"""Seconds per denoising step and per image: our DiffusionEngine against a plain, default
diffusers StableDiffusionPipeline, in the same process, same weights, scheduler, seed and size.

    # both models, full settings (SD 1.5 part: ~10 s/step on 2 idle cores, plus a one-off compile)
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/diffusion.py
    # a short look: 3 steps
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/diffusion.py --quick
    # one model, chosen settings
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/diffusion.py --models sd15 --steps 20

(a) "tiny": the embedded model (assets/sd-tiny) at its native 64x64.
(b) "sd15": the SD 1.5 architecture (UNet 860M, VAE 84M, CLIP ViT-L text encoder 123M) from its
    public config with random weights (engines/diffusion/random_weights.py), saved once under
    runs/bench-sd15 (4.3 GB) and loaded from there by both sides, at 512x512.

Each side gets one untimed warm-up image (1 step; with --compile this includes torch.compile,
with --openvino the UNet's conversion),
then `--images` timed images; the median is reported. Plain and ours alternate image by image so
load from other processes on the machine hits both alike. Results go to runs/bench_diffusion.json.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
REPO = Path(__file__).resolve().parent.parent
# Run as `python benchmarks/<x>.py`, this folder comes first on sys.path and its queue.py would
# shadow the standard library's `queue` (torch imports it): put the repo root there instead.
sys.path[:] = [str(REPO)] + [p for p in sys.path if Path(p or ".").resolve() != REPO / "benchmarks"]

PROMPT = "a small red star at the top left on a blue background"
NEGATIVE = "blurry"


def plain_pipeline(folder: str):
    """What a user gets from diffusers with no tuning: from_pretrained, fp32, default attention."""
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config,
                                                             algorithm_type="dpmsolver++")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def time_plain(pipe, steps: int, size: int, seed: int) -> dict:
    import torch

    marks, cpu_marks = [], []
    started, cpu_started = time.perf_counter(), time.process_time()

    def on_step(_pipe, i, _t, _kwargs):
        marks.append(time.perf_counter())
        cpu_marks.append(time.process_time())
        return {}

    with torch.inference_mode():
        pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps, guidance_scale=7.0,
             width=size, height=size, generator=torch.Generator("cpu").manual_seed(seed),
             callback_on_step_end=on_step)
    return _timing(started, marks, cpu_started, cpu_marks)


def time_engine(engine, steps: int, size: int, seed: int, token_merging: float = 0.0,
                step_cache: int = 0) -> dict:
    from engines.diffusion.engine import Txt2ImgParams

    marks, cpu_marks = [], []

    def on_progress(_progress):
        marks.append(time.perf_counter())
        cpu_marks.append(time.process_time())

    started, cpu_started = time.perf_counter(), time.process_time()
    engine.generate(Txt2ImgParams(prompt=PROMPT, negative_prompt=NEGATIVE, steps=steps,
                                  guidance_scale=7.0, width=size, height=size, seed=seed,
                                  scheduler="DPM++ 2M", preview_every=0,
                                  token_merging=token_merging, step_cache=step_cache),
                    on_progress)
    return _timing(started, marks, cpu_started, cpu_marks)


def _timing(started: float, marks: list[float], cpu_started: float, cpu_marks: list[float]) -> dict:
    """Wall seconds, and this process's CPU seconds (all threads): on a shared machine other
    processes stretch wall time but hardly the CPU time the work itself takes."""
    return {"image_s": time.perf_counter() - started, "step_s": _median_step(started, marks),
            "image_cpu_s": time.process_time() - cpu_started,
            "step_cpu_s": _median_step(cpu_started, cpu_marks)}


def _median_step(started: float, marks: list[float]) -> float:
    edges = [started] + marks
    return statistics.median(b - a for a, b in zip(edges, edges[1:]))


def bench_model(name: str, folder: str, size: int, steps: int, images: int,
                compile_unet: bool, tome: float, skip_exact: bool = False,
                step_cache: int = 0, openvino: str | None = None) -> dict:
    """Sides: "plain" (diffusers defaults), "ours" (the engine, exact), and with --tome
    "ours+tome" (the same engine object, token merging on for those requests)."""
    from engines.diffusion.engine import DiffusionEngine
    from engines.diffusion.loading import RuntimeOptions

    print(f"\n== {name}: {size}x{size}, {steps} steps, {images} timed image(s) per side, "
          f"compile={compile_unet}, openvino={openvino}, tome={tome}", flush=True)
    loaded = time.perf_counter()
    plain = plain_pipeline(folder)
    load = {"plain": time.perf_counter() - loaded}
    loaded = time.perf_counter()
    engine = DiffusionEngine(model_id=folder, device="cpu",
                             options=RuntimeOptions(compile=compile_unet, openvino=openvino))
    engine.load()
    load["ours"] = time.perf_counter() - loaded
    sides = {"plain": lambda st, seed: time_plain(plain, st, size, seed)}
    if not skip_exact:
        sides["ours"] = lambda st, seed: time_engine(engine, st, size, seed)
    if step_cache > 1:  # with --tome as well, when given
        label = f"ours+cache{step_cache}" + ("+tome" if tome else "")
        sides[label] = lambda st, seed: time_engine(engine, st, size, seed, tome, step_cache)
    elif tome:
        sides["ours+tome"] = lambda st, seed: time_engine(engine, st, size, seed, tome)
    # Warm-up (untimed, 1 step): first-call allocations, torch.compile or OpenVINO conversion.
    warmup = {}
    for side, run in sides.items():
        started = time.perf_counter()
        run(1, 0)
        warmup[side] = time.perf_counter() - started
    print("   warm-up: " + ", ".join(f"{k} {v:.1f} s" for k, v in warmup.items()), flush=True)
    runs: dict[str, list] = {side: [] for side in sides}
    for i in range(images):  # alternate sides so outside load hits all alike
        for side, run in sides.items():
            runs[side].append(run(steps, 1 + i))
            last = runs[side][-1]
            print(f"   image {i + 1} {side}: {last['image_s']:.2f} s ({last['step_s']:.3f} s/step), "
                  f"CPU {last['image_cpu_s']:.1f} s ({last['step_cpu_s']:.3f} s/step)", flush=True)
    keys = ("image_s", "step_s", "image_cpu_s", "step_cpu_s")
    summary = {side: {k: statistics.median(r[k] for r in rs) for k in keys}
               for side, rs in runs.items()}
    ratios = {side: {"step": summary[side]["step_s"] / summary["plain"]["step_s"],
                     "image": summary[side]["image_s"] / summary["plain"]["image_s"],
                     "step_cpu": summary[side]["step_cpu_s"] / summary["plain"]["step_cpu_s"],
                     "image_cpu": summary[side]["image_cpu_s"] / summary["plain"]["image_cpu_s"]}
              for side in sides if side != "plain"}
    for side, ratio in ratios.items():
        print(f"   => {side}/plain: wall {ratio['step']:.2f} per step, {ratio['image']:.2f} per "
              f"image; CPU time {ratio['step_cpu']:.2f} per step, {ratio['image_cpu']:.2f} per image",
              flush=True)
    del plain, engine
    gc.collect()
    return {"model": name, "size": size, "steps": steps, "images": images,
            "compile": compile_unet, "openvino": openvino, "tome": tome, "summary": summary,
            "ratios": ratios,
            "load_s": load, "warmup_s": warmup, "runs": runs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="tiny,sd15", help="comma list of tiny, sd15")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--images", type=int, default=1, help="timed images per side (sd15)")
    parser.add_argument("--sd15-size", type=int, default=512)
    parser.add_argument("--quick", action="store_true", help="3 steps (a smoke run)")
    parser.add_argument("--compile", action="store_true",
                        help="our engine with torch.compile (minutes of compiling first)")
    parser.add_argument("--tome", type=float, default=0.5,
                        help="also time our engine with this token-merging ratio (0 = skip)")
    parser.add_argument("--skip-exact", action="store_true",
                        help="time only the token-merging side of our engine (saves a compile)")
    parser.add_argument("--step-cache", type=int, default=0,
                        help="time our engine with this DeepCache-style step cache interval "
                             "(with --tome's ratio too; instead of the tome-only side)")
    parser.add_argument("--openvino", choices=["f32", "bf16"],
                        help="our engine with the UNet on OpenVINO at this precision")
    parser.add_argument("--cache", default=str(REPO / "runs" / "bench-sd15"))
    parser.add_argument("--out", default=str(REPO / "runs" / "bench_diffusion.json"))
    args = parser.parse_args(argv)
    import torch

    steps = 3 if args.quick else args.steps
    results = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        if name == "tiny":
            folder = str(REPO / "assets" / "sd-tiny")
            results.append(bench_model("tiny", folder, 64, steps, max(3, args.images),
                                       args.compile, args.tome, args.skip_exact, args.step_cache,
                                       args.openvino))
        elif name == "sd15":
            folder = Path(args.cache)
            if not (folder / "model_index.json").exists():
                from engines.diffusion.random_weights import build_random_sd

                print(f"building random SD 1.5 weights in {folder} (once)...", flush=True)
                build_random_sd(folder, "sd15")
            results.append(bench_model("sd15-random", str(folder), args.sd15_size, steps,
                                       args.images, args.compile, args.tome, args.skip_exact,
                                       args.step_cache, args.openvino))
        else:
            parser.error(f"unknown model {name!r}")
    record = {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
              "load_average": os.getloadavg(), "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2))
    print(f"\nwrote {args.out}")
    for r in results:
        for side, value in r["summary"].items():
            ratio = r["ratios"].get(side)
            print(f"{r['model']:12} {r['size']}px {r['steps']} steps {side:10} "
                  f"{value['step_s']:.3f} s/step {value['image_s']:.2f} s/image "
                  f"(CPU {value['step_cpu_s']:.3f} / {value['image_cpu_s']:.1f})"
                  + (f"  ratio wall {ratio['step']:.2f} / {ratio['image']:.2f}, CPU "
                     f"{ratio['step_cpu']:.2f} / {ratio['image_cpu']:.2f}" if ratio else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
