"""Opt-in approximations that make large images faster: token merging (below) and a
DeepCache-style step cache (`set_step_cache`, at the end of this file).

Token merging (ToMe for Stable Diffusion, Bolya & Hoffman 2023) is a diffusers attention
processor.

At the UNet's full-resolution level (64x64 = 4,096 latent tokens at 512 px) self-attention costs
N^2: on a CPU it is the largest single cost of a step. Before that self-attention, `ratio` of the
tokens are merged into similar ones (bipartite soft matching: each 2x2 window keeps one
destination token; the most similar other tokens are averaged into their best destination),
attention runs on the rest, and the result is copied back to every merged position. As in the
paper's recommended setting (and A1111's "Token merging ratio"), only self-attention at the
highest resolution is merged; cross-attention and MLPs are untouched. Destinations are fixed
(no randomness), so a seed still reproduces exactly.
"""
from __future__ import annotations

import torch

from engines.base import ParamError


def bipartite_merge(x: torch.Tensor, height: int, width: int, ratio: float):
    """Returns (merge, unmerge) functions for tokens x (B, N=height*width, C)."""
    b, n, c = x.shape
    # 1. Destinations: the top-left token of every 2x2 window; sources: the other three.
    grid = torch.arange(n, device=x.device).view(height, width)
    is_dst = torch.zeros(height, width, dtype=torch.bool, device=x.device)
    is_dst[::2, ::2] = True
    dst_pos, src_pos = grid[is_dst], grid[~is_dst]
    r = min(int(n * ratio), src_pos.numel())
    if r <= 0:
        return (lambda t: t), (lambda t: t)
    # 2. Each source's most similar destination (cosine); the r most similar sources merge.
    metric = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    scores = metric[:, src_pos] @ metric[:, dst_pos].transpose(1, 2)
    best, best_dst = scores.max(dim=-1)
    order = best.argsort(dim=-1, descending=True)
    merged_src, kept_src = order[:, :r], order[:, r:]
    target = best_dst.gather(1, merged_src)  # destination index of each merged source

    def merge(t: torch.Tensor) -> torch.Tensor:
        src, dst = t[:, src_pos], t[:, dst_pos]
        channels = t.shape[-1]
        kept = src.gather(1, kept_src[..., None].expand(-1, -1, channels))
        moving = src.gather(1, merged_src[..., None].expand(-1, -1, channels))
        dst = dst.scatter_reduce(1, target[..., None].expand(-1, -1, channels), moving,
                                 reduce="mean", include_self=True)
        return torch.cat([kept, dst], dim=1)

    def unmerge(t: torch.Tensor) -> torch.Tensor:
        channels = t.shape[-1]
        kept, dst = t[:, :kept_src.shape[1]], t[:, kept_src.shape[1]:]
        out = t.new_empty(t.shape[0], n, channels)
        out[:, dst_pos] = dst
        src = t.new_empty(t.shape[0], src_pos.numel(), channels)
        src.scatter_(1, kept_src[..., None].expand(-1, -1, channels), kept)
        src.scatter_(1, merged_src[..., None].expand(-1, -1, channels),
                     dst.gather(1, target[..., None].expand(-1, -1, channels)))
        out[:, src_pos] = src
        return out

    return merge, unmerge


class TokenMergingProcessor:
    """Wraps diffusers' SDPA processor; merges tokens for self-attention at full resolution."""

    def __init__(self, ratio: float, latent_size: list) -> None:
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.ratio = ratio
        self.latent_size = latent_size  # [height, width] of the UNet input, set by a hook
        self.base = AttnProcessor2_0()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 temb=None, *args, **kwargs):
        h, w = self.latent_size or (0, 0)
        if (encoder_hidden_states is not None or hidden_states.ndim != 3
                or hidden_states.shape[1] != h * w or h % 2 or w % 2):
            return self.base(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        merge, unmerge = bipartite_merge(hidden_states, h, w, self.ratio)
        return unmerge(self.base(attn, merge(hidden_states), None, attention_mask, temb))


def set_token_merging(unet, ratio: float) -> None:
    """Turn token merging on (0 < ratio <= 0.75) or off (0) for this UNet."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    # The hook goes on whatever the pipeline calls (a torch.compile wrapper runs hooks eagerly),
    # the processors on the real module.
    inner = getattr(unet, "_orig_mod", unet)
    state = getattr(inner, "_genstudio_tome", None)
    if state is None:
        latent_size: list = []

        def remember_size(_module, args, kwargs):
            sample = args[0] if args else kwargs["sample"]
            latent_size[:] = [sample.shape[-2], sample.shape[-1]]

        unet.register_forward_pre_hook(remember_size, with_kwargs=True)
        state = inner._genstudio_tome = {"ratio": 0.0, "size": latent_size}
    if state["ratio"] == ratio:
        return
    processors = {}
    for name in inner.attn_processors:
        self_attention = name.endswith("attn1.processor")
        processors[name] = (TokenMergingProcessor(ratio, state["size"])
                            if ratio > 0 and self_attention else AttnProcessor2_0())
    inner.set_attn_processor(processors)
    state["ratio"] = ratio


# ---------------------------------------------------------------- step cache (DeepCache-style)
class StepCache:
    """Feature reuse across denoising steps (DeepCache, Ma et al. 2024): the UNet's deep blocks
    change slowly from one step to the next, so every `interval`-th call runs the whole UNet and
    the calls between run only the shallowest level (conv_in, the first down block, the last up
    block, conv_out), taking the deep blocks' outputs from the last full call. An opt-in
    approximation: images change slightly; a seed still reproduces exactly.

    Mechanism: each deep block's forward is wrapped to store its output on a full call and to
    return the stored output (without computing) on a cached call; the UNet's own forward runs
    unchanged around them, so its skip connections stay right."""

    def __init__(self) -> None:
        self.interval = 0
        self.calls = 0
        self.outputs: dict[str, object] = {}

    def reset(self, interval: int) -> None:
        """Before each pipeline run: the first call of a run is always a full one."""
        self.interval, self.calls = interval, 0
        self.outputs.clear()

    @property
    def reuse(self) -> bool:
        return self.interval > 1 and (self.calls - 1) % self.interval != 0


def set_step_cache(unet, interval: int) -> None:
    """Full UNet every `interval` calls (0 or 1 = off, exact); installs the wrappers once."""
    inner = getattr(unet, "_orig_mod", unet)
    if interval > 1 and inner is not unet:
        raise ParamError("step_cache", "`step_cache` does not combine with torch.compile (GENSTUDIO_COMPILE); "
                         "set one or the other")
    cache = getattr(inner, "_genstudio_step_cache", None)
    if cache is None:
        if interval <= 1:
            return
        cache = inner._genstudio_step_cache = StepCache()

        def count_call(_module, _args, _kwargs):
            cache.calls += 1

        inner.register_forward_pre_hook(count_call, with_kwargs=True)
        deep = ([(f"down{i}", b) for i, b in enumerate(inner.down_blocks) if i > 0]
                + [("mid", inner.mid_block)]
                + [(f"up{i}", b) for i, b in enumerate(inner.up_blocks[:-1])])
        for key, block in deep:
            if block is not None:
                block.forward = _cached_forward(block.forward, key, cache)
    cache.reset(interval)


def _cached_forward(forward, key: str, cache: StepCache):
    def run(*args, **kwargs):
        if cache.reuse and key in cache.outputs:
            return cache.outputs[key]
        output = forward(*args, **kwargs)
        if cache.interval > 1:
            cache.outputs[key] = output
        return output

    return run
