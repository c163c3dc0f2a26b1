"""Everything between a prompt and the UNet's conditioning, for one generation: LoRA tags,
textual-inversion embeddings, A1111 prompt weighting and long prompts, and the VAE choice.

    with conditioning(pipes, mode, params, model_name, vae_loader) as cond:
        pipe(**cond.embeds_for(batch), ...)
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

from engines.diffusion import lora, textual_inversion
from engines.diffusion.prompt_weights import encode_chunks, tokenize_prompt


@dataclass
class Conditioning:
    prompt_embeds: Any
    negative_embeds: Any
    pooled: Any = None  # SDXL only
    negative_pooled: Any = None
    prompt_tokens: int = 0
    info: dict[str, Any] = field(default_factory=dict)

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


def encode(pipe, text: str, embeddings: list) -> tuple[Any, Any, int]:
    """(hidden states 1 x tokens x dim, pooled or None, prompt token count) with A1111's
    weighting and chunking; SDXL concatenates both encoders' penultimate states."""
    import torch

    pairs = _encoders(pipe)
    penultimate = len(pairs) == 2 or getattr(pipe, "text_encoder_2", None) is not None
    states, pooled, count = [], None, 0
    for tokenizer, encoder in pairs:
        width = encoder.get_input_embeddings().weight.shape[1]
        table = textual_inversion.token_table(
            tokenizer, [(e.name, e.for_width(width)) for e in embeddings])
        chunks, count = tokenize_prompt(text, tokenizer, table)
        with torch.no_grad():
            chunk_states, chunk_pooled = encode_chunks(chunks, tokenizer, encoder, penultimate)
        states.append(chunk_states)
        pooled = chunk_pooled if chunk_pooled is not None else pooled
    return torch.cat(states, dim=-1), pooled, count


def _pad_to(states, length: int, empty):
    """A1111 pads the shorter of prompt and negative prompt with the empty prompt's chunk."""
    import torch

    while states.shape[1] < length:
        states = torch.cat([states, empty], dim=1)
    return states


def encode_pair(pipe, prompt: str, negative: str, embeddings: list) -> Conditioning:
    import torch

    cond, pooled, count = encode(pipe, prompt, embeddings)
    if negative == "" and getattr(pipe.config, "force_zeros_for_empty_prompt", False):
        # SDXL's own convention for an empty negative prompt (diffusers does the same)
        uncond, negative_pooled = torch.zeros_like(cond), (
            torch.zeros_like(pooled) if pooled is not None else None)
    else:
        uncond, negative_pooled, _ = encode(pipe, negative, embeddings)
    if cond.shape[1] != uncond.shape[1]:
        empty, _, _ = encode(pipe, "", [])
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
    with lora.applied(pipe, loras, model_name) as lora_records, vae_swapped(pipes, vae):
        cond = encode_pair(pipe, prompt, negative, embeddings)
        cond.info = {
            "loras": lora_records,
            "embeddings": [{"name": e.name, "hash": textual_inversion.short_hash(e.path),
                            "vectors": e.count} for e in embeddings],
            "vae": ({"name": vae_path.name, "hash": _vae_hash(vae_path)} if vae_path else None),
            "warnings": warnings,
        }
        yield cond


def _vae_hash(path: Path) -> str:
    from engines.diffusion.vae import vae_hash

    return vae_hash(path)
