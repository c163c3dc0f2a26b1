"""The diffusion recipes' optimiser step (engines/training/optim.py): warmup, clipping, EMA."""
from __future__ import annotations

import copy

import torch

from engines.training.optim import warmup_ema_step


def test_warmup_then_ema_follows_the_model() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    ema = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    step, rates = 0, []
    for _ in range(20):
        loss = torch.nn.functional.mse_loss(model(x), y)
        step = warmup_ema_step(opt, model, ema, loss, step, lr=0.1, warmup=10, ema_max=0.9)
        rates.append(opt.param_groups[0]["lr"])
    assert step == 20
    assert abs(rates[0] - 0.01) < 1e-12 and rates[9:] == [0.1] * 11  # linear warmup, then flat
    gap = max((pe - p).abs().max().item() for pe, p in zip(ema.parameters(), model.parameters()))
    assert 0 < gap < 0.5  # the EMA trails the model, close behind
