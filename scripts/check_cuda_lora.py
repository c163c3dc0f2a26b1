"""One short, prepared check of LoRA training on a GPU, on an SD 1.5-architecture single file.

    OMP_WAIT_POLICY=PASSIVE python scripts/check_cuda_lora.py        # ~2 minutes on one GPU

The CPU machines train LoRAs on the embedded model only; #15 promises training "on any SD 1.x
folder or single file on a GPU". This writes an SD 1.5-architecture checkpoint with random
weights as one fp16 file in the A1111 layout (tests/ldm_checkpoint.py), then, on CUDA:

1. trains a LoRA on it at 512 px the way the studio's train_lora job does (an fp32 training copy
   of the model; checkpoints, sample images), cancels it halfway and resumes from the checkpoint
   on a freshly loaded model, as after a restart;
2. loads the saved kohya-layout file into the engine (fp16, the CUDA default) through
   `<lora:name:w>`: weight 1 changes the image, weight 0 gives the base image, and a job without
   the tag afterwards gives the base image again (no weights leak from one job into the next).

Prints one line per check with its timing and memory; exits non-zero on the first failure.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]


def main(argv: list[str] | None = None) -> int:
    import argparse

    import numpy as np
    import torch
    from ldm_checkpoint import family_parts, ldm_state_dict
    from safetensors.torch import save_file

    from benchmarks.lora_scenes import TRIGGER, training_set
    from engines.base import CancelToken, Cancelled
    from engines.diffusion.engine import DiffusionEngine
    from engines.diffusion.loading import RuntimeOptions, load_pipeline, resolve_model
    from engines.diffusion.params import Txt2ImgParams
    from engines.training.lora import LoraTrainConfig, save_kohya, train_lora

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", help="cpu only to try this script out")
    parser.add_argument("--size", type=int, default=512, help="training and image side, px")
    args = parser.parse_args(argv)
    device, size = args.device, args.size
    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 2
    cuda = device == "cuda"
    with tempfile.TemporaryDirectory() as tmp:
        # 0. An SD 1.5-architecture single file with random weights.
        started = time.perf_counter()
        torch.manual_seed(0)
        checkpoint = Path(tmp) / "my-sd15-finetune.safetensors"
        save_file(ldm_state_dict(family_parts("v1", device="cpu"), "v1", dtype=torch.float16),
                  str(checkpoint))
        print(f"ok  wrote {checkpoint.name} ({checkpoint.stat().st_size / 2**30:.1f} GiB) in "
              f"{time.perf_counter() - started:.0f} s", flush=True)

        # 1. Train as the train_lora job does; cancel at step 20, resume from its checkpoint.
        images, captions = training_set(6)
        images = [im.resize((size, size)) for im in images]
        cfg = LoraTrainConfig(trigger=TRIGGER, steps=40, batch=2, resolution=size,
                              checkpoint_every=10, sample_every=40, sample_steps=10,
                              target="unet", snr_gamma=5.0, lr_schedule="cosine")
        run_dir = Path(tmp) / "run"
        for attempt in ("first", "resumed"):
            # a fresh pipeline each time, as after a restart (the adapters live on the pipeline)
            pipe = load_pipeline(resolve_model(str(checkpoint)), device,
                                 RuntimeOptions(half_precision=False))
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            cancel, started = CancelToken(), time.perf_counter()
            stop_at_20 = lambda pr: cancel.cancel() if attempt == "first" and pr.step == 20 else None  # noqa: E731
            try:
                result = train_lora(pipe, images, captions, cfg, run_dir, stop_at_20, cancel)
            except Cancelled:
                result = None
            seconds = time.perf_counter() - started
            memory = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
            if attempt == "first":
                ok = result is None and (run_dir / "checkpoint.pt").exists()
                print(f"{'ok ' if ok else 'BAD'} train 20 of 40 steps, then cancelled: "
                      f"{seconds / 20:.3f} s/step at batch 2, {size} px (model on the device "
                      f"included), peak {memory:.1f} GiB", flush=True)
            else:
                ok = (result is not None and result.resumed_from == 20 and len(result.losses) == 40
                      and np.isfinite(result.losses).all() and result.samples is not None)
                print(f"{'ok ' if ok else 'BAD'} resumed at step "
                      f"{result.resumed_from if result else '?'} and finished 40: "
                      f"{result.seconds / 20 if result else float('nan'):.3f} s/step with samples, "
                      f"peak {memory:.1f} GiB, last loss "
                      f"{result.losses[-1] if result else float('nan'):.4f}", flush=True)
            if not ok:
                return 1
            if attempt == "first":
                del pipe
        lora_dir = Path(tmp) / "Lora"
        save_kohya(result.state_dict, lora_dir / "check.safetensors", {"ss_output_name": "check"})
        del pipe
        if cuda:
            torch.cuda.empty_cache()

        # 2. The file through the engine in fp16: on, off, and no trace afterwards.
        engine = DiffusionEngine(model_id=str(checkpoint), device=device)
        engine.load()

        def image(tag: str) -> np.ndarray:
            params = Txt2ImgParams(prompt=f"a {TRIGGER} at the top left {tag}".strip(), steps=10,
                                   seed=5, width=size, height=size, lora_dirs=(str(lora_dir),))
            return np.asarray(engine.generate(params).images[0]).astype(float)

        base = image("")
        on, off, after = image("<lora:check:1>"), image("<lora:check:0>"), image("")
        checks = {"weight 1 changes the image": np.abs(on - base).mean() > 0.5,
                  "weight 0 is the base image": np.abs(off - base).max() <= 1,
                  "the next job without it is the base image": np.abs(after - base).max() <= 1}
        print(f"    {engine._pipes['txt2img'].unet.dtype} engine: mean |on - base| "
              f"{np.abs(on - base).mean():.2f}, max |off - base| {np.abs(off - base).max():.0f}, "
              f"max |after - base| {np.abs(after - base).max():.0f}")
        for name, ok in checks.items():
            print(f"{'ok ' if ok else 'BAD'} {name}", flush=True)
        return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
