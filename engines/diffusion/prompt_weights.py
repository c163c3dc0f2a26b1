"""AUTOMATIC1111's prompt grammar: emphasis weights, BREAK and prompts longer than CLIP's window.

    (word) x1.1   ((word)) x1.21   [word] /1.1   (word:1.3) x1.3   \\( \\) \\[ \\] literal brackets
    BREAK         starts a new 75-token chunk

Why not compel: compel has its own grammar (`word++`, `(word)1.3`), lowers weights by blending
with a masked prompt and does not restore the mean, so an A1111 prompt gives another picture.
This follows A1111's `modules/prompt_parser.py` and `sd_hijack_clip.py` instead:

1. `parse_prompt_attention` splits the text into (text, weight) runs (A1111's own parser).
2. `tokenize_prompt` tokenizes each run and fills chunks of `model_max_length - 2` tokens (75
   for real CLIP); a chunk that would overflow moves back to its last comma when that comma is
   at most 20 tokens back; BREAK closes a chunk; a textual-inversion name becomes its vectors.
3. `encode_prompt` encodes every chunk as [BOS] + tokens + [EOS] + padding, multiplies each
   token's hidden state by its weight, restores the chunk's original mean, and concatenates
   the chunks along the token axis. SDXL: both text encoders (penultimate layer, as diffusers
   does), pooled output of the first chunk.

A prompt without emphasis that fits one chunk gives exactly diffusers' own embeddings.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

RE_ATTENTION = re.compile(r"""
\\\(|
\\\)|
\\\[|
\\]|
\\\\|
\\|
\(|
\[|
:\s*([+-]?[.\d]+)\s*\)|
\)|
]|
[^\\()\[\]:]+|
:
""", re.X)
RE_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
ROUND, SQUARE = 1.1, 1 / 1.1
COMMA_BACKTRACK = 20  # A1111's "comma_padding_backtrack" default
PLACEHOLDER = 0  # token id under a textual-inversion vector (A1111's choice; never EOS)


def parse_prompt_attention(text: str) -> list[list]:
    """[[text, weight], ...] as A1111 parses it; a BREAK is ["BREAK", -1].

    >>> parse_prompt_attention('an (important) word')
    [['an ', 1.0], ['important', 1.1], [' word', 1.0]]
    """
    res: list[list] = []
    round_brackets: list[int] = []
    square_brackets: list[int] = []

    def multiply_range(start: int, multiplier: float) -> None:
        for p in range(start, len(res)):
            res[p][1] *= multiplier

    for match in RE_ATTENTION.finditer(text):
        piece, weight = match.group(0), match.group(1)
        if piece.startswith("\\"):
            res.append([piece[1:], 1.0])
        elif piece == "(":
            round_brackets.append(len(res))
        elif piece == "[":
            square_brackets.append(len(res))
        elif weight is not None and round_brackets:
            multiply_range(round_brackets.pop(), float(weight))
        elif piece == ")" and round_brackets:
            multiply_range(round_brackets.pop(), ROUND)
        elif piece == "]" and square_brackets:
            multiply_range(square_brackets.pop(), SQUARE)
        else:
            for i, part in enumerate(RE_BREAK.split(piece)):
                if i > 0:
                    res.append(["BREAK", -1])
                res.append([part, 1.0])
    # Unclosed brackets still count, as in A1111.
    for position in round_brackets:
        multiply_range(position, ROUND)
    for position in square_brackets:
        multiply_range(position, SQUARE)
    if not res:
        res = [["", 1.0]]
    # Merge neighbours of equal weight.
    i = 0
    while i + 1 < len(res):
        if res[i][1] == res[i + 1][1]:
            res[i][0] += res[i + 1][0]
            res.pop(i + 1)
        else:
            i += 1
    return res


@dataclass
class Chunk:
    tokens: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    # (position in the chunk, vectors) of textual-inversion embeddings placed there
    fixes: list[tuple[int, Any]] = field(default_factory=list)


def _find_embedding(tokens: list[int], position: int, embeddings: dict) -> tuple[Any, int]:
    """The embedding whose name's tokens start at `position` (longest name first)."""
    for name_tokens, vectors in embeddings.get(tokens[position], ()):
        if tuple(tokens[position:position + len(name_tokens)]) == name_tokens:
            return vectors, len(name_tokens)
    return None, 0


