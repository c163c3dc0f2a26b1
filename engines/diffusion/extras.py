"""Everything between a prompt and the UNet's conditioning, for one generation: LoRA tags,
textual-inversion embeddings, A1111 prompt weighting and long prompts, clip skip, prompt
editing / alternation / AND (prompt_editing.py), and the VAE choice.

    with conditioning(pipes, mode, params, model_name, vae_loader) as cond:
        pipe(**cond.pipe_kwargs(batch, on_step_end), ...)
    cond.info -> {"loras": [...], "embeddings": [...], "vae": {...}, "warnings": [...]}

Order matters: LoRAs are loaded first (a text-encoder LoRA changes the prompt's encoding), then
the prompts are encoded, and on leaving the block the LoRAs are unloaded and the model's own
VAE is put back, so the next generation starts from the model as loaded.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from engines.base import ParamError
from engines.diffusion import lora, prompt_editing, textual_inversion
from engines.diffusion.prompt_schedule import old_timelines_differ, split_and
from engines.diffusion.prompt_weights import encode_chunks, tokenize_prompt


@dataclass
class Conditioning:
    prompt_embeds: Any
    negative_embeds: Any
    pooled: Any = None  # SDXL only
    negative_pooled: Any = None
    prompt_tokens: int = 0
    info: dict[str, Any] = field(default_factory=dict)
    steps: Any = None  # prompt_editing.StepPrompts when the prompt edits, alternates or uses AND

    def embeds_for(self, batch: int) -> dict[str, Any]:
        """The pipeline's keyword arguments for `batch` images of this prompt."""
        def rows(x):
            return None if x is None else x.expand(batch, *x.shape[1:]).contiguous()

        kwargs = {"prompt_embeds": rows(self.prompt_embeds),
                  "negative_prompt_embeds": rows(self.negative_embeds)}
        if self.pooled is not None:
            kwargs.update(pooled_prompt_embeds=rows(self.pooled),
                          negative_pooled_prompt_embeds=rows(self.negative_pooled))
        return kwargs

    def pipe_kwargs(self, batch: int, on_step_end) -> dict[str, Any]:
        """The embeddings and the step callback for one pipeline call of `batch` images."""
        if self.steps is not None:
            return prompt_editing.pipe_kwargs(self.steps, batch, on_step_end)
        return dict(self.embeds_for(batch), callback_on_step_end=on_step_end)


def _encoders(pipe) -> list[tuple[Any, Any]]:
    pairs = [(getattr(pipe, "tokenizer", None), getattr(pipe, "text_encoder", None)),
             (getattr(pipe, "tokenizer_2", None), getattr(pipe, "text_encoder_2", None))]
    return [(t, e) for t, e in pairs if t is not None and e is not None]


def _embeddings(prompts: list[str], folders, pipe, warnings: list[str]) -> list:
    """The embeddings these prompts mention that fit every text encoder of the pipeline."""
    files = textual_inversion.find_embeddings(folders) if folders else {}
    names = sorted({n for p in prompts for n in textual_inversion.mentioned(p, files)})
    widths = [enc.get_input_embeddings().weight.shape[1] for _, enc in _encoders(pipe)]
    usable = []
    for name in names:
        embedding = textual_inversion.load_embedding(name, files[name])
        if all(embedding.for_width(w) is not None for w in widths):
            usable.append(embedding)
        else:
            have = "/".join(str(v.shape[-1]) for v in embedding.vectors.values())
            warnings.append(f"embedding {name!r} skipped: its vectors are {have} wide, the "
                            f"model's text encoder(s) {'/'.join(map(str, widths))}")
    return usable


def encode(pipe, text: str, embeddings: list, clip_skip: int = 1,
           sdxl_clip_l: int = 2) -> tuple[Any, Any, int]:
    """(hidden states 1 x tokens x dim, pooled or None, prompt token count) with A1111's
    weighting and chunking; SDXL concatenates both encoders' penultimate states (CLIP-L's from
    layer `sdxl_clip_l` from the end instead, with A1111's "Clip skip SDXL": clip_layers)."""
    import torch

    pairs = _encoders(pipe)
    penultimate = len(pairs) == 2 or getattr(pipe, "text_encoder_2", None) is not None
    states, pooled, count = [], None, 0
    for index, (tokenizer, encoder) in enumerate(pairs):
        # SDXL's first encoder is CLIP-L (its refiner has OpenCLIP bigG only)
        layer = sdxl_clip_l if len(pairs) == 2 and index == 0 else 2
        width = encoder.get_input_embeddings().weight.shape[1]
        table = textual_inversion.token_table(
            tokenizer, [(e.name, e.for_width(width)) for e in embeddings])
        chunks, count = tokenize_prompt(text, tokenizer, table)
        with torch.no_grad():
            chunk_states, chunk_pooled = encode_chunks(chunks, tokenizer, encoder, penultimate,
                                                       clip_skip, layer)
        states.append(chunk_states)
        pooled = chunk_pooled if chunk_pooled is not None else pooled
    return torch.cat(states, dim=-1), pooled, count


def _pad_to(states, length: int, empty):
    """A1111 pads the shorter of prompt and negative prompt with the empty prompt's chunk."""
    import torch

    while states.shape[1] < length:
        states = torch.cat([states, empty], dim=1)
    return states


