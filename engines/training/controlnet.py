"""The embedded ControlNet: a canny-edge ControlNet for assets/sd-tiny, resumable and logged.

    python -m engines.training.controlnet --out assets/controlnet/sd-tiny-canny [--resume] [--minutes 50]

`ControlNetModel.from_unet` copies the tiny UNet's encoder; only the ControlNet trains (UNet,
VAE and text encoder frozen), on procedural scenes, their canny maps and captions that often
name another shape and position than the map shows (engines/training/controlnet_data.py), so
the map wins over the prompt. Outputs under --work (default runs/controlnet, git-ignored): the
data cache, log.txt, ckpt.pt every `ckpt_every` steps. Every `eval_every` steps the EMA weights
generate fixed conflicting cases (seen triples only) through a real
StableDiffusionControlNetPipeline; the judge reads them and the best is exported to --out as an
fp16 diffusers folder. Chosen by judged follow rate, not by loss.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: spinning threads starve a shared CPU

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from .controlnet_data import follow_cases, make_control_dataset, training_caption  # noqa: E402
from .sd_data import ATTRIBUTES, CHOICES, Scene  # noqa: E402
from .sd_judge import SHIPPED_JUDGE, load_judge, predict  # noqa: E402
from .optim import log_pace, save_checkpoint, warmup_ema_step  # noqa: E402
from .recipe_cli import open_run, recipe_parser  # noqa: E402
from .sd_text import tokenize  # noqa: E402

BASE = Path(__file__).resolve().parents[2] / "assets" / "sd-tiny"


@dataclass
class CNConfig:
    batch: int = 16  # 0.7 s/step on a loaded 2-core CPU (32: 1.6 s); more steps beat bigger batches here
    lr: float = 3e-4  # the tiny UNet trained at 1e-3; SD-sized ControlNets use 1e-5
    warmup: int = 50
    ema_max: float = 0.995  # decay ramps up to this ((1 + n) / (10 + n)); a short run needs a short EMA
    min_snr_gamma: float = 5.0  # the UNet's weighting (sd_unet.py), kept so the loss scale matches
    # Latent pixels near the map's edges weigh 1 + edge_weight. A star and a circle differ in a few
    # pixels, a wrong position in many: unweighted, position followed the map after 200 steps and
    # shape stayed at 0.2-0.3 for 800 (run 1); the edge ring is where shape lives.
    edge_weight: float = 4.0
    noise_offset: float = 0.05
    n_images: int = 12000
    eval_every: int = 200
    eval_cases: int = 32  # conflicting cases on seen triples; the benchmark uses held-out ones
    eval_steps: int = 12
    guidance: float = 2.0  # the base model's shipped default
    ckpt_every: int = 50


def build_controlnet(unet):
    """ControlNetModel.from_unet with two fixes for this UNet: the control image is 4x the latent
    size (VAE factor 4, not 8), so the conditioning embedding has two stride-2 stages; and
    from_unet does not carry `addition_embed_type_num_heads` (4 here, 64 by default), which
    would silently change the copied text-pooling attention."""
    from diffusers import ControlNetModel

    cn = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32, 32))
    # As a keyword: in a config dict, a key listed in `_use_default_values` is reset to the default.
    fixed = ControlNetModel.from_config(cn.config, addition_embed_type_num_heads=unet.config.addition_embed_type_num_heads)
    fixed.load_state_dict(cn.state_dict())
    return fixed


def load_base(base: Path = BASE):
    """The frozen parts of sd-tiny: unet, vae, text encoder, tokenizer, scheduler."""
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    parts = {
        "unet": UNet2DConditionModel.from_pretrained(base / "unet"),
        "vae": AutoencoderKL.from_pretrained(base / "vae"),
        "text_encoder": CLIPTextModel.from_pretrained(base / "text_encoder"),
        "tokenizer": CLIPTokenizer.from_pretrained(base / "tokenizer"),
        "scheduler": DPMSolverMultistepScheduler.from_pretrained(base / "scheduler"),
    }
    for name in ("unet", "vae", "text_encoder"):
        parts[name].eval().requires_grad_(False)
    return parts


def make_pipeline(base: dict, controlnet):
    from diffusers import StableDiffusionControlNetPipeline

    pipe = StableDiffusionControlNetPipeline(**base, controlnet=controlnet, safety_checker=None,
                                             feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def generate(pipe, cases: list, steps: int, guidance: float, seed: int = 0, batch: int = 32,
             controlled: bool = True) -> list:
    """One image per case, seeded by its index. controlled=False: the plain model, no map."""
    images = []
    for i in range(0, len(cases), batch):
        chunk = cases[i : i + batch]
        gens = [torch.Generator().manual_seed(seed + j) for j in range(i, i + len(chunk))]
        kw = dict(prompt=[c.prompt.caption() for c in chunk], num_inference_steps=steps,
                  guidance_scale=guidance, generator=gens, height=64, width=64)
        if controlled:
            images += pipe(image=[c.image for c in chunk], **kw).images
        else:
            images += pipe(**kw).images
    return images


def score(judge, images: list, cases: list) -> dict[str, float]:
    """follow: shape AND position read off the image are the map's; shape/position: each alone,
    against the map; colour/background: against the prompt; prompt_layout: shape and position
    are the prompt's instead (the failure the ControlNet must prevent)."""
    pred = predict(judge, images)
    hit = lambda a, which: np.array([pred[a][i] == getattr(c, which).labels()[a] for i, c in enumerate(cases)])
    shape, position = hit("shape", "control"), hit("position", "control")
    return {"follow": float((shape & position).mean()), "shape": float(shape.mean()),
            "position": float(position.mean()), "colour": float(hit("colour", "prompt").mean()),
            "background": float(hit("background", "prompt").mean()),
            "prompt_layout": float((hit("shape", "prompt") & hit("position", "prompt")).mean())}


