"""Several LoRA runs on the same images, merged into one file (a "soup" of training seeds).

On a few images one training run's outcome depends on its seed more than on any setting (on the
embedded benchmark the new shape came in 35-90 % of held-out images from seed to seed,
docs/diffusion.md). Training `members` runs that differ only in their seed and adding their
weight changes, each at `gain / members`, keeps what the runs agree on and averages out what
one seed happened to learn; `gain` above 1 gives back the strength that averaging takes from
the parts they do not share.

The merge is exact and stays a plain LoRA: each module's lora_down matrices are stacked and its
lora_up matrices set side by side (scaled by their alpha / rank and the member's share), so
up @ down is the weighted sum of the members' changes, at rank `members x rank` and alpha =
that rank. A1111, ComfyUI and diffusers load it like any kohya file. Trigger vectors (pivotal
tuning) are averaged.

Each member trains in `run_dir/member-<k>` with its own checkpoint and, once done, leaves its
result there, so a cancelled or interrupted ensemble resumes at the member and step it reached.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Callable

from engines.base import CancelToken, ParamError, Progress, ProgressCallback, no_progress
from engines.training import lora, lora_text
from engines.training.lora import LoraTrainConfig, TrainResult, save_kohya
from engines.training.lora_checkpoint import config_record

RESULT = "result.safetensors"  # a finished member's LoRA (+ "trigger_vectors"), in its folder


def check(members, gain) -> None:
    if isinstance(members, bool) or not isinstance(members, int) or not 1 <= members <= 8:
        raise ParamError("ensemble", f"`ensemble` must be a whole number in 1..8, got {members!r}")
    if isinstance(gain, bool) or not isinstance(gain, (int, float)) or not 0.5 <= gain <= 2:
        raise ParamError("ensemble_gain", f"`ensemble_gain` must be between 0.5 and 2, got {gain!r}")


def merge(states: list[dict], gain: float = 1.0) -> dict:
    """kohya state dicts -> one whose every module's up @ down x alpha / rank is
    gain / len(states) x the sum of theirs (modules missing from a member count as zero)."""
    import torch

    share = gain / len(states)
    modules = dict.fromkeys(k[:-len(".lora_down.weight")] for s in states for k in s
                            if k.endswith(".lora_down.weight"))
    out = {}
    for module in modules:
        downs, ups = [], []
        for state in states:
            down = state.get(f"{module}.lora_down.weight")
            if down is None:
                continue
            alpha = state.get(f"{module}.alpha")
            scale = (float(alpha) if alpha is not None else down.shape[0]) / down.shape[0]
            downs.append(down)
            ups.append(state[f"{module}.lora_up.weight"] * (scale * share))
        out[f"{module}.lora_down.weight"] = torch.cat(downs, 0).contiguous()
        out[f"{module}.lora_up.weight"] = torch.cat(ups, 1).contiguous()
        out[f"{module}.alpha"] = torch.tensor(float(sum(d.shape[0] for d in downs)))
    return out


def average_vectors(vectors: list):
    """The members' trigger vectors (pivotal tuning) averaged; None when they have none."""
    return None if vectors[0] is None else sum(vectors) / len(vectors)


def train_ensemble(load_pipe: Callable, images, captions, cfg: LoraTrainConfig, members: int,
                   gain: float, run_dir: Path, on_progress: ProgressCallback = no_progress,
                   cancel: CancelToken | None = None) -> TrainResult:
    """`members` runs of train_lora with seeds cfg.seed, cfg.seed + 1, ..., each on a fresh
    pipeline from `load_pipe()` (an adapter, once injected, stays in the model), merged.
    With one member this is train_lora on one pipeline, its folder `run_dir` itself."""
    check(members, gain)
    if members == 1:
        return lora.train_lora(load_pipe(), images, captions, cfg, run_dir, on_progress, cancel)
    states, vectors, losses, seconds, resumed_from, preview = [], [], [], 0.0, None, None
    for k in range(members):
        folder, member = Path(run_dir) / f"member-{k}", replace(cfg, seed=cfg.seed + k)
        result = _finished(folder, member)
        if result is None:
            def progress(p: Progress, k=k) -> None:  # one bar over all members
                on_progress(Progress(k * cfg.steps + p.step, members * cfg.steps,
                                     f"run {k + 1}/{members}: {p.message}", p.preview))
            result = lora.train_lora(load_pipe(), images, captions, member, folder, progress, cancel)
            _keep(folder, result, member)
            if resumed_from is None:  # where this call started: earlier members were done
                resumed_from = k * cfg.steps + result.resumed_from
            preview = result.samples
        states.append(result.state_dict)
        vectors.append(result.trigger_vectors)
        losses += result.losses
        seconds += result.seconds
    merged, mean_vectors = merge(states, gain), average_vectors(vectors)
    if cfg.sample_every:  # what the user gets: the merged LoRA's samples
        preview = merged_samples(load_pipe(), merged, mean_vectors, cfg, captions)
    return TrainResult(merged, members * cfg.steps, losses, seconds, preview,
                       members * cfg.steps if resumed_from is None else resumed_from, mean_vectors,
                       {"members": members, "gain": gain})


def merged_samples(pipe, state: dict, vectors, cfg: LoraTrainConfig, captions: list[str]):
    """The sample grid of train_lora (same prompts, seeds and settings) from the merged LoRA,
    loaded as a user's file is, with the averaged trigger vectors put in."""
    pipe.load_lora_weights(dict(state), adapter_name="ensemble")
    table = (None if vectors is None
             else lora_text.vector_table(pipe, cfg.trigger, vectors.to(pipe.unet.device)))
    prompts = list(cfg.sample_prompts) or [cfg.trigger] + sorted(set(captions))[:3]
    side = cfg.resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor
    return lora.samples(pipe, prompts, cfg.sample_steps, cfg.sample_guidance, side, table)


def _keep(folder: Path, result: TrainResult, cfg: LoraTrainConfig) -> None:
    state = dict(result.state_dict)
    if result.trigger_vectors is not None:
        state["trigger_vectors"] = result.trigger_vectors.contiguous()
    save_kohya(state, folder / RESULT, {"seconds": result.seconds, "losses": json.dumps(result.losses),
                                        "config": json.dumps(config_record(cfg))})


def _finished(folder: Path, cfg: LoraTrainConfig) -> TrainResult | None:
    """A member that finished before a restart with these settings: its saved result (no
    samples). Other settings (the job started again with the same name, changed) train anew,
    as train_lora's checkpoint does."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = folder / RESULT
    if not path.exists():
        return None
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if json.loads(meta.get("config", "null")) != config_record(cfg):
        return None
    state = load_file(str(path))
    vectors = state.pop("trigger_vectors", None)
    losses = json.loads(meta.get("losses", "[]"))
    return TrainResult(state, len(losses), losses, float(meta.get("seconds", 0)), None, len(losses),
                       vectors)
