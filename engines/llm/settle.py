"""Evaluating a finished reply again, as a batch, while the studio is idle, so that the next turn
of the chat finds it in llama.cpp's cache.

Why: a reply's tokens were evaluated one at a time while they were generated, and on the CPU a
one-token batch rounds differently from a batch of two or more (backends.py `_prime`). Keeping
those keys/values would make a seed's text depend on whether the cache was warm, so they are
dropped, and without this the next turn evaluates the reply again before its first token (the
10th turn of a chat then waits ~1.5-1.9x as long as the first).

ReplySettler does that evaluation as soon as the reply has ended, in a background thread, a
few tokens per batch, so the reply itself (an API call included) ends as soon as its last token
is out. The next request waits for it only as far as its own prompt starts with the settled
tokens (work it would do anyway); any other request stops it within one batch.
"""
from __future__ import annotations

import threading

SETTLE_BATCH = 32  # tokens per evaluation: how long another request may wait for it to stop


def shared_prefix(a: list[int], b: list[int]) -> int:
    count = 0
    for x, y in zip(a, b):
        if x != y:
            break
        count += 1
    return count


class ReplySettler:
    """Runs for one llama.cpp backend; every use of its model calls `finish` first."""

    def __init__(self, backend) -> None:
        self._backend = backend  # LlamaCppBackend: .llm and ._evaluated
        self._thread: threading.Thread | None = None
        self._target: list[int] = []
        self._limit = 0
        self._lock = threading.Lock()  # guards _limit between the two threads
        self.settled = 0  # tokens the last run evaluated (for tests and benchmarks)

    def start(self, body: list[int], tail: list[int]) -> None:
        """`body`: the prompt tokens whose batch-evaluated keys/values are in the cache; `tail`:
        the prompt's last token and the reply, to evaluate after them."""
        self.finish([])
        if len(tail) < 2:
            return
        self._target, self._limit, self.settled = body + tail, len(body) + len(tail), 0
        self._thread = threading.Thread(target=self._run, args=(len(body),), daemon=True,
                                        name="llm-settle-reply")
        self._thread.start()

    def finish(self, prompt: list[int]) -> None:
        """Before the model is used for `prompt`: the evaluation goes on only over the tokens
        `prompt` starts with, then this returns once it has stopped."""
        thread = self._thread
        if thread is None:
            return
        with self._lock:
            self._limit = min(self._limit, shared_prefix(self._target, prompt))
        self.wait()
        self._thread = None

    def wait(self) -> None:
        """Until the whole reply is settled (benchmarks: the next measurement starts idle)."""
        thread = self._thread
        if thread is not None:
            thread.join()

    def _next_end(self, position: int) -> int:
        with self._lock:
            end = min(position + SETTLE_BATCH, self._limit)
            if self._limit - end == 1:  # never leave a single token for a batch of its own
                end -= 1
        return end if end - position >= 2 else position

    def _run(self, position: int) -> None:
        backend = self._backend
        llm = backend.llm
        start = position
        try:
            backend._evaluated = self._target[:position]
            if not llm._ctx.kv_cache_seq_rm(-1, position, -1):
                return  # _prime starts afresh
            llm.n_tokens = position
            while (end := self._next_end(position)) > position:
                llm.eval(self._target[position:end])
                position = end
                backend._evaluated = self._target[:end]
        except Exception:  # noqa: BLE001 - the cache's state is unknown: the next prompt starts afresh
            backend._evaluated = []
        finally:
            self.settled = position - start