def headline(s: dict) -> float:
    """Selection metric: shape and position from the map, colour and background from the prompt."""
    return (s["shape"] + s["position"] + s["colour"] + s["background"]) / 4


def _data(work: Path, cfg: CNConfig, vae, log):
    """Training images' latents (mean, std), canny maps in [0, 1] and scenes, cached under work."""
    from .sd_vae import encode_all

    cache = work / "data.pt"
    if cache.exists():
        d = torch.load(cache)
    else:
        t0 = time.time()
        images, maps, scenes = make_control_dataset(cfg.n_images, seed=21)
        with torch.no_grad():
            mean, std = encode_all(vae, images)
        labels = torch.tensor([[s.labels()[a] for a in ATTRIBUTES] for s in scenes])
        d = {"mean": mean, "std": std, "maps": torch.from_numpy(maps), "labels": labels}
        torch.save(d, cache)
        log(f"data: {len(images)} scenes, canny maps and latents in {time.time() - t0:.0f}s")
    scenes = [Scene(*[CHOICES[a][j] for a, j in zip(ATTRIBUTES, row)]) for row in d["labels"].tolist()]
    return (d["mean"], d["std"]), d["maps"], scenes


def _batch_loss(cn, base, sched, snr, data, cfg: CNConfig, g: torch.Generator, rng) -> torch.Tensor:
    # 1. A batch: latents, canny maps, captions by CAPTION_MODES, noise, timesteps.
    (mean, std), maps, scenes = data
    idx = torch.randint(len(scenes), (cfg.batch,), generator=g)
    x0 = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=g)) * base["vae"].config.scaling_factor
    control = (maps[idx].float() / 255)[:, None].expand(-1, 3, -1, -1)
    captions = [training_caption(scenes[i], rng) for i in idx.tolist()]
    with torch.no_grad():
        cond = base["text_encoder"](tokenize(base["tokenizer"], captions)).last_hidden_state
    noise = torch.randn(x0.shape, generator=g) + cfg.noise_offset * torch.randn(x0.shape[0], x0.shape[1], 1, 1, generator=g)
    t = torch.randint(0, 1000, (cfg.batch,), generator=g)
    xt = sched.add_noise(x0, noise, t)
    # 2. ControlNet residuals into the frozen UNet; v target, min-SNR weights as in sd_unet.py.
    down, mid = cn(xt, t, encoder_hidden_states=cond, controlnet_cond=control, return_dict=False)
    pred = base["unet"](xt, t, encoder_hidden_states=cond, down_block_additional_residuals=down,
                        mid_block_additional_residual=mid).sample
    target, w = sched.get_velocity(x0, noise, t), torch.clamp(snr[t] + 1, max=cfg.min_snr_gamma) / (snr[t] + 1)
    # Edge ring at latent size: any edge in a 4 x 4 pixel cell, grown by one latent pixel.
    ring = F.max_pool2d(F.max_pool2d(control[:, :1], 4), 3, stride=1, padding=1)
    err = F.mse_loss(pred, target, reduction="none") * (1 + cfg.edge_weight * ring)
    return (w * err.mean(dim=(1, 2, 3))).mean()


MODEL_CARD = """# sd-tiny-canny

A canny-edge ControlNet (diffusers `ControlNetModel`, fp16) for the embedded `assets/sd-tiny`,
trained offline by `engines/training/controlnet.py` on procedural scenes and the studio's own
canny preprocessor (thresholds 100 / 200, `engines/diffusion/control_maps.py`). The map decides
shape and position; the prompt decides colour and background. 64 x 64 px, white edges on black.
Training run and measured follow rate: docs/diffusion.md (ControlNet). Licence: the project's
(Apache-2.0).
"""


