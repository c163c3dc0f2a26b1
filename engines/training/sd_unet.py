"""Stage 3 of the tiny SD recipe: the UNet, trained on cached latents with a frozen text encoder.

Everything that does not change is computed once (VAE latents of the whole training set, text
states of every caption the generator can write), so a step costs only the UNet. Checkpoints
are chosen by the judge, not by the loss: every `eval_every` steps the EMA weights generate the
fixed evaluation prompts through a real StableDiffusionPipeline, and the best one is exported.
"""
from __future__ import annotations

import copy
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .sd_data import all_captions, eval_scenes
from .optim import log_pace, save_checkpoint, warmup_ema_step
from .sd_judge import accuracy
from .sd_text import tokenize


@dataclass
class UNetConfig:
    batch: int = 32
    lr: float = 1e-3
    warmup: int = 100
    ema_max: float = 0.998  # EMA decay ramps up to this ((1 + n) / (10 + n)); short runs need a short EMA
    caption_dropout: float = 0.1  # empty prompt this often, so classifier-free guidance works
    # v: at the noisiest steps the target is ~ -x0, so flat backgrounds are learned (epsilon
    # reached 0.25-0.38 background accuracy in 1,500 steps, v 0.83 in 300).
    prediction_type: str = "v_prediction"
    min_snr_gamma: float = 5.0  # down-weights nearly clean timesteps, which say nothing about layout
    noise_offset: float = 0.05  # lets flat backgrounds drift from mid-grey (SD's known bias)
    eval_every: int = 300
    eval_prompts: int = 24  # per split (seen and held-out)
    eval_steps: int = 12  # DPM++ 2M steps during training evals (the benchmark uses 20)
    guidance: float = 5.0
    ckpt_every: int = 100


def build_unet(cross_attention_dim: int):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64, 64), norm_num_groups=8,
        # No attention at 16 x 16: it doubled the step time in the probe. Layout and shape
        # come from cross-attention at 8 x 8 and 4 x 4.
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim, attention_head_dim=4,
        # A pooled caption added to the time embedding reaches every ResNet block, the 16 x 16
        # ones too: colours and background are global, they need no attention.
        addition_embed_type="text", addition_embed_type_num_heads=4,
    )


def build_scheduler(prediction_type: str = "epsilon"):
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                         beta_end=0.012, prediction_type=prediction_type, clip_sample=False, steps_offset=1)


def make_pipeline(unet, vae, text_encoder, tokenizer, prediction_type: str = "epsilon"):
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    scheduler = DPMSolverMultistepScheduler.from_config(build_scheduler(prediction_type).config)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def generate(pipe, prompts: list[str], steps: int, guidance: float, seed: int = 0, batch: int = 48):
    images = []
    for i in range(0, len(prompts), batch):
        g = torch.Generator().manual_seed(seed + i)
        out = pipe(prompts[i : i + batch], num_inference_steps=steps, guidance_scale=guidance,
                   generator=g, height=64, width=64, output_type="pil")
        images += out.images
    return images


def evaluate(pipe, judge, n: int, steps: int, guidance: float) -> dict:
    scores = {}
    for split in ("train", "held_out"):
        scenes = eval_scenes(n, split)
        images = generate(pipe, [s.caption() for s in scenes], steps, guidance)
        scores["seen" if split == "train" else "held_out"] = accuracy(judge, images, scenes)
    return scores


def headline(scores: dict) -> float:
    """Selection metric: mean of the four scored attributes over seen and held-out prompts."""
    return float(np.mean([scores[s][a] for s in scores for a in ("shape", "colour", "background", "position")]))


MODEL_CARD = """# sd-tiny

A tiny Stable Diffusion (diffusers layout) trained offline by `engines/training/train_sd_tiny.py`
on procedural scenes: one shape (circle, square, triangle, star), 8 colours, small or large, 5
positions, 6 plain backgrounds. Native size 64 x 64; v-prediction; prompts cut at 32 tokens.
Suggested: DPM++ 2M (shipped), 20 steps, guidance_scale 2.0 (higher shifts colours).
`clip_scorer/` is the image side of the CLIP pair (see engines/diffusion/clip_score.py).
Recipe, measured adherence and limits: docs/sd-tiny.md.
"""


