"""The optimiser steps the recipes here take: clear, backpropagate, clip, step, schedule (and
the diffusion recipes' warmup + EMA variant)."""
from __future__ import annotations

import time

import torch


def update(opt, sched, loss: torch.Tensor, clip_params=None, max_norm: float = 1.0) -> None:
    """One optimiser step on `loss` (gradients clipped to `max_norm` over `clip_params` when
    given), then one step of the learning-rate schedule."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip_params is not None:
        torch.nn.utils.clip_grad_norm_(clip_params, max_norm)
    opt.step()
    sched.step()


def warmup_ema_step(opt, model, ema, loss: torch.Tensor, step: int, lr: float, warmup: int,
                    ema_max: float) -> int:
    """The diffusion recipes' step (sd_unet.py, controlnet.py): linear learning-rate warmup over
    `warmup` steps, gradients clipped to 1, then `ema` follows `model` with a decay that grows
    towards `ema_max` (short runs are not dominated by the random start). Returns step + 1."""
    for group in opt.param_groups:
        group["lr"] = lr * min(1.0, (step + 1) / warmup)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    step += 1
    ema_follow(list(ema.parameters()), list(model.parameters()), warm_decay(step, ema_max))
    return step


def warm_decay(step: int, decay_max: float) -> float:
    """The EMA decay after `step` steps: (1 + step) / (10 + step), at most `decay_max`."""
    return min(decay_max, (1 + step) / (10 + step))


def ema_follow(shadow: list, params: list, decay: float) -> None:
    """shadow <- decay * shadow + (1 - decay) * params, tensor by tensor."""
    with torch.no_grad():
        for average, p in zip(shadow, params):
            average.lerp_(p.detach(), 1 - decay)


def save_checkpoint(path, **state) -> None:
    """torch.save beside `path`, then an atomic rename: a crash mid-save keeps the last one."""
    partial = path.with_suffix(".tmp")
    torch.save(state, partial)
    partial.replace(path)


def log_pace(step: int, loss: torch.Tensor, since: float, log, what: str = "step",
             every: int = 25) -> float:
    """Every `every` steps, log the loss and seconds per step since `since`; returns the time
    the next report counts from."""
    if step % every:
        return since
    log(f"{what} {step} loss {loss.item():.4f} {(time.time() - since) / every:.2f}s/step")
    return time.time()
