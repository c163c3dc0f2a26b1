"""Where a LoRA step's loss looks and how hard each step pushes (engines/training/lora.py):

- subject masks: the loss weighted to the subject of each training image rather than to its
  flat background. The subject is what differs from the image's border colour, holes filled (a
  ring's hole is part of the ring's shape), taken to latent resolution and dilated by one latent
  pixel; outside it the loss counts `background_weight` times.
- min-SNR-γ weighting (Hang et al. 2023; diffusers' `--snr_gamma`): each sample's loss times
  min(SNR, γ) / SNR (epsilon) or / (SNR + 1) (v-prediction), so the almost-clean timesteps
  stop dominating and the steps where the shape is decided count more. For v-prediction that
  weight also falls towards 0 at the noisiest timesteps, where the image's colours are decided;
  `snr_floor` keeps a floor under it: floor + (1 - floor) x min-SNR's weight.
- the learning-rate schedule: constant, or a cosine / linear decay to 0 over the run, after an
  optional linear warm-up (diffusers' and kohya's `lr_warmup_steps`; on the embedded benchmark
  it kept the colours better, docs/diffusion.md run BQ). The rate is set from the step
  number each time (no scheduler state), so a resumed run continues it.
"""
from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np
from PIL import Image

from engines.base import ParamError

SCHEDULES = ("constant", "cosine", "linear")


def check(cfg) -> None:
    """The loss/schedule options of a LoraTrainConfig; ParamError naming the bad one."""
    for name, low, high in (("background_weight", 0.0, 1.0), ("snr_gamma", 0.0, 100.0),
                            ("snr_floor", 0.0, 1.0),
                            ("lora_dropout", 0.0, 0.9), ("ema_decay", 0.0, 0.9999)):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise ParamError(name, f"`{name}` must be a number in {low:g}..{high:g}, got {value!r}")
    for name in ("stratified_timesteps", "gradient_checkpointing"):
        if not isinstance(getattr(cfg, name), bool):
            raise ParamError(name, f"`{name}` must be true or false, got {getattr(cfg, name)!r}")
    if cfg.lr_schedule not in SCHEDULES:
        raise ParamError("lr_schedule", f"`lr_schedule` must be one of {', '.join(SCHEDULES)}, "
                         f"got {cfg.lr_schedule!r}")


def subject_masks(images: list[Image.Image], threshold: float = 60.0) -> np.ndarray:
    """N x H x W booleans: the pixels farther than `threshold` (RGB distance) from the median
    border colour, holes filled. An image with no such pixels is all subject (no weighting)."""
    from scipy import ndimage

    masks = []
    for image in images:
        a = np.asarray(image.convert("RGB")).astype(np.float32)
        border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
        fg = np.linalg.norm(a - np.median(border, axis=0), axis=2) > threshold
        masks.append(ndimage.binary_fill_holes(fg) if fg.any() else np.ones(fg.shape, bool))
    return np.stack(masks)


def latent_weights(masks: np.ndarray, latent_side: int, background_weight: float,
                   dilate: int = 1):
    """N x 1 x h x w loss weights: 1 on latent pixels that touch the subject (dilated by
    `dilate`), `background_weight` elsewhere."""
    import torch
    import torch.nn.functional as F

    m = torch.from_numpy(masks).float()[:, None]
    m = F.adaptive_max_pool2d(m, latent_side)  # any subject pixel in the cell counts
    if dilate:
        m = F.max_pool2d(m, 2 * dilate + 1, stride=1, padding=dilate)
    return background_weight + (1.0 - background_weight) * m


def snr_weights(scheduler, t, gamma: float, v_prediction: bool, floor: float = 0.0):
    """Per-sample min-SNR-γ weights for timesteps `t`, raised to at least `floor` as
    floor + (1 - floor) x weight (all ones when gamma is 0)."""
    import torch

    if not gamma:
        return torch.ones(len(t))
    from diffusers.training_utils import compute_snr

    snr = compute_snr(scheduler, t.cpu()).float()
    clipped = torch.minimum(snr, torch.full_like(snr, gamma))
    weights = clipped / (snr + 1) if v_prediction else clipped / snr
    return floor + (1.0 - floor) * weights


def timesteps(count: int, num_train_timesteps: int, generator, stratified: bool = False):
    """`count` training timesteps: uniform at random, or stratified (k-diffusion's
    `stratified_uniform`): one in each of `count` equal slices of the range, in random order,
    so every batch has as many noisy as nearly clean steps and the weighting above does not
    swing from batch to batch."""
    import torch

    if not stratified:
        return torch.randint(0, num_train_timesteps, (count,), generator=generator)
    offsets = torch.rand(count, generator=generator)
    slices = torch.randperm(count, generator=generator)
    return ((slices + offsets) * num_train_timesteps / count).long().clamp(max=num_train_timesteps - 1)


def weighted_mse(pred, target, pixel_weights=None, sample_weights=None):
    """Mean squared error, each sample's pixels weighted by `pixel_weights` (B x 1 x h x w,
    normalised so a sample's loss stays a mean) and each sample by `sample_weights` (B). With
    neither it is the plain mean."""
    err = (pred.float() - target.float()) ** 2
    if pixel_weights is None:
        per_sample = err.mean(dim=(1, 2, 3))
    else:
        w = pixel_weights.to(err.device, err.dtype).expand_as(err)
        per_sample = (err * w).sum(dim=(1, 2, 3)) / w.sum(dim=(1, 2, 3))
    if sample_weights is not None:
        per_sample = per_sample * sample_weights.to(per_sample.device, per_sample.dtype)
    return per_sample.mean()


def lr_factor(schedule: str, step: int, steps: int, warmup: int = 0) -> float:
    """The fraction of the base rate for step `step` (0-based) of `steps`: (step + 1) / warmup
    over the first `warmup` steps (no step at rate 0), then the schedule over the rest."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min((step - warmup) / max(steps - warmup, 1), 1.0)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "linear":
        return 1.0 - progress
    return 1.0


def set_lr(optimizer, schedule: str, step: int, steps: int, warmup: int = 0) -> None:
    """Each parameter group's rate = its `base_lr` times the schedule's factor for `step`."""
    factor = lr_factor(schedule, step, steps, warmup)
    for group in optimizer.param_groups:
        group["lr"] = group.setdefault("base_lr", group["lr"]) * factor


@contextmanager
def dropout_draws(seed: int, step: int, on: bool):
    """peft's LoRA dropout draws from torch's global random state, not from the run's generator:
    while `on`, that state is set from (seed, step) for the step and put back after it, so one
    seed is one run with dropout too and a resumed run draws what an uncut one would."""
    if not on:
        yield
        return
    import torch

    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if cuda else []):
        torch.manual_seed(seed * 1_000_003 + step)
        yield
