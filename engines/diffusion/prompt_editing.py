"""Prompt editing, alternating words and composable `AND` during denoising, on diffusers' SD and
SDXL pipelines (the grammar is in prompt_schedule.py).

    steps, prompt, negative = step_prompts(pipe, prompt, negative, params.steps, encode)
    # steps None: plain texts, encoded as usual; otherwise, for each pipeline call:
    with composable_guidance(pipe, steps):
        pipe(**pipe_kwargs(steps, batch, on_step_end), ...)

1. Every distinct text of the schedules is encoded once (with A1111's weighting and chunking).
2. Prompt editing: diffusers' `callback_on_step_end` returns the next step's `prompt_embeds`
   (and SDXL's pooled `add_text_embeds`) whenever the schedule says so.
3. AND (composable diffusion, Liu et al. 2022, as A1111 combines it): for the block the UNet's
   forward is wrapped so that one call evaluates the negative prompt and every part, and
   returns [uncond, uncond + sum_i w_i (cond_i - uncond)]; the pipeline's own guidance step then
   gives uncond + scale * sum_i w_i (cond_i - uncond). The sampler stays diffusers'.

Lengths, as A1111: parts of an AND are padded to the longest by repeating their last vector
(`stack_conds`); prompt and negative prompt by the empty prompt's chunk (extras._pad_to).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from engines.diffusion.prompt_schedule import prompt_schedule, split_and, text_at


@dataclass
class StepPrompts:
    """The encoded prompts of one generation, and which of them each step uses."""
    encoded: list[tuple[Any, Any]]  # (states 1 x tokens x dim, pooled or None) per distinct text
    parts: list[tuple[list[tuple[int, int]], float]]  # AND parts: ([(end step, text)], weight)
    negative: list[tuple[int, int]]  # the negative prompt's [(end step, text)]
    empty: Any  # the empty prompt's states, to pad prompt and negative prompt to one length
    zero_negative: bool = False  # SDXL: an empty negative prompt is zeros (diffusers' rule)
    step: int = 0  # the step about to run; the step callback moves it on
    prompt_tokens: int = 0  # the longest text's token count (A1111's count)
    batch: int = 1  # images per pipeline call (pipe_kwargs)
    _cache: dict = field(default_factory=dict)

    @property
    def composable(self) -> bool:
        return len(self.parts) > 1 or self.parts[0][1] != 1.0

    def at(self, step: int) -> tuple[list[tuple[Any, Any]], tuple[Any, Any]]:
        """([(states, pooled) per part], (negative states, pooled)) for 0-based `step`."""
        key = (tuple(s[text_at(s, step)][1] for s, _ in self.parts),
               self.negative[text_at(self.negative, step)][1])
        if key not in self._cache:
            self._cache[key] = self._build(*key)
        return self._cache[key]

    def _build(self, part_texts: tuple[int, ...], negative_text: int):
        import torch

        conds = [self.encoded[t] for t in part_texts]
        longest = max(states.shape[1] for states, _ in conds)
        conds = [(_repeat_last(states, longest), pooled) for states, pooled in conds]
        if self.zero_negative:
            states, pooled = conds[0]
            uncond = (torch.zeros_like(states),
                      torch.zeros_like(pooled) if pooled is not None else None)
        else:
            uncond = self.encoded[negative_text]
        length = max(longest, uncond[0].shape[1])
        conds = [(_pad(states, length, self.empty), pooled) for states, pooled in conds]
        return conds, (_pad(uncond[0], length, self.empty), uncond[1])


def _repeat_last(states, length: int):
    import torch

    missing = length - states.shape[1]
    return states if missing <= 0 else torch.cat(
        [states, states[:, -1:].expand(-1, missing, -1)], dim=1)


def _pad(states, length: int, empty):
    import torch

    while states.shape[1] < length:
        states = torch.cat([states, empty], dim=1)
    return states


def step_prompts(pipe, prompt: str, negative: str, steps: int,
                 encode: Callable[[str], tuple[Any, Any, int]], hires_base: int | None = None,
                 old: bool = False) -> tuple[StepPrompts | None, str, str]:
    """(StepPrompts, "", "") when the prompts edit, alternate or use AND; otherwise (None,
    prompt, negative prompt) as plain texts for the usual single encoding.
    encode(text) -> (states, pooled, token count); hires_base, old: see prompt_schedule."""
    parts = [(prompt_schedule(text, steps, hires_base, old), weight)
             for text, weight in split_and(prompt)]
    negative_schedule = prompt_schedule(negative, steps, hires_base, old)
    if len(parts) == 1 and parts[0][1] == 1.0 and len(parts[0][0]) == 1 \
            and len(negative_schedule) == 1:
        return None, parts[0][0][0][1], negative_schedule[0][1]
    # 1. Every distinct text encoded once.
    texts: dict[str, int] = {}
    for schedule in [s for s, _ in parts] + [negative_schedule]:
        for _, text in schedule:
            texts.setdefault(text, len(texts))
    zero_negative = negative == "" and getattr(pipe.config, "force_zeros_for_empty_prompt", False)
    positive = {text for schedule, _ in parts for _, text in schedule}
    encoded, counts = [], [0]
    for text in texts:
        states, pooled, count = encode(text)
        encoded.append((states, pooled))
        if text in positive:
            counts.append(count)
    empty = encode("")[0]
    # 2. Schedules as (end step, text index).
    indexed = [([(end, texts[t]) for end, t in s], weight) for s, weight in parts]
    return StepPrompts(encoded, indexed, [(end, texts[t]) for end, t in negative_schedule],
                       empty, zero_negative, prompt_tokens=max(counts)), "", ""


def _rows(x, batch: int, like=None):
    if x is None:
        return None
    x = x.expand(batch, *x.shape[1:])
    return x.to(like.device, like.dtype) if like is not None else x.contiguous()


def _pair(steps: StepPrompts, step: int, batch: int) -> dict[str, Any]:
    """The pipeline's embedding arguments for `step`: the first AND part and the negative."""
    conds, uncond = steps.at(step)
    kwargs = {"prompt_embeds": _rows(conds[0][0], batch),
              "negative_prompt_embeds": _rows(uncond[0], batch)}
    if conds[0][1] is not None:
        kwargs.update(pooled_prompt_embeds=_rows(conds[0][1], batch),
                      negative_pooled_prompt_embeds=_rows(uncond[1], batch))
    return kwargs


