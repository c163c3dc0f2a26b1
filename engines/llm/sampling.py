"""Sampling settings and the transformers backend's sampler (llama.cpp samples itself)."""
from __future__ import annotations

from dataclasses import dataclass

REPEAT_LAST_N = 64  # the repetition penalty looks this far back (llama.cpp's default)


@dataclass(frozen=True)
class Sampling:
    temperature: float  # 0 = greedy
    top_p: float
    top_k: int  # 0 = off
    repetition_penalty: float  # 1 = off
    seed: int
    max_new_tokens: int


def sample_token(logits, history: list[int], sampling: Sampling, generator) -> int:
    """llama.cpp's sampler order: repetition penalty, then greedy or top-k, top-p, temperature."""
    import torch

    if sampling.repetition_penalty != 1.0 and history:
        recent = torch.tensor(sorted(set(history[-REPEAT_LAST_N:])), dtype=torch.long)
        chosen = logits[recent]
        logits[recent] = torch.where(chosen > 0, chosen / sampling.repetition_penalty,
                                     chosen * sampling.repetition_penalty)
    if sampling.temperature == 0:
        return int(torch.argmax(logits))
    if sampling.top_k > 0:
        kth = torch.topk(logits, min(sampling.top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p < 1.0:
        ordered, order = torch.sort(logits, descending=True)
        cumulative = torch.softmax(ordered, dim=-1).cumsum(dim=-1)
        drop = cumulative - torch.softmax(ordered, dim=-1) > sampling.top_p  # keep the first over
        logits = logits.index_fill(0, order[drop], float("-inf"))
    probs = torch.softmax(logits / sampling.temperature, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))
