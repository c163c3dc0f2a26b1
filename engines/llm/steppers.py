"""Steppers: a backend's model as `logits` for the next token and `feed(tokens)`, for decoding
loops of our own (engines/llm/guided.py: constrained output, log-probabilities)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from engines.base import CancelToken

from engines.llm.backends import PROMPT_CHUNK

if TYPE_CHECKING:
    import numpy as np

    from engines.llm.backends import TransformersBackend


class Stepper:
    """`logits` for the next token (float32 numpy); `feed(tokens)` evaluates tokens and updates
    it. Decoding loops of our own drive it (engines/llm/guided.py)."""
    logits: "np.ndarray"

    def feed(self, tokens: list[int]) -> None:
        raise NotImplementedError


class LlamaStepper(Stepper):
    def __init__(self, llm, first: list[int], on_step=lambda: None) -> None:
        self.llm, self.on_step = llm, on_step  # on_step: AdaptiveThreads.tick (threads.py)
        self.feed(first)

    def feed(self, tokens: list[int]) -> None:
        import numpy as np

        self.on_step()
        self.llm.eval(tokens)  # logits are kept for the last token only
        self.logits = np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(self.llm.n_vocab(),)).copy()


def text_or_none(piece: bytes) -> str | None:
    """A token's text, or None when it is not whole UTF-8 on its own (a byte of a character)."""
    try:
        return piece.decode("utf-8")
    except UnicodeDecodeError:
        return None


class TorchStepper(Stepper):
    def __init__(self, backend: "TransformersBackend", prompt: list[int], cancel: CancelToken) -> None:
        self.backend, self.past = backend, None
        for start in range(0, len(prompt), PROMPT_CHUNK):  # a cancel check between chunks
            cancel.raise_if_cancelled()
            self.feed(prompt[start:start + PROMPT_CHUNK])

    def feed(self, tokens: list[int]) -> None:
        import torch

        with torch.inference_mode():
            ids = torch.tensor([tokens], device=self.backend.device)
            out = self.backend.model(input_ids=ids, cache=self.past, use_cache=True, logits_to_keep=1)
        self.past = out.cache
        self.logits = out.logits[0, -1].float().cpu().numpy()
