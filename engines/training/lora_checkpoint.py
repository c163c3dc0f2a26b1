"""A LoRA training run's checkpoint (engines/training/lora.py): the LoRA weights, the optimiser,
the random state, the losses and the settings, in `run_dir/checkpoint.pt` (tensors and plain
values only: it loads with weights_only=True). A run started again with the same settings
resumes there; different settings start afresh."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from engines.training import lora_text


def config_record(cfg) -> dict:
    """The settings a checkpoint was made with, as JSON would give them back."""
    return json.loads(json.dumps(asdict(cfg)))


def resume(session, checkpoint: Path, cfg) -> tuple[int, list]:
    """(step, losses) from this run's checkpoint when its settings match; else (0, [])."""
    import torch

    if not checkpoint.exists():
        return 0, []
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if json.loads(state["config"]) != config_record(cfg):
        return 0, []
    for part, module in session.trained.items():
        lora_text.load_lora_state(module, state["lora"][part])
    if session.vectors is not None:
        session.vectors.data.copy_(state["vectors"])
    if session.ema is not None:
        for average, saved in zip(session.ema, state["ema"]):
            average.copy_(saved)
    session.optimizer.load_state_dict(state["optimizer"])
    session.g.set_state(state["rng"])
    return int(state["step"]), state["losses"].tolist()


def save(path: Path, lora: dict, session, step: int, losses: list[float], cfg) -> None:
    """Write the checkpoint beside `path`, then rename: a crash mid-write leaves the previous
    checkpoint whole."""
    import torch

    state = {"lora": {part: {k: v.detach().cpu() for k, v in weights.items()}
                      for part, weights in lora.items()},
             "optimizer": session.optimizer.state_dict(), "rng": session.g.get_state(),
             "step": step, "losses": torch.tensor(losses),
             "config": json.dumps(config_record(cfg))}
    if session.vectors is not None:
        state["vectors"] = session.vectors.detach().cpu().clone()
    if session.ema is not None:
        state["ema"] = [t.detach().cpu().clone() for t in session.ema]
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