def tokenize_prompt(text: str, tokenizer, embeddings: dict | None = None) -> tuple[list[Chunk], int]:
    """Chunks of token ids and weights, plus the number of prompt tokens (A1111's count).

    embeddings: {first token id: [(name token ids, vectors), ...]} from textual_inversion.py.
    """
    embeddings = embeddings or {}
    window = tokenizer.model_max_length if tokenizer.model_max_length <= 4096 else 77  # unset: CLIP's
    length = window - 2
    comma = tokenizer.get_vocab().get(",</w>")
    parsed = parse_prompt_attention(text)
    chunks: list[Chunk] = []
    chunk = Chunk()
    count = 0
    last_comma = -1

    def next_chunk(is_last: bool = False) -> None:
        nonlocal chunk, count, last_comma
        count += len(chunk.tokens) if is_last else length
        padding = length - len(chunk.tokens)
        chunk.tokens += [tokenizer.eos_token_id] * padding
        chunk.weights += [1.0] * padding
        chunks.append(chunk)
        chunk, last_comma = Chunk(), -1

    for piece, weight in parsed:
        if piece == "BREAK" and weight == -1:
            next_chunk()
            continue
        tokens = tokenizer(piece, add_special_tokens=False, truncation=False,
                           verbose=False)["input_ids"]
        position = 0
        while position < len(tokens):
            token = tokens[position]
            if token == comma:
                last_comma = len(chunk.tokens)
            elif (len(chunk.tokens) == length and last_comma != -1
                  and len(chunk.tokens) - last_comma <= COMMA_BACKTRACK):
                # Move the words after the last comma into the next chunk.
                cut = last_comma + 1
                moved = chunk.tokens[cut:], chunk.weights[cut:]
                chunk.tokens, chunk.weights = chunk.tokens[:cut], chunk.weights[:cut]
                next_chunk()
                chunk.tokens, chunk.weights = list(moved[0]), list(moved[1])
            if len(chunk.tokens) == length:
                next_chunk()
            vectors, name_length = _find_embedding(tokens, position, embeddings)
            if vectors is None:
                chunk.tokens.append(token)
                chunk.weights.append(weight)
                position += 1
                continue
            if len(chunk.tokens) + len(vectors) > length:  # an embedding never straddles chunks
                next_chunk()
            chunk.fixes.append((len(chunk.tokens), vectors))
            chunk.tokens += [PLACEHOLDER] * len(vectors)  # replaced by the vectors
            chunk.weights += [weight] * len(vectors)
            position += name_length
    if chunk.tokens or not chunks:
        next_chunk(is_last=True)
    return chunks, count


def has_syntax(text: str) -> bool:
    """Whether A1111's grammar changes anything in this text (brackets, escapes or BREAK)."""
    return bool(re.search(r"[()\[\]\\]|\bBREAK\b", text))


# ------------------------------------------------------------------ encoding (torch)
def _chunk_ids(chunk: Chunk, tokenizer):
    """[BOS] + tokens + [EOS], and after the first EOS the tokenizer's pad token (A1111's
    id_pad: EOS for SD 1.x's CLIP, "!" for OpenCLIP in SD 2.x and SDXL's second encoder)."""
    import torch

    ids = [tokenizer.bos_token_id] + chunk.tokens + [tokenizer.eos_token_id]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    first_eos = ids.index(tokenizer.eos_token_id)
    ids = ids[:first_eos + 1] + [pad] * (len(ids) - first_eos - 1)
    return torch.tensor([ids])


def _encode_chunk(text_encoder, ids, chunk: Chunk, penultimate: bool, clip_skip: int = 1,
                  sdxl_layer: int = 2):
    """Hidden states of one chunk, with textual-inversion vectors put in through a hook on the
    token embedding (the way A1111 does it: no tokenizer or vocabulary is changed).
    clip_skip > 1 (SD 1.x, A1111's "Clip skip"): the output of the layer that many from the
    end, through the final layer norm, as A1111 does it. `penultimate` (SDXL): the output of
    layer `sdxl_layer` from the end as it is, no final norm: 2, the penultimate, unless A1111's
    "Clip skip SDXL" moves CLIP-L's (its hidden_states[-CLIP_stop_at_last_layers])."""
    import torch

    embedding = text_encoder.get_input_embeddings()

    def put_vectors(_module, _args, output):
        for offset, vectors in chunk.fixes:
            vectors = vectors.to(output.device, output.dtype)
            output[0, 1 + offset:1 + offset + len(vectors)] = vectors
        return output

    hook = embedding.register_forward_hook(put_vectors) if chunk.fixes else None
    try:
        out = text_encoder(ids.to(text_encoder.device),
                           output_hidden_states=penultimate or clip_skip > 1)
    finally:
        if hook is not None:
            hook.remove()
    if penultimate:
        states = out.hidden_states[-sdxl_layer]
    elif clip_skip > 1:
        model = getattr(text_encoder, "text_model", text_encoder)  # transformers < 5 nests it
        states = model.final_layer_norm(out.hidden_states[-clip_skip])
    else:
        states = out[0]
    pooled = out[0] if penultimate and out[0].ndim == 2 else None  # CLIPTextModelWithProjection
    weights = torch.tensor(chunk.weights, dtype=states.dtype, device=states.device)
    weights = torch.cat([weights.new_ones(1), weights, weights.new_ones(1)])
    if torch.any(weights != 1):
        original_mean = states.mean()
        states = states * weights.reshape(1, -1, 1)
        states = states * (original_mean / states.mean())
    return states, pooled


def encode_chunks(chunks: list[Chunk], tokenizer, text_encoder, penultimate: bool = False,
                  clip_skip: int = 1, sdxl_layer: int = 2):
    """(1 x 77k x dim hidden states, pooled output of the first chunk or None)."""
    import torch

    states, pooled = [], None
    for i, chunk in enumerate(chunks):
        chunk_states, chunk_pooled = _encode_chunk(text_encoder, _chunk_ids(chunk, tokenizer),
                                                   chunk, penultimate, clip_skip, sdxl_layer)
        states.append(chunk_states)
        if i == 0:
            pooled = chunk_pooled
    return torch.cat(states, dim=1), pooled
