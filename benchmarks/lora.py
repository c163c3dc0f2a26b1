"""Does a LoRA trained here teach the embedded model a new concept that composes?

The embedded model (assets/sd-tiny) knows four shapes. This trains a LoRA (engines/training/
lora.py, the same code as the studio's "train_lora" job) on a few images of a shape it has
never seen, a ring, called by a trigger word, drawn only in some colours, positions and
backgrounds. It then generates, through the studio's own engine with `<lora:NAME:1>` in the
prompt, held-out prompts that put the trigger word with colours, positions and backgrounds the
LoRA never saw, and measures:

- concept rate: images in which a ring detector finds a ring (a shape with a background-
  coloured hole in its middle); the detector is checked on drawn rings and drawn other shapes,
  on rings through the VAE (the ceiling), and on the base model's images of the same prompts;
- known attributes: colour, background and position as the shipped judge
  (engines/training/sd_judge.py) reads them, on the same images.

The ring, its training images, the held-out prompts of each --split and the detector are in
benchmarks/lora_scenes.py.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/lora.py --batched-eval
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
sys.path[:] = [str(REPO)] + [p for p in sys.path if Path(p or ".").resolve() != REPO / "benchmarks"]

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.lora_scenes import (SPLITS, TRIGGER, draw, held_out_prompts, is_ring,  # noqa: E402
                                    judge_attributes, known_shape_prompts, ring_by, training_set)
from engines.diffusion.loading import RuntimeOptions  # noqa: E402
from engines.diffusion.lora import parse_tags  # noqa: E402
from engines.training.sd_data import BACKGROUNDS, COLOURS, POSITIONS, SHAPES  # noqa: E402

FP32 = RuntimeOptions(half_precision=False)  # on CUDA too: the same numbers as on the CPU
DEVICE = "cpu"  # --device: where the batched evaluation runs (the engine gets it directly)


def generate(engine, prompts: list[str], lora_dir: Path, steps: int, guidance: float,
             embedding_dir: Path | None = None) -> list:
    from engines.diffusion.engine import Txt2ImgParams

    if engine is None:  # --batched-eval
        tags = parse_tags(prompts[0])[1]
        weight = tags[0].unet_weight if tags else 1.0
        return generate_batched(prompts, lora_dir / f"{TRIGGER}.safetensors" if tags else None,
                                steps, guidance,
                                embedding_dir / f"{TRIGGER}.safetensors" if embedding_dir else None,
                                weight)

    images = []
    for i, prompt in enumerate(prompts):
        params = Txt2ImgParams(prompt=prompt, seed=100 + i, steps=steps, guidance_scale=guidance,
                               lora_dirs=(str(lora_dir),), preview_every=0,
                               embedding_dirs=(str(embedding_dir),) if embedding_dir else ())
        images += engine.generate(params).images
    return images


def _train(cfg, images, captions, args, report: dict):
    """Train on fresh copies of the embedded model (resumes from runs/.../run if interrupted),
    `--ensemble` runs merged as the studio's job does (engines/training/lora_ensemble.py)."""
    from engines.diffusion.engine import DiffusionEngine
    from engines.training.lora_ensemble import train_ensemble

    def fresh_pipe():
        trainer = DiffusionEngine("genstudio-tiny-sd", device=args.device, options=FP32)
        trainer.load()
        return trainer._pipes["txt2img"]
    started = time.perf_counter()
    result = train_ensemble(fresh_pipe, images, captions, cfg, args.ensemble, args.ensemble_gain,
                            args.out / "run", lambda pr: print(pr.message, flush=True) if pr.step % 50 == 0 else None)
    report["train_seconds"] = round(time.perf_counter() - started, 1)
    report["resumed_from"] = result.resumed_from
    return result


