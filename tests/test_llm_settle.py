"""Settling a finished reply into llama.cpp's cache in the background (engines/llm/settle.py):
batches of two tokens or more, stopped by a request that does not start with the reply, and
waited for by one that does. A fake model records what would be evaluated."""
from __future__ import annotations

import threading

from engines.llm.settle import SETTLE_BATCH, ReplySettler, shared_prefix


class FakeContext:
    def __init__(self) -> None:
        self.removed_from: list[int] = []

    def kv_cache_seq_rm(self, seq: int, start: int, end: int) -> bool:
        self.removed_from.append(start)
        return True


class FakeLlama:
    """Evaluates nothing; the first batch waits until the test lets it go."""

    def __init__(self) -> None:
        self._ctx, self.n_tokens, self.batches = FakeContext(), 0, []
        self.first_started, self.release = threading.Event(), threading.Event()

    def eval(self, tokens: list[int]) -> None:
        self.first_started.set()
        self.release.wait(5)
        self.batches.append((self.n_tokens, self.n_tokens + len(tokens)))
        self.n_tokens += len(tokens)


class FakeBackend:
    def __init__(self) -> None:
        self.llm, self._evaluated = FakeLlama(), []


BODY, REPLY = list(range(100, 140)), list(range(500, 571))  # 40 prompt tokens, 70 + 1 to settle


def started() -> tuple[FakeBackend, ReplySettler]:
    backend = FakeBackend()
    settler = ReplySettler(backend)
    settler.start(BODY, [99] + REPLY)
    assert backend.llm.first_started.wait(5)
    return backend, settler


def test_a_next_turn_waits_for_the_whole_reply_in_batches_of_two_or_more():
    backend, settler = started()
    next_turn = BODY + [99] + REPLY + [7, 8, 9]  # the next turn starts with the whole reply
    backend.llm.release.set()
    settler.finish(next_turn)
    batches = backend.llm.batches
    assert backend.llm._ctx.removed_from == [40]  # the one-at-a-time reply is dropped first
    assert batches[0][0] == 40 and batches[-1][1] == 40 + 1 + len(REPLY)
    assert all(end - start >= 2 and end - start <= SETTLE_BATCH for start, end in batches)
    assert all(a[1] == b[0] for a, b in zip(batches, batches[1:]))  # contiguous
    assert backend._evaluated == BODY + [99] + REPLY and settler.settled == 1 + len(REPLY)


def test_another_request_stops_it_after_the_running_batch():
    backend, settler = started()
    threading.Timer(0.05, backend.llm.release.set).start()
    settler.finish(BODY[:10] + [1, 2, 3])  # an unrelated prompt: shares the template's start only
    assert backend.llm.batches == [(40, 40 + SETTLE_BATCH)]  # the one already running, no more
    assert backend._evaluated == (BODY + [99] + REPLY)[:40 + SETTLE_BATCH]


def test_a_turn_that_changes_the_reply_keeps_what_they_share():
    backend, settler = started()
    edited = BODY + [99] + REPLY[:45] + [1, 2]  # the user edited the reply after 45 tokens
    backend.llm.release.set()
    settler.finish(edited)
    assert backend.llm.batches[-1][1] in (40 + 46, 40 + 45)  # never a one-token batch
    assert shared_prefix(backend._evaluated, edited) == len(backend._evaluated)


def test_nothing_to_settle_starts_no_thread():
    backend = FakeBackend()
    settler = ReplySettler(backend)
    settler.start(BODY, [99])  # a reply cut before its first token
    settler.finish(BODY)
    assert backend.llm.batches == [] and backend._evaluated == []
