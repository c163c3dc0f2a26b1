"""One short, prepared check of the diffusion engine's CUDA options, for a machine with a GPU.

    OMP_WAIT_POLICY=PASSIVE python scripts/check_cuda.py        # ~1 minute on one GPU

Runs the embedded model on CUDA with each option the CPU machines cannot run — fp16 (the CUDA
default), fp32, model CPU offload, attention slicing + VAE tiling — and checks each image is
finite, not blank, and the same picture as fp32 (fp16 rounds differently, so "close", not
equal); then times SD 1.5-architecture steps (random weights) at 512 px in fp16. Prints one
line per check and exits non-zero on the first failure.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    import numpy as np
    import torch

    from engines.diffusion.engine import DiffusionEngine
    from engines.diffusion.loading import RuntimeOptions
    from engines.diffusion.params import Txt2ImgParams

    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 2
    params = Txt2ImgParams(prompt="a small red star at the top left on a blue background",
                           steps=20, seed=3, guidance_scale=2.0, width=64, height=64)
    images = {}
    cases = {"fp32": RuntimeOptions(half_precision=False),
             "fp16": RuntimeOptions(),
             "fp16 + cpu offload": RuntimeOptions(cpu_offload=True),
             "fp16 + slicing + tiling": RuntimeOptions(attention_slicing=True, vae_tiling=True)}
    for name, options in cases.items():
        engine = DiffusionEngine(device="cuda", options=options)
        engine.load()
        dtype = engine._pipes["txt2img"].unet.dtype
        started = time.perf_counter()
        image = np.asarray(engine.generate(params).images[0]).astype(float)
        seconds = time.perf_counter() - started
        engine.unload()
        images[name] = image
        diff = np.abs(image - images["fp32"]).mean()
        ok = np.isfinite(image).all() and image.std() > 5 and diff < 8
        print(f"{'ok ' if ok else 'BAD'} {name}: unet {dtype}, {seconds:.2f} s, "
              f"std {image.std():.1f}, mean |diff| to fp32 {diff:.2f}")
        if not ok:
            return 1

    from engines.diffusion.random_weights import build_random_sd

    with tempfile.TemporaryDirectory() as folder:
        build_random_sd(folder, "sd15")
        engine = DiffusionEngine(model_id=folder, device="cuda")
        engine.load()
        big = Txt2ImgParams(prompt="a photo", steps=20, seed=1, width=512, height=512)
        engine.generate(Txt2ImgParams(prompt="warm-up", steps=2, width=512, height=512))
        result = engine.generate(big)
        print(f"ok  SD 1.5 architecture fp16 512 px: {result.info['seconds_per_step']:.3f} s/step, "
              f"{result.info['seconds']:.2f} s/image")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