def generate_batched(prompts: list[str], lora: Path | None, steps: int, guidance: float,
                     embedding: Path | None = None, weight: float = 1.0, on_step=None) -> list:
    """The same prompts and seeds in one batched call of a plain diffusers pipeline with the
    LoRA loaded once (the engine loads and unloads it per image): for quick probes. `on_step`:
    diffusers' callback_on_step_end (benchmarks/lora_ablate.py changes the weight per step)."""
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    from engines.diffusion.loading import ALIASES, DEFAULT_MODEL

    pipe = StableDiffusionPipeline.from_pretrained(ALIASES[DEFAULT_MODEL], safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(
        pipe.scheduler.config, algorithm_type="dpmsolver++", solver_order=2)
    pipe.set_progress_bar_config(disable=True)
    pipe.to(DEVICE)
    if lora is not None:  # at the tag's weight (--lora-weight), as the engine applies it
        pipe.load_lora_weights(str(lora), adapter_name=TRIGGER)
        pipe.set_adapters([TRIGGER], adapter_weights=[weight])
    from safetensors.torch import load_file

    from engines.training.lora_text import encode, vector_table

    table = None
    if embedding is not None and embedding.exists():  # the trigger vectors, as A1111 puts them in
        table = vector_table(pipe, TRIGGER, load_file(str(embedding))["emb_params"])

    generators = [torch.Generator("cpu").manual_seed(100 + i) for i in range(len(prompts))]
    with torch.no_grad():
        cond = torch.cat([encode(pipe, parse_tags(q)[0].strip(), table)[0] for q in prompts])
        uncond = encode(pipe, "")[0].expand_as(cond)
        return pipe(prompt_embeds=cond, negative_prompt_embeds=uncond, num_inference_steps=steps,
                    guidance_scale=guidance, generator=generators, callback_on_step_end=on_step).images


def _prior_prompts(args) -> tuple[str, ...]:
    if args.prior_prompts == "captions":
        return ()
    shapes = {"all": SHAPES, "circles": ("circle",),
              "others": tuple(s for s in SHAPES if s != "circle")}[args.prior_prompts]
    return known_shape_prompts(args.prior, shapes=shapes)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--n", type=int, default=48, help="held-out prompts")
    p.add_argument("--split", choices=sorted(SPLITS), default="dark",
                   help="which backgrounds are trained and which held out (lora_scenes.SPLITS)")
    p.add_argument("--guidance", type=float, default=2.0)
    p.add_argument("--also-guidance", type=float, nargs="*", default=[],
                   help="judge the LoRA's images at these guidance scales as well")
    p.add_argument("--sample-steps", type=int, default=20)
    p.add_argument("--prior", type=int, default=0,
                   help="prior-preservation images the base model makes (0 = off)")
    p.add_argument("--prior-prompts", choices=["captions", "all", "circles", "others"],
                   default="all",
                   help="class prompts of the prior images: the training captions without the "
                        "trigger, known shapes (circles only, or all but circles) in every "
                        "colour/background/position")
    p.add_argument("--lora-weight", type=float, default=1.0)
    p.add_argument("--target", default="unet", help="unet | attention | cross_attention")
    p.add_argument("--trigger-vectors", type=int, default=1,
                   help="pivotal tuning: learn this many embedding vectors for the trigger word")
    p.add_argument("--templates", type=int, default=1, choices=(1, 2, 3),
                   help="caption phrasings per training image")
    p.add_argument("--text-encoder", action="store_true", help="a LoRA on the text encoder too")
    p.add_argument("--caption-dropout", type=float, default=0.1)
    p.add_argument("--batched-eval", action="store_true",
                   help="judge with a plain pipeline, LoRA loaded once (quick probes)")
    p.add_argument("--eval-only", action="store_true",
                   help="judge the LoRA already in --out (no training)")
    p.add_argument("--trigger-init", default="circle",
                   help="the word the trigger vectors start from (e.g. circle)")
    p.add_argument("--conv-rank", type=int, default=0, help="rank of the conv LoRA (0 = --rank)")
    p.add_argument("--background-weight", type=float, default=1.0,
                   help="loss weight outside each training image's subject (1 = no mask)")
    p.add_argument("--snr-gamma", type=float, default=0.0, help="min-SNR-γ weighting (0 = off)")
    p.add_argument("--snr-floor", type=float, default=0.0,
                   help="a floor under min-SNR-γ's weight (0 = plain min-SNR-γ)")
    p.add_argument("--stratified", action="store_true",
                   help="stratified timesteps: one per equal slice of the range in each batch")
    p.add_argument("--lora-dropout", type=float, default=0.0, help="peft's lora_dropout")
    p.add_argument("--ema-decay", type=float, default=0.0, help="average of the weights (0 = off)")
    p.add_argument("--lr-schedule", default="constant", help="constant | cosine | linear")
    p.add_argument("--warmup", type=int, default=0, help="steps of linear warm-up of the rate")
    p.add_argument("--seed", type=int, default=0, help="the training's random seed")
    p.add_argument("--ensemble", type=int, default=1, help="runs (seeds seed, seed+1...) merged")
    p.add_argument("--ensemble-gain", type=float, default=1.0, help="the merged runs' total weight")
    p.add_argument("--trigger-lr", type=float, default=5e-3, help="the trigger vectors' rate")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu | cuda: where it trains and generates (fp32)")
    p.add_argument("--out", type=Path, default=Path("runs/lora_bench"))
    p.add_argument("--grid", type=Path, default=Path("docs/images/lora_grid.png"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    global DEVICE
    DEVICE = args.device
    torch.backends.cudnn.allow_tf32 = False  # full fp32 convolutions on a GPU, as on the CPU
    from engines.diffusion.engine import DiffusionEngine
    from engines.training.lora import LoraTrainConfig, grid, save_kohya
    from engines.training.sd_judge import load_judge
    from engines.training.sd_vae_decoder import through_vae

    args.out.mkdir(parents=True, exist_ok=True)
    lora_dir = args.out / "Lora"
    report: dict = {"args": {k: str(v) for k, v in vars(args).items()}}
    # 1. The instrument: rings vs known shapes, drawn and through the VAE.
    rng = np.random.default_rng(0)
    rings = [draw("ring", c, b, p_, "large", rng) for c in COLOURS for b in BACKGROUNDS
             for p_ in POSITIONS if c != b][:120]
    others = [draw(s, c, b, p_, z, rng) for s in ("circle", "square", "triangle", "star")
              for c, b, p_, z in [("red", "white", "in the centre", "large"),
                                  ("blue", "pink", "at the top left", "small"),
                                  ("yellow", "black", "at the bottom right", "large")]]
    engine = DiffusionEngine("genstudio-tiny-sd", device=args.device, options=FP32)
    engine.load()
    vae = engine._pipes["txt2img"].vae
    through = through_vae(vae, rings)
    # the judge's own accuracy on drawn held-out rings: the ceiling for the known attributes
    prompts, scenes = held_out_prompts(args.n, split=args.split)
    drawn = [draw("ring", s.colour, s.background, s.position, s.size, rng) for s in scenes]
    report["judge_on_drawn_held_out_rings"] = judge_attributes(load_judge(), drawn, scenes)
    # ... and the held-out prompts' own rings through the VAE: the most a LoRA can score here
    report["detector"] = {k: np.mean([is_ring(i) for i in v]) for k, v in (
        ("drawn_rings", rings), ("drawn_other_shapes", others), ("rings_through_vae", through),
        ("held_out_rings_through_vae", through_vae(vae, drawn)))}
    print("detector", report["detector"], flush=True)
    # 2. Train (resumes from runs/.../run if interrupted).
    images, captions = training_set(args.images, templates=args.templates, split=args.split)
    grid(images[::args.templates][:8], 8).save(args.out / "training_images.png")
    cfg = LoraTrainConfig(trigger=TRIGGER, rank=args.rank, steps=args.steps, lr=args.lr,
                          batch=args.batch, seed=args.seed, trigger_lr=args.trigger_lr,
                          sample_every=max(100, args.steps // 4),
                          sample_guidance=args.guidance, prior_images=args.prior, target=args.target,
                          trigger_vectors=args.trigger_vectors, train_text_encoder=args.text_encoder,
                          caption_dropout=args.caption_dropout, trigger_init=args.trigger_init,
                          conv_rank=args.conv_rank, background_weight=args.background_weight,
                          snr_gamma=args.snr_gamma, snr_floor=args.snr_floor, stratified_timesteps=args.stratified,
                          lr_schedule=args.lr_schedule, warmup_steps=args.warmup,
                          lora_dropout=args.lora_dropout, ema_decay=args.ema_decay,
                          prior_prompts=_prior_prompts(args))
    embedding_dir = args.out / "embeddings"
    if not args.eval_only:
        result = _train(cfg, images, captions, args, report)
        save_kohya(result.state_dict, lora_dir / f"{TRIGGER}.safetensors", {"ss_output_name": TRIGGER})
    if not args.eval_only and result.trigger_vectors is not None:  # a textual-inversion embedding
        save_kohya({"emb_params": result.trigger_vectors.contiguous()},
                   embedding_dir / f"{TRIGGER}.safetensors", {})
    # 3. Held-out prompts with and without the LoRA, through the engine.
    engine = None if args.batched_eval else engine
    base = generate(engine, prompts, lora_dir, args.sample_steps, args.guidance)
    tuned = generate(engine, [f"{q} <lora:{TRIGGER}:{args.lora_weight:g}>" for q in prompts], lora_dir,
                     args.sample_steps, args.guidance, embedding_dir)
    rings = [is_ring(i) for i in tuned]
    report["held_out"] = {
        "base": {"concept": float(np.mean([is_ring(i) for i in base])),
                 **judge_attributes(load_judge(), base, scenes)},
        "lora": {"concept": float(np.mean(rings)), **judge_attributes(load_judge(), tuned, scenes),
                 "ring_by": ring_by(rings, scenes, args.split),
                 "missed": [f"{i}: {q}" for i, (q, r) in enumerate(zip(prompts, rings)) if not r]}}
    if args.trigger_init:  # the ceiling for "known attributes stay": the Like word itself
        like = generate(engine, [q.replace(TRIGGER, args.trigger_init) for q in prompts], lora_dir,
                        args.sample_steps, args.guidance)
        report["held_out"]["base_like_word"] = judge_attributes(load_judge(), like, scenes)
    for scale in args.also_guidance:
        more = generate(engine, [f"{q} <lora:{TRIGGER}:{args.lora_weight:g}>" for q in prompts],
                        lora_dir, args.sample_steps, scale, embedding_dir)
        report["held_out"][f"lora_guidance_{scale:g}"] = {
            "concept": float(np.mean([is_ring(i) for i in more])),
            **judge_attributes(load_judge(), more, scenes)}
    # 4. Known shapes still drawn with the LoRA file present but not in the prompt.
    circles = generate(engine, [q.replace(TRIGGER, "circle") for q in prompts[:16]], lora_dir,
                       args.sample_steps, args.guidance)
    report["circles_without_tag_ring_rate"] = float(np.mean([is_ring(i) for i in circles]))
    # ... and with the LoRA on but without its trigger word: does it turn every circle into a ring?
    circles_on = generate(engine, [q.replace(TRIGGER, "circle") + f" <lora:{TRIGGER}:1>"
                                   for q in prompts[:16]], lora_dir, args.sample_steps,
                          args.guidance, embedding_dir)
    report["circles_with_lora_ring_rate"] = float(np.mean([is_ring(i) for i in circles_on]))
    if not args.eval_only:
        report["final_loss"] = float(np.mean(result.losses[-50:]))
    print(json.dumps(report, indent=1, default=float), flush=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=1, default=float))
    args.grid.parent.mkdir(parents=True, exist_ok=True)
    grid(images[::args.templates][:8] + base[:8] + tuned[:16], 8).save(args.grid)
    return report


if __name__ == "__main__":
    main()