def export(out: Path, ema, info: dict):
    """fp16 diffusers folder, written beside `out` and swapped in (readers never see half)."""
    tmp, old = out.with_name(out.name + ".tmp"), out.with_name(out.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    copy.deepcopy(ema).to(torch.float16).save_pretrained(tmp, safe_serialization=True)
    (tmp / "training_info.json").write_text(json.dumps(info, indent=2) + "\n")
    readme = out / "README.md"  # a hand-edited card (with measured figures) survives re-exports
    (tmp / "README.md").write_text(readme.read_text() if readme.exists() else MODEL_CARD)
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def _evaluate(cn_eval, base, judge, cases, cfg: CNConfig) -> dict:
    pipe = make_pipeline(base, cn_eval)
    return score(judge, generate(pipe, cases, cfg.eval_steps, cfg.guidance), cases)


def train(work: Path, out: Path, minutes: float, max_steps: int, resume: bool, cfg: CNConfig, log,
          init: Path | None = None):
    from diffusers import ControlNetModel, DDPMScheduler

    torch.manual_seed(0)
    base = load_base()
    judge = load_judge(SHIPPED_JUDGE)
    data = _data(work, cfg, base["vae"], log)
    cn = build_controlnet(base["unet"]).train()
    if init is not None:  # fine-tune an exported ControlNet (e.g. after the VAE's decoder changed)
        cn.load_state_dict(ControlNetModel.from_pretrained(init, torch_dtype=torch.float32).state_dict())
    ema = copy.deepcopy(cn).requires_grad_(False).eval()
    sched = DDPMScheduler.from_config(base["scheduler"].config)  # same betas, v-prediction
    snr = sched.alphas_cumprod / (1 - sched.alphas_cumprod)
    opt = torch.optim.AdamW(cn.parameters(), lr=cfg.lr, weight_decay=0.0)
    ckpt, best_file = work / "ckpt.pt", work / "best.json"
    step, best = 0, -1.0
    if resume and ckpt.exists():
        state = torch.load(ckpt, map_location="cpu")
        cn.load_state_dict(state["model"]), ema.load_state_dict(state["ema"]), opt.load_state_dict(state["opt"])
        step = state["step"]
        log(f"resumed at step {step}")
    if resume and best_file.exists():
        best = json.loads(best_file.read_text())["headline"]
    log(f"controlnet params {sum(p.numel() for p in cn.parameters())}, config {asdict(cfg)}")
    cases = follow_cases(cfg.eval_cases, "train", agree=False)
    if init is not None and best < 0:  # the start is the score to beat: export only improvements
        best = headline(_evaluate(ema, base, judge, cases, cfg))
        log(f"eval of {init}: headline {best:.3f}")
    g, rng = torch.Generator().manual_seed(step), np.random.default_rng(step)
    deadline, t0, t_last = time.time() + 60 * minutes, time.time(), time.time()
    while step < max_steps and time.time() < deadline:
        # 1-2. A batch and its loss, 3. update with warmup, clipping and EMA.
        loss = _batch_loss(cn, base, sched, snr, data, cfg, g, rng)
        step = warmup_ema_step(opt, cn, ema, loss, step, cfg.lr, cfg.warmup, cfg.ema_max)
        t_last = log_pace(step, loss, t_last, log)
        if step % cfg.ckpt_every == 0:
            save_checkpoint(ckpt, model=cn.state_dict(), ema=ema.state_dict(),
                            opt=opt.state_dict(), step=step)
        # 4. Judge the EMA weights on conflicting cases; export the best.
        if step % cfg.eval_every == 0:
            te = time.time()
            s = _evaluate(ema, base, judge, cases, cfg)
            h = headline(s)
            log(f"eval step {step} headline {h:.3f} {json.dumps(s)} ({time.time() - te:.0f}s)")
            if h > best:
                best = h
                info = {"step": step, "headline": h, "scores": s, "train_seconds": time.time() - t0,
                        "config": asdict(cfg)}
                export(out, ema, info)
                best_file.write_text(json.dumps(info, indent=2))
                log(f"exported step {step} to {out}")
            t_last = time.time()
    return step


def main(argv: list[str] | None = None):
    p = recipe_parser(__doc__, "assets/controlnet/sd-tiny-canny", "runs/controlnet", 50.0)
    p.add_argument("--steps", type=int, default=100_000, help="stop at this step")
    p.add_argument("--batch", type=int, default=CNConfig.batch)
    p.add_argument("--lr", type=float, default=CNConfig.lr)
    p.add_argument("--edge-weight", type=float, default=CNConfig.edge_weight)
    p.add_argument("--eval-cases", type=int, default=CNConfig.eval_cases)
    p.add_argument("--init", type=Path, help="start from this exported ControlNet folder")
    p.add_argument("--export-ckpt", type=Path, help="only export this ckpt.pt's EMA weights to --out")
    args = p.parse_args(argv)
    if args.export_ckpt:  # to score checkpoints apart (benchmarks/controlnet.py --split train)
        state = torch.load(args.export_ckpt, map_location="cpu")
        cn = build_controlnet(load_base()["unet"])
        cn.load_state_dict(state["ema"])
        export(args.out, cn, {"step": state["step"], "from": str(args.export_ckpt)})
        return
    log = open_run(args.work, args.threads)
    cfg = CNConfig(batch=args.batch, lr=args.lr, edge_weight=args.edge_weight, eval_cases=args.eval_cases)
    step = train(args.work, args.out, args.minutes, args.steps, args.resume, cfg, log, args.init)
    log(f"stopped at step {step}; best model in {args.out}")


if __name__ == "__main__":
    main()
