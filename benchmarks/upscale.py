"""Upscaler benchmark: quality of each embedded upscaler against bicubic on held-out photos,
upscale time per megapixel, and the cost of A1111's hires fix relative to plain txt2img.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/upscale.py            # ~10 min on 2 cores
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/upscale.py --quick    # ~2 min

1. Quality: 256x256 centre crops of scikit-image's photos (none is in Real-ESRGAN's training
   sets, DF2K and OST), downscaled 4x with bicubic, brought back 4x by each upscaler; PSNR and
   SSIM (RGB, skimage.metrics) against the original crop, plus "detail": the mean gradient
   magnitude relative to the original's (1.0 = as sharp as the original; bicubic blurs, <1).
   From a clean downscale, from a degraded one (JPEG quality 50 after the downscale), from a
   "real-world" one (blur, downscale, noise, JPEG 75: the kind of input Real-ESRGAN was trained
   for), and at x2 (compact networks only) from a clean one.
2. Speed: seconds per input and per output megapixel, at the engine's default tiling.
3. Hires fix: the embedded model, 20 steps, 64 px first pass -> 128 px (Latent and the compact
   network, second pass 20 steps at strength 0.7) vs plain txt2img at 64 px and at 128 px.
Results are printed as Markdown and saved to benchmarks/upscale-results.json.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# The repository, not this folder, first on the path (benchmarks/queue.py would shadow the
# standard library's queue module).
sys.path[0] = str(Path(__file__).resolve().parent.parent)

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "motorcycle")
UPSCALERS = ("R-ESRGAN AnimeVideo", "R-ESRGAN 4x+", "GenStudio 4x PSNR", "GenStudio 4x+ PSNR")


def crops(names) -> dict[str, Image.Image]:
    from skimage import data

    out = {}
    for name in names:
        array = data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(data, name)()
        photo = Image.fromarray(array).convert("RGB")
        w, h = photo.size
        out[name] = photo.crop((w // 2 - 128, h // 2 - 128, w // 2 + 128, h // 2 + 128))
    return out


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def real_world(original: Image.Image, factor: int, rng: np.random.Generator) -> Image.Image:
    """A camera-like low-res copy, Real-ESRGAN's regime (one fixed draw of its degradations):
    optical blur (Gaussian, sigma 1 px), bicubic downscale, sensor noise (sigma 10 of 255), JPEG 75."""
    from PIL import ImageFilter

    side = original.width // factor
    small = original.filter(ImageFilter.GaussianBlur(1.0)).resize((side, side), Image.BICUBIC)
    noisy = np.asarray(small, dtype=np.float64) + rng.normal(0, 10, (side, side, 3))
    return jpeg(Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)), 75)


def detail(image: Image.Image) -> float:
    gray = np.asarray(image.convert("L"), dtype=np.float64)
    return float(np.abs(np.diff(gray, axis=0)).mean() + np.abs(np.diff(gray, axis=1)).mean())


def quality(engines: dict, photos: dict) -> dict:
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    from engines.upscale.params import UpscaleParams

    table: dict = {}
    for protocol in ("clean x4", "jpeg50 x4", "real-world x4", "clean x2"):
        factor = 2 if protocol.endswith("x2") else 4
        rows: dict[str, list[tuple[float, float, float]]] = {}
        for i, (name, original) in enumerate(photos.items()):
            if protocol.startswith("real-world"):
                small = real_world(original, factor, np.random.default_rng(i))
            else:
                small = original.resize((256 // factor, 256 // factor), Image.BICUBIC)
            if protocol.startswith("jpeg50"):
                small = jpeg(small, 50)
            outputs = {"bicubic": small.resize(original.size, Image.BICUBIC),
                       "Lanczos": small.resize(original.size, Image.LANCZOS)}
            for label, engine in engines.items():
                if factor == 2 and "4x+" in label:
                    continue  # x2 only for the compact networks (x4plus: 4x the work per photo)
                outputs[label] = engine.generate(UpscaleParams(image=small, scale=factor)).images[0]
            reference = np.asarray(original)
            for label, image in outputs.items():
                array = np.asarray(image)
                rows.setdefault(label, []).append((
                    peak_signal_noise_ratio(reference, array),
                    structural_similarity(reference, array, channel_axis=2),
                    detail(image) / detail(original)))
            print(f"  {protocol} {name} done", flush=True)
        table[protocol] = {label: [round(statistics.mean(v[i] for v in values), 4)
                                   for i in range(3)] for label, values in rows.items()}
    return table


def speed(engines: dict, photos: dict, runs: int) -> dict:
    from engines.upscale.params import UpscaleParams

    photo = next(iter(photos.values()))
    out = {}
    for label, engine in engines.items():
        if label.startswith("GenStudio"):
            continue  # the compact / x4plus network with other weights: the same speed
        side = 128 if "4x+" in label else 256  # x4plus is ~30x the work of the compact ones
        image = photo.resize((side, side), Image.BICUBIC)
        engine.generate(UpscaleParams(image=image.resize((32, 32)), scale=4))  # warm
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            engine.generate(UpscaleParams(image=image, scale=4))
            times.append(time.perf_counter() - started)
        seconds = statistics.median(times)
        input_mp, output_mp = side * side / 1e6, side * side * 16 / 1e6
        out[label] = {"input": f"{side}x{side}", "seconds": round(seconds, 3),
                      "s_per_input_mp": round(seconds / input_mp, 1),
                      "s_per_output_mp": round(seconds / output_mp, 2)}
        print(f"  speed {label}: {out[label]}", flush=True)
    return out


def hires_cost(runs: int, steps: int) -> dict:
    from engines.base import EngineManager
    from studio.app import ENGINES
    from studio.config import StudioConfig
    from studio.context import StudioContext
    from studio.db.database import Database
    from studio.gallery.store import GalleryStore
    from studio.tasks import run_task

    data_dir = Path(tempfile.mkdtemp(prefix="upscale-bench-"))
    db = Database(None)
    db.migrate()
    engines = EngineManager("cpu")
    for spec in ENGINES:
        engines.register(spec)
    ctx = StudioContext(config=StudioConfig(data_dir=data_dir, device="cpu"), db=db,
                        gallery=GalleryStore(db, data_dir), engines=engines)
    base = {"prompt": "a red star on a blue background", "steps": steps, "guidance_scale": 2,
            "preview_every": 0}
    cases = {
        "txt2img 64 px": ("txt2img", base),
        "txt2img 128 px": ("txt2img", dict(base, width=128, height=128)),
        "hires 64->128, Latent": ("hires", dict(base, hr_upscaler="Latent")),
        "hires 64->128, R-ESRGAN AnimeVideo": ("hires", dict(base, hr_upscaler="R-ESRGAN AnimeVideo")),
    }
    for task, params in cases.values():  # warm: load every model once
        run_task(ctx, task, dict(params, seed=0))
    times: dict[str, list[float]] = {label: [] for label in cases}
    for run in range(runs):  # interleaved, so machine load hits every case alike
        for label, (task, params) in cases.items():
            started = time.perf_counter()
            run_task(ctx, task, dict(params, seed=run + 1))
            times[label].append(time.perf_counter() - started)
    plain = statistics.median(times["txt2img 64 px"])
    out = {label: {"seconds": round(statistics.median(t), 3),
                   "x_plain_64": round(statistics.median(t) / plain, 2)}
           for label, t in times.items()}
    print(f"  hires: {out}", flush=True)
    return out


def markdown(results: dict) -> str:
    lines = []
    for protocol, table in results["quality"].items():
        lines += [f"\n{protocol} ({len(results['photos'])} photos): PSNR dB / SSIM / detail",
                  "| upscaler | PSNR | SSIM | detail |", "|---|---|---|---|"]
        lines += [f"| {label} | {v[0]:.2f} | {v[1]:.3f} | {v[2]:.2f} |" for label, v in table.items()]
    lines += ["\n| upscaler | input | s | s / input MP | s / output MP |", "|---|---|---|---|---|"]
    lines += [f"| {k} | {v['input']} | {v['seconds']} | {v['s_per_input_mp']} | "
              f"{v['s_per_output_mp']} |" for k, v in results["speed"].items()]
    lines += ["\n| run | s | x txt2img 64 px |", "|---|---|---|"]
    lines += [f"| {k} | {v['seconds']} | {v['x_plain_64']} |" for k, v in results["hires"].items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 photos, 1 speed run, 2 hires runs")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(int(os.environ.get("GENSTUDIO_BENCH_THREADS", "2")))
    from engines.upscale.engine import UpscaleEngine

    names = PHOTOS[:3] if args.quick else PHOTOS
    runs = 1 if args.quick else args.runs
    engines = {label: UpscaleEngine(label) for label in UPSCALERS}
    photos = crops(names)
    results = {"photos": list(names), "threads": torch.get_num_threads(),
               "load_average": os.getloadavg()[0]}
    results["quality"] = quality(engines, photos)
    results["speed"] = speed(engines, photos, runs)
    results["hires"] = hires_cost(2 if args.quick else args.runs, args.steps)
    results["load_average_end"] = os.getloadavg()[0]
    Path(__file__).with_name("upscale-results.json").write_text(json.dumps(results, indent=2))
    print(markdown(results))


if __name__ == "__main__":
    main()
