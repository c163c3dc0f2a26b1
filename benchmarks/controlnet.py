"""Follow rate of the embedded canny ControlNet: does the layout come from the map or the prompt?

Each held-out case is a canny map (the studio's "canny" preprocessor) of a scene with shape S at
position P, and a prompt that names ANOTHER shape and ANOTHER position (plus a colour and a
background, which the map does not carry). The judge (assets/sd-tiny-judge, as in
prompt_adherence.py) reads the generated image; a case "follows" when both shape and position
are the map's. Cases use only (shape, colour, background) triples no model saw in training, and
other seeds than the checkpoint selection. Rows: with the ControlNet and without it (the plain
sd-tiny, the same prompts and seeds), for a prompt that contradicts the map and one that agrees;
a reference row bounds what any model can score: the maps' own drawings through the VAE.

    python benchmarks/controlnet.py --n 96     # table; JSON to benchmarks/controlnet-results.json

A setting (sd-webui-controlnet's control mode, guidance, conditioning scale, control end) applies
to the ControlNet rows. `--setting-only` runs just the ControlNet row(s) for one setting and adds
them to the JSON's "settings" (the full run's rows stay):

    python benchmarks/controlnet.py --setting-only --control-mode "ControlNet is more important" --guidance 1.5
    # the three modes side by side (the rows of --n 2 go to a scratch JSON):
    python benchmarks/controlnet.py --setting-only --n 2 --json /tmp/x.json --modes-grid docs/images/controlnet_grid_modes.png
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
REPO = Path(__file__).resolve().parent.parent
# Run as `python benchmarks/<x>.py`, this folder comes first on sys.path and its queue.py would
# shadow the standard library's `queue` (torch imports it): put the repo root there instead.
sys.path[:] = [str(REPO)] + [p for p in sys.path if Path(p or ".").resolve() != REPO / "benchmarks"]

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from engines.diffusion.control_modes import BALANCED, CONTROL_MODES, controlnet_for_modes  # noqa: E402
from engines.training.controlnet import generate, score  # noqa: E402
from engines.training.controlnet_data import follow_cases  # noqa: E402
from engines.training.sd_judge import SHIPPED_JUDGE, load_judge  # noqa: E402
from engines.training.sd_vae_decoder import through_vae  # noqa: E402

COLUMNS = ("follow", "shape", "position", "colour", "background", "prompt_layout")


def load_pipelines(model: Path, controlnet: Path):
    """The ControlNet pipeline and the plain one, sharing every frozen part."""
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline, StableDiffusionPipeline

    # The file is fp16 (small to ship); CPU inference runs in float32.
    cn = ControlNetModel.from_pretrained(controlnet, torch_dtype=torch.float32)
    pipe = StableDiffusionControlNetPipeline.from_pretrained(
        model, controlnet=cn, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    parts = {k: v for k, v in pipe.components.items() if k != "controlnet"}
    plain = StableDiffusionPipeline(**parts)
    for p in (pipe, plain):
        p.set_progress_bar_config(disable=True)
    return pipe, plain


def steered(pipe, mode: str, scale: float, end: float, guidance: float):
    """`pipe` called as the studio calls it for one unit (engines/diffusion/controlnet.py's
    control_run): the control mode through control_modes.controlnet_for_modes, the unit's weight
    as conditioning scale, its end as control_guidance_end. generate() calls it like the pipe."""
    from diffusers import StableDiffusionControlNetPipeline

    guess, net = controlnet_for_modes([pipe.controlnet], [mode], cfg=guidance > 1)
    single = net is pipe.controlnet
    run = pipe if single else StableDiffusionControlNetPipeline.from_pipe(pipe, controlnet=net)
    run.set_progress_bar_config(disable=True)

    def call(image, **kw):
        # several nets (ModeControlNets): one list of per-net maps for each image of the batch
        return run(image=image if single else [[im] for im in image], guess_mode=guess,
                   controlnet_conditioning_scale=scale if single else [scale],
                   control_guidance_end=end, **kw)
    return call


def setting_name(args) -> str:
    steps = f", {args.steps} steps" if args.steps != 20 else ""
    seed = f", seed {args.seed}" if args.seed else ""
    return (f"{args.control_mode}, guidance {args.guidance:g}, scale {args.scale:g}, "
            f"end {args.end:g}{steps}{seed}")


def table(rows: dict[str, dict]) -> str:
    lines = ["| | " + " | ".join(COLUMNS) + " | s/image |", "|---" * (len(COLUMNS) + 2) + "|"]
    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{r[c]:.2f}" for c in COLUMNS) + f" | {r['seconds_per_image']:.2f} |")
    return "\n".join(lines)


def grid(columns: list[list[Image.Image]], cell: int = 96) -> Image.Image:
    """One column per list (map, with ControlNet, without), one row per case."""
    rows = len(columns[0])
    out = Image.new("RGB", (len(columns) * cell, rows * cell), "white")
    for c, col in enumerate(columns):
        for r, im in enumerate(col):
            out.paste(im.convert("RGB").resize((cell, cell), Image.Resampling.NEAREST), (c * cell, r * cell))
    return out


def write_json(args, head: str, rows: dict[str, dict]) -> None:
    """The full run replaces "setup" and "rows"; --setting-only adds its rows to "settings"."""
    old = json.loads(args.json.read_text()) if args.json.exists() else {}
    if args.setting_only:
        old["settings_setup"] = (
            f"ControlNet rows only, {args.n} held-out cases each; key: control mode, guidance, "
            "conditioning scale, control end (DPM++ 2M 20 steps and seed 0 unless named), "
            f"{args.threads} thread(s) on a shared machine")
        settings = old.setdefault("settings", {})
        for name, row in rows.items():
            settings[f"{setting_name(args)}: {name} ({args.n} cases)"] = row
    else:
        old.update(setup=head, rows=rows)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(old, indent=2) + "\n")


def modes_grid(pipe, args) -> Image.Image:
    """map | each control mode at weight 1 | "ControlNet is more important" at weight 2, for the
    first 8 contradicting held-out cases (the same seeds as the rows)."""
    cases = follow_cases(8, "held_out", agree=False)
    columns = [[c.image for c in cases]]
    for mode, scale in [(m, 1.0) for m in CONTROL_MODES] + [(CONTROL_MODES[2], 2.0)]:
        run = steered(pipe, mode, scale, args.end, args.guidance)
        columns.append(generate(run, cases, args.steps, args.guidance, args.seed))
    return grid(columns)


def main(argv: list[str] | None = None):
    p = argparse.ArgumentParser(description="follow rate of a ControlNet for the tiny SD")
    p.add_argument("--model", type=Path, default=REPO / "assets" / "sd-tiny")
    p.add_argument("--controlnet", type=Path, default=REPO / "assets" / "controlnet" / "sd-tiny-canny")
    p.add_argument("--judge", type=Path, default=SHIPPED_JUDGE)
    p.add_argument("--n", type=int, default=96, help="cases per row")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=2.0, help="sd-tiny's shipped default")
    p.add_argument("--control-mode", default=BALANCED, choices=CONTROL_MODES,
                   help="sd-webui-controlnet's control mode (the studio's default: Balanced)")
    p.add_argument("--scale", type=float, default=1.0, help="conditioning scale (the unit's weight)")
    p.add_argument("--end", type=float, default=1.0, help="control end, fraction of the steps")
    p.add_argument("--setting-only", action="store_true",
                   help="only the ControlNet rows, added to the JSON's 'settings'")
    p.add_argument("--agree", action="store_true",
                   help="with --setting-only: also the row where the prompt agrees with the map")
    p.add_argument("--seed", type=int, default=0)
    # Checkpoint selection scores seen triples ("train") with another case seed than the
    # recipe's own eval (5): --setting-only --split train --case-seed 6 --n 192.
    p.add_argument("--split", default="held_out", choices=["held_out", "train"])
    p.add_argument("--case-seed", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=REPO / "benchmarks" / "controlnet-results.json")
    p.add_argument("--grid", type=Path, default=None, help="PNG: map | with | without, 8 conflicting cases")
    p.add_argument("--modes-grid", type=Path, default=None,
                   help="PNG: map | Balanced | My prompt | ControlNet (weight 1, then 2), 8 cases")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    # 1. Instrument, pipelines, fixed held-out cases.
    judge = load_judge(args.judge, train_if_missing=False)
    pipe, plain = load_pipelines(args.model, args.controlnet)
    control = steered(pipe, args.control_mode, args.scale, args.end, args.guidance)
    rows, shown = {}, {}
    # 2. Generate and judge each row.
    runs = (("ControlNet", control, True),) if args.setting_only else (
        ("ControlNet", control, True), ("no ControlNet", plain, False))
    for agree in ((False, True) if args.agree or not args.setting_only else (False,)):
        cases = follow_cases(args.n, args.split, agree=agree, seed=args.case_seed)
        prompt = "agrees with" if agree else "contradicts"
        for name, pl, controlled in runs:
            t0 = time.time()
            images = generate(pl, cases, args.steps, args.guidance, args.seed, controlled=controlled)
            row = score(judge, images, cases)
            row["seconds_per_image"] = (time.time() - t0) / len(cases)
            rows[f"{name}, prompt {prompt} the map"] = row
            if not agree:
                shown[name] = images[:8]
            print(f"{name}, prompt {prompt} the map: {json.dumps(row)}", flush=True)
    if not args.setting_only:
        # The ceiling: the drawings the maps came from, through sd-tiny's VAE (blurs star points).
        t0 = time.time()
        row = score(judge, through_vae(pipe.vae, [c.picture for c in cases]), cases)
        rows["reference: the map's own drawing through the VAE"] = dict(
            row, seconds_per_image=(time.time() - t0) / len(cases))
    # 3. Report.
    info_file = args.controlnet / "training_info.json"
    info = json.loads(info_file.read_text()) if info_file.exists() else {}
    where = args.controlnet.relative_to(REPO) if args.controlnet.is_relative_to(REPO) else args.controlnet
    split = args.split.replace("_", "-")
    head = (f"ControlNet `{where}` (step {info.get('step', '?')}), {args.n} {split} cases per row, "
            f"DPM++ 2M {args.steps} steps, guidance {args.guidance:g}, control mode "
            f"{args.control_mode}, conditioning scale {args.scale:g}, control end {args.end:g}, "
            f"seed {args.seed}, {args.threads} thread(s)")
    print("\n" + head + "\n\n" + table(rows))
    write_json(args, head, rows)
    if args.grid:
        cases = follow_cases(8, "held_out", agree=False)
        args.grid.parent.mkdir(parents=True, exist_ok=True)
        columns = [[c.image for c in cases], shown["ControlNet"]]
        if "no ControlNet" in shown:
            columns.append(shown["no ControlNet"])
        grid(columns).save(args.grid)
    if args.modes_grid:
        args.modes_grid.parent.mkdir(parents=True, exist_ok=True)
        modes_grid(pipe, args).save(args.modes_grid)
    print(f"wrote {args.json}" + "".join(f" and {g}" for g in (args.grid, args.modes_grid) if g))


if __name__ == "__main__":
    main()
