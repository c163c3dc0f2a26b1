"""An exponential moving average of a LoRA run's trained weights (engines/training/lora.py).

With a constant rate the last step's weights carry that step's noise; the average over the
last ~1 / (1 - decay) steps is what gets saved and sampled (diffusers' train scripts'
`--use_ema`, here on the LoRA weights and trigger vectors only, so it costs a copy of them).
The average is kept in float32 on the weights' device and saved in the run's checkpoint.
"""
from __future__ import annotations

from contextlib import contextmanager


def start(params: list) -> list:
    return [p.detach().clone() for p in params]


def update(shadow: list, params: list, decay: float, step: int) -> None:
    """shadow <- decay * shadow + (1 - decay) * params, the decay warmed up as the diffusion
    recipes' (optim.warm_decay) so the first steps are not held at the random initial weights."""
    from engines.training.optim import ema_follow, warm_decay

    ema_follow(shadow, params, warm_decay(step, decay))


def copy_into(params: list, shadow: list) -> None:
    import torch

    with torch.no_grad():
        for p, average in zip(params, shadow):
            p.copy_(average)


@contextmanager
def swapped_in(params: list, shadow: list | None):
    """The averaged weights in place of the live ones for the block (samples), then back."""
    if shadow is None:
        yield
        return
    live = start(params)
    copy_into(params, shadow)
    try:
        yield
    finally:
        copy_into(params, live)
