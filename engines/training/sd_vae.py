"""Stage 2 of the tiny SD recipe: an AutoencoderKL, 64 px RGB <-> 16 x 16 x 4 latents.

Narrow at full resolution (16 channels at 64 px) because these scenes are flat colours with a
few edges and every conv at 64 px is paid 16 times over compared with 16 px; no attention in the
mid block for the same reason. Plain L1 + MSE reconstruction with a tiny KL term, as SD's VAE
is trained minus the GAN and perceptual losses.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engines.training.optim import update


def build_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=64,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 64), layers_per_block=1, norm_num_groups=8,
        mid_block_add_attention=False,
    )


def to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


def train_vae(work: Path, images: np.ndarray, steps: int = 3000, batch: int = 16, seed: int = 0,
              resume: bool = True, log=print):
    """Trains with checkpoints in work/vae_ckpt.pt; returns the VAE with scaling_factor set."""
    torch.manual_seed(seed)
    vae = build_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=steps, pct_start=0.05)
    ckpt = work / "vae_ckpt.pt"
    start = 0
    if resume and ckpt.exists():
        state = torch.load(ckpt, map_location="cpu")
        vae.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        start = state["step"]
        log(f"vae resumed at step {start}")
    g = torch.Generator().manual_seed(seed + start)
    t0 = time.time()
    for step in range(start, steps):
        x = to_tensor(images[torch.randint(len(images), (batch,), generator=g).numpy()])
        dist = vae.encode(x).latent_dist
        recon = vae.decode(dist.sample(generator=g)).sample
        rec = F.l1_loss(recon, x) + F.mse_loss(recon, x)
        update(opt, sched, rec + 1e-6 * dist.kl().mean(), vae.parameters())
        if step % 50 == 0 or step == steps - 1:
            log(f"vae step {step} rec {rec.item():.4f} {time.time() - t0:.0f}s")
        if (step + 1) % 200 == 0 or step == steps - 1:
            torch.save({"model": vae.state_dict(), "opt": opt.state_dict(),
                        "sched": sched.state_dict(), "step": step + 1}, ckpt)
    vae.eval()
    set_scaling_factor(vae, images[:1000])
    return vae


@torch.no_grad()
def set_scaling_factor(vae, images: np.ndarray):
    """SD scales latents to unit variance before diffusion; the factor lives in the VAE config."""
    z = torch.cat([vae.encode(to_tensor(images[i : i + 100])).latent_dist.sample() for i in range(0, len(images), 100)])
    vae.register_to_config(scaling_factor=float(1.0 / z.std()))


@torch.no_grad()
def encode_all(vae, images: np.ndarray, batch: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """Latent means and standard deviations (unscaled) for the whole training set."""
    means, stds = [], []
    for i in range(0, len(images), batch):
        d = vae.encode(to_tensor(images[i : i + batch])).latent_dist
        means.append(d.mean)
        stds.append(d.std)
    return torch.cat(means), torch.cat(stds)


def object_weights(x: torch.Tensor, weight: float) -> torch.Tensor:
    """1 on the background, 1 + weight on the object: the object is a few percent of the pixels,
    so a plain loss learns the background and lets object colours drift (yellow came back
    orange, purple came back near-black after the first phase)."""
    border = torch.cat([x[:, :, 0], x[:, :, -1], x[:, :, :, 0], x[:, :, :, -1]], dim=2)
    bg = border.median(dim=2).values[:, :, None, None]
    mask = ((x - bg).abs().sum(1, keepdim=True) > 0.15).float()
    return 1 + weight * mask


def finetune_vae(work: Path, vae, images: np.ndarray, steps: int = 600, batch: int = 8, weight: float = 8.0,
                 seed: int = 1, log=print):
    """Phase 2: the whole VAE again, object pixels weighted, lr annealed from 5e-4."""
    torch.manual_seed(seed)
    vae.train().requires_grad_(True)
    opt = torch.optim.AdamW(vae.parameters(), lr=5e-4, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    g = torch.Generator().manual_seed(seed)
    t0 = time.time()
    for step in range(steps):
        x = to_tensor(images[torch.randint(len(images), (batch,), generator=g).numpy()])
        w = object_weights(x, weight)
        dist = vae.encode(x).latent_dist
        recon = vae.decode(dist.sample(generator=g)).sample
        rec = (w * ((recon - x).abs() + (recon - x) ** 2)).mean() / w.mean()
        update(opt, sched, rec + 1e-6 * dist.kl().mean(), vae.parameters())
        if step % 50 == 0 or step == steps - 1:
            log(f"vae finetune step {step} weighted rec {rec.item():.4f} {time.time() - t0:.0f}s")
    vae.eval().requires_grad_(False)
    set_scaling_factor(vae, images[:1000])
    return vae
