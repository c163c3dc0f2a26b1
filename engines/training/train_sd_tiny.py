"""The whole tiny Stable Diffusion recipe in one command, resumable stage by stage.

    python -m engines.training.train_sd_tiny --out assets/sd-tiny [--resume] [--minutes 90]

Stages (outputs under --work, default runs/sd_tiny, git-ignored):
  1. data   30,000 procedural training images (held-out combinations excluded), cached .npz
  2. judge  attribute classifier for checkpoint selection and the benchmark (judge.pt)
  3. clip   tokenizer + text encoder + image encoder, contrastive (stage_clip/)
  4. vae    AutoencoderKL 64 px -> 16 x 16 x 4, then object-weighted fine-tune (stage_vae/)
  5. unet   UNet on cached latents, frozen text encoder; every eval the EMA model is judged and
            the best is exported to --out as a diffusers folder (with clip_scorer/)
Stage 4b runs apart, after this command: engines/training/sd_vae_decoder.py trains a sharper
decoder on the same encoder; the shipped assets/sd-tiny/vae is its result, and the stage-4 VAE
is kept as assets/sd-tiny-vae-original (its input).
With --resume a stage whose output exists is skipped and the VAE and UNet continue from their
last checkpoint. Seeds are fixed; on a busy CPU the number of UNet steps reached within
--minutes varies, so pass --unet-steps for a run that ends at a fixed step.
"""
from __future__ import annotations

import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: spinning threads starve a shared CPU

import torch  # noqa: E402

from engines.training.recipe_cli import open_run, recipe_parser  # noqa: E402


def main(argv: list[str] | None = None):
    p = recipe_parser(__doc__, "assets/sd-tiny", "runs/sd_tiny", 90.0,
                      resume_help="skip finished stages, continue checkpoints")
    p.add_argument("--unet-steps", type=int, default=100_000)
    p.add_argument("--prediction-type", default="v_prediction", choices=["epsilon", "v_prediction"])
    p.add_argument("--vae-steps", type=int, default=1000)
    p.add_argument("--vae-finetune-steps", type=int, default=600)
    p.add_argument("--clip-steps", type=int, default=500)
    args = p.parse_args(argv)
    work = args.work
    log = open_run(work, args.threads)

    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, CLIPTokenizer

    from .sd_data import cached_dataset
    from .sd_judge import load_judge
    from .sd_text import train_clip
    from .sd_unet import UNetConfig, train_unet
    from .sd_vae import encode_all, finetune_vae, train_vae

    # 1. Data.
    images, scenes = cached_dataset(work / "data_train.npz", 30000, seed=1)
    log(f"data: {len(images)} training images")
    # 2. Judge.
    judge = load_judge(work / "judge.pt", log=log)
    # 3. Tokenizer + CLIP pair.
    clip_dir = work / "stage_clip"
    if not (args.resume and (clip_dir / "clip_scorer" / "config.json").exists()):
        train_clip(clip_dir, images, scenes, steps=args.clip_steps, log=log)
    tokenizer = CLIPTokenizer.from_pretrained(clip_dir / "tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(clip_dir / "text_encoder").eval().requires_grad_(False)
    # 4. VAE, then the latents of every training image.
    #    Phase 1 plain reconstruction, phase 2 with object pixels weighted (see finetune_vae).
    vae_dir, phase1_dir = work / "stage_vae", work / "stage_vae_phase1"
    if args.resume and (vae_dir / "config.json").exists():
        vae = AutoencoderKL.from_pretrained(vae_dir)
    else:
        if args.resume and (phase1_dir / "config.json").exists():
            vae = AutoencoderKL.from_pretrained(phase1_dir)
        else:
            vae = train_vae(work, images, steps=args.vae_steps, resume=args.resume, log=log)
            vae.save_pretrained(phase1_dir, safe_serialization=True)
        vae = finetune_vae(work, vae, images, steps=args.vae_finetune_steps, log=log)
        vae.save_pretrained(vae_dir, safe_serialization=True)
    vae = vae.eval().requires_grad_(False)
    lat_file = work / "latents.pt"
    if args.resume and lat_file.exists():
        latents = torch.load(lat_file)
    else:
        latents = encode_all(vae, images)
        torch.save(latents, lat_file)
    log(f"vae: scaling factor {vae.config.scaling_factor:.4f}, latents {tuple(latents[0].shape)}")
    # 5. UNet until the step or time budget runs out.
    deadline = time.time() + 60 * args.minutes
    _, _, step = train_unet(work, args.out, latents, scenes, vae, text_encoder, tokenizer, judge, clip_dir,
                            max_steps=args.unet_steps, deadline=deadline, resume=args.resume, log=log,
                            cfg=UNetConfig(prediction_type=args.prediction_type))
    log(f"unet stopped at step {step}; best model in {args.out}")


if __name__ == "__main__":
    main()