def pipe_kwargs(steps: StepPrompts, batch: int, on_step_end) -> dict[str, Any]:
    """Step 0's embeddings, and a step callback that swaps in the next step's (prompt editing);
    with AND the wrapped UNet reads `steps.step` instead."""
    steps.step, steps.batch = 0, batch
    kwargs = _pair(steps, 0, batch)
    sdxl = kwargs.get("pooled_prompt_embeds") is not None

    def swap(pipe, i, t, tensors):
        out = on_step_end(pipe, i, t, tensors) or {}
        steps.step = i + 1
        if steps.composable:
            return out
        pair = _pair(steps, i + 1, batch)
        like = tensors["prompt_embeds"]
        cfg = like.shape[0] == 2 * batch  # classifier-free guidance: [negative, positive]
        positive = _rows(pair["prompt_embeds"], batch, like)
        out["prompt_embeds"] = (_cat([_rows(pair["negative_prompt_embeds"], batch, like),
                                           positive]) if cfg else positive)
        if sdxl:
            like = tensors["add_text_embeds"]
            pooled = _rows(pair["pooled_prompt_embeds"], batch, like)
            out["add_text_embeds"] = (_cat([_rows(
                pair["negative_pooled_prompt_embeds"], batch, like), pooled]) if cfg else pooled)
        return out

    inputs = ["latents", "prompt_embeds"] + (["add_text_embeds"] if sdxl else [])
    return dict(kwargs, callback_on_step_end=swap, callback_on_step_end_tensor_inputs=inputs)


def _cat(tensors):
    import torch

    return torch.cat(tensors)


def _part_rows(x, batch: int, n: int, cfg: bool):
    """Per-row inputs the pipeline built for [negative, positive] (or positive only), laid out
    for the n = 1 + parts rows: the negative prompt's rows first, the prompt's for every part."""
    import torch

    cond = x[batch:2 * batch] if cfg else x
    return torch.cat([x[:batch]] + [cond] * (n - 1))


def _control_rows(kwargs: dict, batch: int, n: int, cfg: bool) -> dict:
    """ControlNet residuals (diffusers' ControlNet pipelines), per row as _part_rows."""
    out = dict(kwargs)
    if out.get("down_block_additional_residuals") is not None:
        out["down_block_additional_residuals"] = tuple(
            _part_rows(r, batch, n, cfg) for r in out["down_block_additional_residuals"])
    if out.get("mid_block_additional_residual") is not None:
        out["mid_block_additional_residual"] = _part_rows(
            out["mid_block_additional_residual"], batch, n, cfg)
    return out


@contextmanager
def composable_guidance(pipe, steps: StepPrompts | None) -> Iterator[None]:
    """For the block, the pipeline's UNet evaluates every AND part (see the module docstring)."""
    if steps is None or not steps.composable:
        yield
        return
    import torch

    unet = pipe.unet
    had_own = "forward" in unet.__dict__  # e.g. OpenVINO's forward (openvino.py)
    original = unet.forward

    def forward(sample, timestep, encoder_hidden_states=None, added_cond_kwargs=None,
                return_dict=True, **kwargs):
        batch = steps.batch
        cfg = sample.shape[0] == 2 * batch  # [negative, positive] rows (diffusers' order)
        conds, uncond = steps.at(steps.step)
        n = len(conds) + 1
        kwargs = _control_rows(kwargs, batch, n, cfg)
        if added_cond_kwargs:  # SDXL: pooled text per part; size ids as the pipeline built them
            pooled = added_cond_kwargs["text_embeds"]
            added_cond_kwargs = dict(
                added_cond_kwargs,
                time_ids=_part_rows(added_cond_kwargs["time_ids"], batch, n, cfg),
                text_embeds=torch.cat([_rows(p, batch, pooled)
                                       for p in [uncond[1]] + [c[1] for c in conds]]))
        like = encoder_hidden_states
        hidden = torch.cat([_rows(s, batch, like) for s in [uncond[0]] + [c[0] for c in conds]])
        if torch.is_tensor(timestep) and timestep.ndim == 1 \
                and timestep.shape[0] == sample.shape[0]:
            timestep = timestep[:batch].repeat(n)
        out = original(sample[:batch].repeat(n, *[1] * (sample.ndim - 1)), timestep,
                       encoder_hidden_states=hidden, added_cond_kwargs=added_cond_kwargs,
                       return_dict=False, **kwargs)[0]
        eps_uncond = out[:batch]
        combined = eps_uncond.clone()
        for k, (_, weight) in enumerate(steps.parts):
            combined += weight * (out[(k + 1) * batch:(k + 2) * batch] - eps_uncond)
        result = torch.cat([eps_uncond, combined]) if cfg else combined
        if return_dict:
            from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

            return UNet2DConditionOutput(sample=result)
        return (result,)

    unet.forward = forward
    try:
        yield
    finally:
        if had_own:
            unet.forward = original
        else:
            del unet.forward