def export(out: Path, pipe, clip_dir: Path, info: dict):
    """Writes the folder next to `out` and swaps it in, so readers never see half a model."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    shutil.copytree(clip_dir / "clip_scorer", tmp / "clip_scorer")
    (tmp / "training_info.json").write_text(json.dumps(info, indent=2) + "\n")
    (tmp / "README.md").write_text(MODEL_CARD)
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


@torch.no_grad()
def text_cache(text_encoder, tokenizer) -> tuple[dict[str, int], torch.Tensor]:
    """last_hidden_state of "" (row 0) and of every caption, from the frozen text encoder."""
    captions = [""] + all_captions()
    states = torch.cat([text_encoder(tokenize(tokenizer, captions[i : i + 256])).last_hidden_state
                        for i in range(0, len(captions), 256)])
    return {c: i for i, c in enumerate(captions)}, states


def _resume(ckpt: Path, cfg: UNetConfig, unet, ema, opt, log) -> int:
    """Load a checkpoint into the models and optimiser; returns its step (0 without one)."""
    if not ckpt.exists():
        return 0
    state = torch.load(ckpt, map_location="cpu")
    if state.get("prediction_type", "epsilon") != cfg.prediction_type:
        raise ValueError(f"{ckpt} was trained with {state.get('prediction_type', 'epsilon')!r}, not "
                         f"{cfg.prediction_type!r}; move it away or pass a matching --prediction-type")
    unet.load_state_dict(state["model"])
    ema.load_state_dict(state["ema"])
    opt.load_state_dict(state["opt"])
    log(f"unet resumed at step {state['step']}")
    return state["step"]


def _batch_loss(unet, sched, snr, latents: tuple, sf: float, scenes: list, index: dict,
                states: torch.Tensor, cfg: UNetConfig, g: torch.Generator) -> torch.Tensor:
    # 1. A batch: sampled latents, captions (some empty), noise, timesteps.
    mean, std = latents
    idx = torch.randint(len(scenes), (cfg.batch,), generator=g)
    x0 = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=g)) * sf
    templates = torch.randint(3, (cfg.batch,), generator=g).tolist()
    drop = (torch.rand(cfg.batch, generator=g) < cfg.caption_dropout).tolist()
    rows = [0 if d else index[scenes[i].caption(t)] for i, t, d in zip(idx.tolist(), templates, drop)]
    cond = states[rows]
    noise = torch.randn(x0.shape, generator=g) + cfg.noise_offset * torch.randn(x0.shape[0], x0.shape[1], 1, 1, generator=g)
    t = torch.randint(0, 1000, (cfg.batch,), generator=g)
    xt = sched.add_noise(x0, noise, t)
    # 2. Loss with min-SNR weights. Epsilon: min(snr, g) / snr. For v the paper's
    #    min(snr, g) / (snr + 1) is ~0 at the noisiest steps (snr 0.005 at t = 999), exactly
    #    where v ~ -x0 teaches the global colours; min(snr + 1, g) / (snr + 1) keeps those at 1.
    pred = unet(xt, t, encoder_hidden_states=cond).sample
    if cfg.prediction_type == "epsilon":
        target, w = noise, torch.clamp(snr[t], max=cfg.min_snr_gamma) / snr[t]
    else:
        target, w = sched.get_velocity(x0, noise, t), torch.clamp(snr[t] + 1, max=cfg.min_snr_gamma) / (snr[t] + 1)
    return (w * F.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3))).mean()


def train_unet(work: Path, out: Path, latents: tuple, scenes: list, vae, text_encoder, tokenizer, judge,
               clip_dir: Path, max_steps: int, deadline: float, cfg: UNetConfig = UNetConfig(),
               seed: int = 0, resume: bool = True, log=print):
    """latents: (means, stds) unscaled, from sd_vae.encode_all. deadline: time.time() to stop by."""
    torch.manual_seed(seed)
    sf = vae.config.scaling_factor
    index, states = text_cache(text_encoder, tokenizer)
    unet = build_unet(text_encoder.config.hidden_size)
    ema = copy.deepcopy(unet).requires_grad_(False)
    sched = build_scheduler(cfg.prediction_type)
    alphas = sched.alphas_cumprod
    snr = alphas / (1 - alphas)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=0.0)
    ckpt, best_file = work / "unet_ckpt.pt", work / "unet_best.json"
    step, best = (_resume(ckpt, cfg, unet, ema, opt, log) if resume else 0), -1.0
    if resume and best_file.exists():
        best = json.loads(best_file.read_text())["headline"]
    log(f"unet params {sum(p.numel() for p in unet.parameters())}, config {asdict(cfg)}")
    g = torch.Generator().manual_seed(seed + step)
    t0, t_last = time.time(), time.time()
    while step < max_steps and time.time() < deadline:
        # 1-2. A batch and its min-SNR weighted loss.
        loss = _batch_loss(unet, sched, snr, latents, sf, scenes, index, states, cfg, g)
        # 3. Update with warmup, clipping and EMA.
        step = warmup_ema_step(opt, unet, ema, loss, step, cfg.lr, cfg.warmup, cfg.ema_max)
        t_last = log_pace(step, loss, t_last, log, what="unet step")
        if step % cfg.ckpt_every == 0:
            save_checkpoint(ckpt, model=unet.state_dict(), ema=ema.state_dict(),
                            opt=opt.state_dict(), step=step, prediction_type=cfg.prediction_type)
        # 4. Judge the EMA model; export it when it is the best so far.
        if step % cfg.eval_every == 0:
            te = time.time()
            pipe = make_pipeline(ema, vae, text_encoder, tokenizer, cfg.prediction_type)
            scores = evaluate(pipe, judge, cfg.eval_prompts, cfg.eval_steps, cfg.guidance)
            h = headline(scores)
            log(f"eval step {step} headline {h:.3f} {json.dumps(scores)} ({time.time() - te:.0f}s)")
            if h > best:
                best = h
                info = {"step": step, "headline": h, "scores": scores, "train_seconds": time.time() - t0}
                export(out, pipe, clip_dir, info)
                best_file.write_text(json.dumps(info, indent=2))
                log(f"exported step {step} to {out}")
            t_last = time.time()
    return unet, ema, step
