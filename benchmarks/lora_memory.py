"""What gradient checkpointing saves when training a LoRA on an SD 1.5-size model.

The train_lora job turns gradient checkpointing on for every model but the embedded one (training
is fp32). This trains an SD 1.5-architecture model with random weights (engines/diffusion/
random_weights.py, the real layer sizes) for a few steps at 512 px, with and without it, each
in a process of its own, and reports seconds per step (after the first) and the peak memory of
training above the loaded model: on CUDA the allocator's peak, on the CPU the process's peak
resident memory.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/lora_memory.py [--device cuda] [--size 512]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
REPO = Path(__file__).resolve().parent.parent
sys.path[:] = [str(REPO)] + [p for p in sys.path if Path(p or ".").resolve() != REPO / "benchmarks"]


def _rss_mib() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


def one_run(folder: str, device: str, size: int, batch: int, steps: int, checkpointing: bool) -> dict:
    import torch

    from benchmarks.lora_scenes import TRIGGER, training_set
    from engines.diffusion.loading import RuntimeOptions, load_pipeline, resolve_model
    from engines.training.lora import LoraTrainConfig, train_lora

    pipe = load_pipeline(resolve_model(folder), device, RuntimeOptions(half_precision=False))
    images, captions = training_set(4)
    cfg = LoraTrainConfig(trigger=TRIGGER, steps=steps, batch=batch, resolution=size,
                          sample_every=0, target="unet", gradient_checkpointing=checkpointing)
    if device == "cuda":
        torch.cuda.synchronize()
        loaded = torch.cuda.memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
    else:  # the weights are memory-mapped: read them all first so that they count as loaded
        with torch.no_grad():
            for part in (pipe.unet, pipe.vae, pipe.text_encoder):
                sum(float(t.float().sum()) for t in part.parameters())
        loaded = _rss_mib()
    times: list[float] = []
    last = [time.perf_counter()]

    def tick(step: int, loss: float) -> None:
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now

    with tempfile.TemporaryDirectory() as run_dir:
        train_lora(pipe, [im.resize((size, size)) for im in images], captions, cfg, run_dir,
                   on_loss=tick)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:  # ru_maxrss is in KiB on Linux
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"gradient_checkpointing": checkpointing, "loaded_mib": round(loaded),
            "peak_mib": round(peak), "training_mib": round(peak - loaded),
            "seconds_per_step": round(sum(times[1:]) / max(1, len(times) - 1), 2)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: one run, JSON settings
    args = p.parse_args(argv)
    if args.one:
        print("RESULT " + json.dumps(one_run(**json.loads(args.one))), flush=True)
        return {}
    from engines.diffusion.random_weights import build_random_sd

    results = {}
    with tempfile.TemporaryDirectory() as folder:
        build_random_sd(folder, "sd15")
        for checkpointing in (False, True):
            settings = dict(folder=folder, device=args.device, size=args.size, batch=args.batch,
                            steps=args.steps, checkpointing=checkpointing)
            out = subprocess.run([sys.executable, __file__, "--one", json.dumps(settings)],
                                 capture_output=True, text=True, cwd=REPO)
            line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                raise SystemExit(out.stderr[-3000:])
            results["on" if checkpointing else "off"] = json.loads(line[7:])
            print(results["on" if checkpointing else "off"], flush=True)
    report = {"device": args.device, "size": args.size, "batch": args.batch, **results}
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
