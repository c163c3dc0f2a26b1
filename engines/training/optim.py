"""The optimiser step every recipe here takes: clear, backpropagate, clip, step, schedule."""
from __future__ import annotations

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
