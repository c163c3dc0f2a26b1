"""Textual-inversion embeddings, triggered by their file name in a prompt (as in A1111).

Files live in the embeddings folders (A1111's `embeddings`, subfolders allowed):
  - `.safetensors`: A1111's `{"emb_params": N x dim}`, diffusers' `{"<token>": dim or N x dim}`,
    SDXL's `{"clip_l": N x 768, "clip_g": N x 1280}`;
  - `.pt` / `.bin` only when `torch.load(weights_only=True)` accepts them (A1111's
    `{"string_to_param": {"*": N x dim}, ...}`); a file that needs pickled code is refused.

The vectors are put in place of the name's tokens while the prompt is encoded
(prompt_weights.py, a hook on the token embedding, as A1111 does): no tokenizer or text
encoder is changed, so nothing is left behind for the next job. An embedding whose width does
not match the model's text encoder is skipped with a warning (A1111 lists it as "skipped").
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from engines.base import ParamError, file_sha256
from engines.diffusion.lora import find_files

SUFFIXES = (".safetensors", ".pt", ".bin")


@dataclass(frozen=True)
class Embedding:
    name: str
    path: Path
    vectors: dict  # {"clip_l": N x dim, "clip_g": ...} or {"default": N x dim}

    def for_width(self, width: int):
        """The vectors for a text encoder of this width, or None."""
        for tensor in self.vectors.values():
            if tensor.shape[-1] == width:
                return tensor
        return None

    @property
    def count(self) -> int:
        return int(next(iter(self.vectors.values())).shape[0])


def find_embeddings(folders: Iterable[str | Path]) -> dict[str, Path]:
    return find_files(folders, SUFFIXES)


def mentioned(prompt: str, names: Iterable[str]) -> list[str]:
    """Names that occur in the prompt as whole words (case-insensitive, as CLIP lowercases);
    the exact match is by tokens when the prompt is encoded."""
    return [n for n in names if re.search(rf"(?<![\w-]){re.escape(n)}(?![\w-])", prompt, re.I)]


def load_embedding(name: str, path: Path) -> Embedding:
    """Read the vectors; ParamError naming the file when it is not a usable embedding."""
    import torch

    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            data = load_file(str(path))
        else:  # never unpickle code: only plain tensors and containers
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ParamError("prompt", f"embedding {name!r} ({path.name}) could not be read safely: "
                         f"{str(error).splitlines()[0][:200]}") from None
    vectors = _vectors(data)
    if not vectors:
        raise ParamError("prompt", f"embedding {name!r} ({path.name}) holds no embedding vectors")
    return Embedding(name, path, {k: v.detach().float().reshape(-1, v.shape[-1])
                                  for k, v in vectors.items()})


def _vectors(data) -> dict:
    import torch

    if not isinstance(data, dict):
        return {}
    if "clip_l" in data or "clip_g" in data:
        return {k: data[k] for k in ("clip_l", "clip_g") if isinstance(data.get(k), torch.Tensor)}
    if "string_to_param" in data:  # A1111 .pt
        params = data["string_to_param"]
        tensor = next(iter(params.values()), None) if isinstance(params, dict) else None
        return {"default": tensor} if isinstance(tensor, torch.Tensor) else {}
    if isinstance(data.get("emb_params"), torch.Tensor):  # A1111 .safetensors
        return {"default": data["emb_params"]}
    tensors = [v for v in data.values() if isinstance(v, torch.Tensor)]
    return {"default": tensors[0]} if len(tensors) == 1 else {}  # diffusers: {"<token>": v}


def token_table(tokenizer, embeddings: list[tuple[str, object]]) -> dict:
    """{first token id: [(name token ids, vectors), ...]} with longer names first, the form
    prompt_weights.tokenize_prompt looks embeddings up in."""
    table: dict[int, list] = {}
    for name, vectors in embeddings:
        ids = tuple(tokenizer(name, add_special_tokens=False)["input_ids"])
        if ids:
            table.setdefault(ids[0], []).append((ids, vectors))
    for entries in table.values():
        entries.sort(key=lambda entry: -len(entry[0]))
    return table


def short_hash(path: Path) -> str:
    """A1111's "TI hashes" value: sha256 of the file, first 12 hex digits."""
    return file_sha256(path)[:12]
