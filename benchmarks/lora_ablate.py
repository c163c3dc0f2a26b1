"""Where in the UNet, and when in sampling, does a LoRA trained by benchmarks/lora.py draw?

Takes the folder of one benchmarks/lora.py run (its Lora/ and embeddings/ files) and makes the
run's held-out images again (the same prompts and seeds, batched as with `--batched-eval`):

- with parts of the LoRA scaled: `--scale NAME=REGEX:S;REGEX:S` multiplies the up-projection of
  every module whose kohya name matches the first matching REGEX by S (0 = that part off);
- with its weight changed per denoising step: `--schedule NAME=STEP:W,STEP:W` uses W from step
  STEP on (diffusers' callback_on_step_end sets the adapter's weight between steps),

and reports for each the ring rate and the judge's colour/background accuracy, as the benchmark
does. Without --scale/--schedule it runs the set below: every UNet level off in turn, the
attention and the convolutions off, and four step schedules.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/lora_ablate.py runs/lora_bench --out ablate.json
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
REPO = Path(__file__).resolve().parent.parent
sys.path[:] = [str(REPO)] + [p for p in sys.path if Path(p or ".").resolve() != REPO / "benchmarks"]

import torch  # noqa: E402

from benchmarks.lora import generate_batched  # noqa: E402
from benchmarks.lora_scenes import TRIGGER, held_out_prompts, judged, run_split  # noqa: E402

LEVELS = ("down_blocks_0", "down_blocks_1", "down_blocks_2", "mid_block",
          "up_blocks_0", "up_blocks_1", "up_blocks_2")
SCALES = {"whole LoRA": "", **{f"{level} off": f"{level}:0" for level in LEVELS},
          "attention off": "attentions:0", "convolutions off": "resnets|samplers:0",
          "up_blocks_1 x1.3": "up_blocks_1:1.3"}
SCHEDULES = {"off for steps 0-2": "0:0,3:1", "off from step 10": "0:1,10:0",
             "1.5 for steps 0-5": "0:1.5,6:1", "1.5 from step 6": "0:1,6:1.5"}


def parse_rules(text: str) -> list[tuple[re.Pattern, float]]:
    """'up_blocks_1:1.3;attentions:0' -> [(regex, 1.3), (regex, 0.0)]; '' -> []."""
    rules = []
    for part in filter(None, text.split(";")):
        pattern, _, scale = part.rpartition(":")
        if not pattern:
            raise ValueError(f"scale rule {part!r}: expected REGEX:SCALE")
        rules.append((re.compile(pattern), float(scale)))
    return rules


def scaled(state: dict[str, torch.Tensor], rules) -> dict[str, torch.Tensor]:
    """The kohya state dict with each module's lora_up multiplied by its first matching rule's
    scale (the module's alpha and lora_down are kept, so the product scales exactly)."""
    out = {}
    for key, value in state.items():
        module = key.split(".")[0]
        scale = next((s for pattern, s in rules if pattern.search(module)), 1.0)
        out[key] = value * scale if key.endswith("lora_up.weight") else value
    return out


def parse_schedule(text: str) -> list[tuple[int, float]]:
    """'0:1.5,6:1' -> [(0, 1.5), (6, 1.0)], sorted; it must say what happens from step 0."""
    points = sorted((int(step), float(weight)) for step, weight in
                    (item.split(":") for item in text.split(",")))
    if not points or points[0][0] != 0:
        raise ValueError(f"schedule {text!r}: must start at step 0")
    return points


def weight_at(points: list[tuple[int, float]], step: int) -> float:
    return [w for s, w in points if s <= step][-1]


def weight_setter(points: list[tuple[int, float]]):
    """diffusers' callback_on_step_end that gives the adapter, after step i, step i + 1's weight
    (step 0's is the weight the LoRA is loaded at)."""
    def next_weight(pipe, i, t, kwargs):
        pipe.set_adapters([TRIGGER], adapter_weights=[weight_at(points, i + 1)])
        return kwargs
    return next_weight


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="a benchmarks/lora.py --out folder")
    p.add_argument("--scale", action="append", default=[], help="NAME=REGEX:S;REGEX:S")
    p.add_argument("--schedule", action="append", default=[], help="NAME=STEP:W,STEP:W")
    p.add_argument("--n", type=int, default=48, help="held-out prompts")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=2.0)
    p.add_argument("--out", type=Path, help="the report as JSON (default: RUN/ablate.json)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    from safetensors.torch import load_file, save_file

    from engines.training.sd_judge import load_judge

    scales = dict(s.split("=", 1) for s in args.scale)
    schedules = dict(s.split("=", 1) for s in args.schedule)
    if not scales and not schedules:
        scales, schedules = SCALES, SCHEDULES
    lora, embedding = args.run / "Lora" / f"{TRIGGER}.safetensors", args.run / "embeddings" / f"{TRIGGER}.safetensors"
    state, judge = load_file(str(lora)), load_judge()
    prompts, scenes = held_out_prompts(args.n, split=run_split(args.run))
    report = {"run": str(args.run), "n": args.n, "scale": {}, "schedule": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in scales.items():
            part = Path(tmp) / f"{TRIGGER}.safetensors"
            save_file(scaled(state, parse_rules(text)), str(part))
            images = generate_batched(prompts, part, args.steps, args.guidance, embedding)
            report["scale"][name] = {"rule": text, **judged(images, scenes, judge)}
            print(name, report["scale"][name], flush=True)
    for name, text in schedules.items():
        points = parse_schedule(text)
        images = generate_batched(prompts, lora, args.steps, args.guidance, embedding,
                                  weight_at(points, 0), on_step=weight_setter(points))
        report["schedule"][name] = {"weights": text, **judged(images, scenes, judge)}
        print(name, report["schedule"][name], flush=True)
    out = args.out or args.run / "ablate.json"
    out.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