def encode_pair(pipe, prompt: str, negative: str, embeddings: list,
                clip_skip: int = 1, sdxl_clip_l: int = 2) -> Conditioning:
    import torch

    cond, pooled, count = encode(pipe, prompt, embeddings, clip_skip, sdxl_clip_l)
    if negative == "" and getattr(pipe.config, "force_zeros_for_empty_prompt", False):
        # SDXL's own convention for an empty negative prompt (diffusers does the same)
        uncond, negative_pooled = torch.zeros_like(cond), (
            torch.zeros_like(pooled) if pooled is not None else None)
    else:
        uncond, negative_pooled, _ = encode(pipe, negative, embeddings, clip_skip, sdxl_clip_l)
    if cond.shape[1] != uncond.shape[1]:
        empty, _, _ = encode(pipe, "", [], clip_skip, sdxl_clip_l)
        length = max(cond.shape[1], uncond.shape[1])
        cond, uncond = _pad_to(cond, length, empty), _pad_to(uncond, length, empty)
    return Conditioning(cond, uncond, pooled, negative_pooled, count)


@contextmanager
def vae_swapped(pipes: dict, vae) -> Iterator[None]:
    """Every pipeline of the engine decodes with `vae` for the block (they share components)."""
    if vae is None:
        yield
        return
    originals = {mode: pipe.vae for mode, pipe in pipes.items()}
    try:
        for pipe in pipes.values():
            pipe.vae = vae
        yield
    finally:
        for mode, pipe in pipes.items():
            pipe.vae = originals[mode]


def clip_layers(pipe, clip_skip: int, sdxl_clip_l_skip: bool,
                warnings: list[str]) -> tuple[int, int]:
    """(SD 1.x clip skip, SDXL CLIP-L layer from the end) as A1111 reads its options: "Clip
    skip" moves SD 1.x's OpenAI CLIP only; SD 2.x's OpenCLIP and SDXL keep their layer (the
    penultimate for SDXL), unless "Clip skip SDXL" (sdxl_clip_l_skip) is on: then SDXL's CLIP-L
    reads layer `clip_skip` from the end as it is, no final norm (1 included: the last layer's
    output before the norm); its bigG encoder stays on the penultimate."""
    encoders = _encoders(pipe)
    sdxl = len(encoders) == 2
    if sdxl and sdxl_clip_l_skip:
        _check_layers(clip_skip, encoders[0][1].config)
        return 1, clip_skip
    if clip_skip <= 1:
        return 1, 2
    config = encoders[0][1].config if len(encoders) == 1 else None
    if config is None or getattr(config, "hidden_act", "") != "quick_gelu":
        warnings.append(f"clip skip {clip_skip} is ignored: A1111 applies it to SD 1.x models, "
                        "and to SDXL's CLIP-L with its sdxl_clip_l_skip option, not to SD 2.x or "
                        "SDXL otherwise")
        return 1, 2
    _check_layers(clip_skip, config)
    return clip_skip, 2


def _check_layers(clip_skip: int, config) -> None:
    if clip_skip > config.num_hidden_layers:
        raise ParamError("clip_skip", f"`clip_skip` {clip_skip} is more than this model's text "
                         f"encoder has layers ({config.num_hidden_layers})")


@contextmanager
def conditioning(pipes: dict, mode: str, params, model_name: str,
                 vae_loader: Callable[[Path], Any]) -> Iterator[Conditioning]:
    pipe = pipes[mode]
    warnings: list[str] = []
    # 1. LoRA tags out of the prompts (A1111 reads them in the positive prompt only).
    prompt, tags = lora.parse_tags(params.prompt)
    negative, negative_tags = lora.parse_tags(params.negative_prompt)
    if negative_tags:
        warnings.append("LoRA tags in the negative prompt are ignored (as in A1111)")
    loras = lora.resolve(tags, params.lora_dirs)
    # 2. Embeddings the prompts mention, and the VAE.
    embeddings = _embeddings([prompt, negative], params.embedding_dirs, pipe, warnings)
    vae_path = Path(params.vae) if params.vae else None
    vae = vae_loader(vae_path) if vae_path else None
    # 3. LoRAs on, prompts encoded with them; everything undone when the block ends.
    clip_skip, clip_l = clip_layers(pipe, getattr(params, "clip_skip", 1),
                                    getattr(params, "sdxl_clip_l_skip", False), warnings)
    with lora.applied(pipe, loras, model_name) as lora_records, vae_swapped(pipes, vae):
        # Prompt editing, alternation and AND: one encoding per distinct text (prompt_editing.py).
        # A hires fix's second pass schedules over the steps it runs, counting on from the first
        # (A1111's old timelines: on the first pass's steps, from 0).
        hires_base = getattr(params, "hires_base_steps", 0) or None
        pass_steps = max(1, int(params.steps * params.strength)) if hires_base else params.steps
        old = getattr(params, "use_old_scheduling", False)
        texts = [text for text, _ in split_and(prompt)] + [negative]
        steps, prompt, negative = prompt_editing.step_prompts(
            pipe, prompt, negative, pass_steps,
            lambda text: encode(pipe, text, embeddings, clip_skip, clip_l), hires_base, old)
        if steps is None:
            cond = encode_pair(pipe, prompt, negative, embeddings, clip_skip, clip_l)
        else:
            cond = Conditioning(None, None, prompt_tokens=steps.prompt_tokens, steps=steps)
        cond.info = {
            "loras": lora_records,
            "embeddings": [{"name": e.name, "hash": textual_inversion.short_hash(e.path),
                            "vectors": e.count} for e in embeddings],
            "vae": ({"name": vae_path.name, "hash": _vae_hash(vae_path)} if vae_path else None),
            "warnings": warnings,
        }
        if clip_skip > 1:
            cond.info["clip_skip"] = clip_skip
        if clip_l != 2:
            cond.info["sdxl_clip_l_layer"] = clip_l
        if old and old_timelines_differ(texts, pass_steps, hires_base):
            cond.info["old_prompt_editing"] = True  # A1111's infotext says so only then
        with prompt_editing.composable_guidance(pipe, steps):
            yield cond


def _vae_hash(path: Path) -> str:
    from engines.diffusion.vae import vae_hash

    return vae_hash(path)
