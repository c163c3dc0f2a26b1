"""Our own decoding loop, for what the backends' built-in loops cannot do: output constrained by
a grammar (engines/llm/grammar.py: JSON Schema, JSON mode, tool calls) and log-probabilities.

    for token in guided_tokens(backend, prompt_ids, sampling, cancel, matcher, record): ...

The sampler follows llama.cpp's order (repetition penalty, top-k, top-p, temperature), with the
grammar applied before top-k, so the k candidates are the k likeliest *allowed* tokens. Tokens
are checked lazily, likeliest first, until k allowed ones are found. Text the grammar leaves no
choice about (keys, separators) is written without sampling; when the token budget would run
out before the value is complete, the shortest completion is written instead, so a constrained
reply always parses. Seeds give the same text (numpy's generator; not the same as the native loop).
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator

import numpy as np

from engines.base import CancelToken

if TYPE_CHECKING:
    from engines.llm.backends import Backend
    from engines.llm.sampling import Sampling
    from engines.llm.matcher import Matcher

REPEAT_LAST_N = 64  # as engines/llm/backends.py
UNBOUNDED_TOP_K = 100  # top_k=0 ("off") considers this many allowed tokens (the rest is noise)
FIRST_CHUNK = 96  # candidates ranked per pass before ranking the whole pool
SCAN_LIMIT = 512  # once one allowed token is found, check at most this many (the rest is noise)


@dataclass
class TokenLogprob:
    token: str
    logprob: float
    top: list[tuple[str, float]] = field(default_factory=list)


class Vocab:
    """Token texts and indexes for fast checks: by first character, and "plain" tokens (no quote,
    backslash or control character) that can go inside a JSON string unchecked."""

    def __init__(self, texts: list[str | None]) -> None:
        self.texts = texts
        groups: dict[str, list[int]] = {}
        plain = np.zeros(len(texts), dtype=bool)
        self.lookup: dict[str, int] = {}
        for i, text in enumerate(texts):
            if not text:
                continue
            groups.setdefault(text[0], []).append(i)
            plain[i] = '"' not in text and "\\" not in text and all(ord(c) >= 0x20 for c in text)
            self.lookup.setdefault(text, i)
        self.by_first = {ch: np.array(ids) for ch, ids in groups.items()}
        self.plain = plain
        self.longest = max((len(t) for t in self.lookup), default=1)
        self.ends: list[int] | None = None  # end-of-generation tokens, found on first use
        self._costs: dict[str, int] = {}

    def cost(self, text: str, backend: "Backend", limit: int) -> int:
        """Tokens `encode(text)` takes; the byte count when that alone is within `limit`
        (one token per byte at most, so no need to count)."""
        size = len(text.encode())
        if size <= limit:
            return size
        if text not in self._costs:
            if len(self._costs) > 4096:
                self._costs.clear()
            self._costs[text] = len(self.encode(text, backend))
        return self._costs[text]

    def end_tokens(self, backend: "Backend") -> list[int]:
        if self.ends is None:
            self.ends = [i for i, t in enumerate(self.texts) if not t and backend.is_end(i)][:4]
        return self.ends

    def encode(self, text: str, backend: "Backend") -> list[int]:
        """Forced text as tokens, longest vocabulary match first: exactly `text` once decoded,
        whatever the tokenizer would add around it."""
        ids, i = [], 0
        while i < len(text):
            for size in range(min(self.longest, len(text) - i), 0, -1):
                token = self.lookup.get(text[i:i + size])
                if token is not None:
                    ids.append(token)
                    i += size
                    break
            else:  # a character with no token of its own: the tokenizer's bytes
                ids.extend(backend.tokenize(text[i], special=False))
                i += 1
        return ids


def vocab_of(backend: "Backend") -> Vocab:
    if getattr(backend, "_vocab", None) is None:
        backend._vocab = Vocab(backend.token_texts())
    return backend._vocab


def min_tokens(backend: "Backend", matcher: "Matcher") -> int:
    """Tokens the shortest value the grammar allows takes."""
    return len(vocab_of(backend).encode(matcher.min_text(), backend))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max()
    return shifted - np.log(np.exp(shifted).sum())


def penalize(logits: np.ndarray, history: list[int], penalty: float) -> np.ndarray:
    if penalty != 1.0 and history:
        recent = np.array(sorted(set(history[-REPEAT_LAST_N:])))
        chosen = logits[recent]
        logits[recent] = np.where(chosen > 0, chosen / penalty, chosen * penalty)
    return logits


def _ranked(logits: np.ndarray, pool: np.ndarray | None) -> Iterator[int]:
    """Token ids of `pool` (all when None), likeliest first, ranking only as far as needed: the
    FIRST_CHUNK likeliest (found by one partition, no copy of the logits), then the rest."""
    values = logits if pool is None else logits[pool]
    ids = np.arange(len(values)) if pool is None else pool
    if len(values) > FIRST_CHUNK:
        threshold = np.partition(values, len(values) - FIRST_CHUNK)[len(values) - FIRST_CHUNK]
        part = np.flatnonzero(values >= threshold)  # a tie may add a few
        yield from ids[part[np.argsort(-values[part], kind="stable")]].tolist()
        rest = np.flatnonzero(values < threshold)
        ids, values = ids[rest], values[rest]
    yield from ids[np.argsort(-values, kind="stable")].tolist()


def allowed(logits: np.ndarray, vocab: Vocab, matcher: "Matcher", sampling: "Sampling",
            budget: int, ends: list[int], backend: "Backend") -> list[int]:
    """What `choose` samples from under a grammar, likeliest first: llama.cpp's top-k, then
    top-p, over the tokens the grammar allows next whose completion still fits in `budget`
    tokens after them (end tokens count as allowed where the value may end). Candidates are
    checked lazily, likeliest first, and the scan stops as soon as the top-p cut is certain:
    the tokens not yet checked cannot weigh more than min(what is left of the whole pool,
    (k - found) x the last one found), so a confident step checks a few tokens, not k."""
    k = 1 if sampling.temperature == 0 else (sampling.top_k or UNBOUNDED_TOP_K)
    first = matcher.first_chars()
    pool = None
    if first is not None:
        groups = [vocab.by_first[c] for c in first if c in vocab.by_first]
        pool = np.concatenate(groups) if groups else np.array([], dtype=int)
    complete = matcher.complete
    pending_ends = sorted(ends, key=lambda e: -logits[e]) if complete else []
    top = float(logits.max())  # the weights' common scale; only their ratios matter
    lazy = sampling.top_p < 1.0 and k > 1  # else the scan runs to k: nothing to bound
    seen = {"weight": 0.0, "total": None}  # weight checked so far; the pool's, when needed
    found: list[int] = []
    sums: list[float] = []  # cumulative weights of `found`
    room = matcher.plain_room()

    def accept(token: int, weight: float) -> bool:
        """Add an allowed token; True when the kept set is decided."""
        found.append(token)
        sums.append((sums[-1] if sums else 0.0) + weight)
        if len(found) >= k:
            return True
        if not lazy:
            return False
        most_left = (k - len(found)) * weight  # a bound that costs nothing; then the pool's
        if _cut_is_certain(sums, sampling.top_p, most_left):
            return True
        if seen["total"] is None:  # float32 is enough for a bound with 0.1% to spare
            pooled = logits if pool is None else logits[pool]
            outside = [e for e in ends if pool is not None]  # end tokens have no text: no pool
            seen["total"] = (1.001 * float(np.exp(pooled - top, dtype=np.float32).sum())
                             + sum(np.exp(np.float64(logits[e]) - top) for e in outside))
        return _cut_is_certain(sums, sampling.top_p, min(most_left, seen["total"] - seen["weight"]))

    for checked, token in enumerate(_ranked(logits, pool)):
        if checked >= SCAN_LIMIT and len(found) > len([e for e in found if e in ends]):
            break
        weight = float(np.exp(np.float64(logits[token]) - top))
        while pending_ends and logits[pending_ends[0]] >= logits[token]:
            end = pending_ends.pop(0)
            end_weight = float(np.exp(np.float64(logits[end]) - top))
            seen["weight"] += end_weight if pool is not None else 0.0
            if accept(end, end_weight):
                return _cut(found, logits, sampling)
        seen["weight"] += weight
        text = vocab.texts[token]
        if not text:
            continue
        if vocab.plain[token] and len(text) <= room:
            ok = True  # inside a string, no quote: allowed, and the completion only shrinks
        else:
            after = matcher.advance(text)
            ok = after is not None and vocab.cost(after.min_text(), backend, budget - 1) <= budget - 1
        if ok and accept(token, weight):
            return _cut(found, logits, sampling)
    for end in pending_ends:  # ends less likely than every token checked
        if accept(end, float(np.exp(np.float64(logits[end]) - top))):
            break
    return _cut(found, logits, sampling)


def _cut_is_certain(sums: list[float], top_p: float, most_left: float) -> bool:
    """Whatever the unchecked tokens weigh (0 to `most_left`), the same prefix of `found` passes
    top-p: the first whose share reaches top_p at the lowest total also does at the highest."""
    first = bisect.bisect_left(sums, top_p * sums[-1])  # sums only grow
    return first < len(sums) and sums[first] >= top_p * (sums[-1] + most_left)


def _cut(found: list[int], logits: np.ndarray, sampling: "Sampling") -> list[int]:
    """top-k then top-p over the allowed tokens found, as `choose` does over all tokens."""
    found = sorted(found, key=lambda t: -logits[t])[:sampling.top_k or UNBOUNDED_TOP_K]
    if sampling.temperature == 0 or sampling.top_p >= 1.0 or not found:
        return found
    return found[:_top_p_count(logits[found].astype(np.float64), sampling.top_p)]


def _top_p_count(values: np.ndarray, top_p: float) -> int:
    """How many of `values` (logits, likeliest first) top-p keeps: the first whose mass reaches it."""
    probs = np.exp(values - values.max())
    probs /= probs.sum()
    return int(np.searchsorted(np.cumsum(probs), top_p) + 1)


def choose(logits: np.ndarray, candidates: list[int] | None, sampling: "Sampling",
           rng: np.random.Generator) -> int:
    """llama.cpp's order (None: every token): top-k, top-p, temperature. `candidates` from
    `allowed` are already cut by top-k and top-p, likeliest first."""
    if candidates is None:
        if sampling.temperature == 0:
            return int(np.argmax(logits))
        k = min(sampling.top_k or UNBOUNDED_TOP_K, len(logits) - 1)
        top = np.argpartition(-logits, k)[:k]
        candidates = top[np.argsort(-logits[top], kind="stable")].tolist()
        values = logits[candidates].astype(np.float64)
        if sampling.top_p < 1.0:
            values = values[:_top_p_count(values, sampling.top_p)]
    elif sampling.temperature == 0:
        return candidates[0]
    else:
        values = logits[candidates].astype(np.float64)
    scaled = np.exp((values - values.max()) / sampling.temperature)
    return int(candidates[rng.choice(len(values), p=scaled / scaled.sum())])


def _record(logits: np.ndarray, token: int, vocab: Vocab, top_n: int, out: list) -> None:
    logprobs = log_softmax(logits.astype(np.float64))
    top = []
    if top_n:
        for t in np.argpartition(-logprobs, top_n)[:top_n]:
            top.append((vocab.texts[int(t)] or "", float(logprobs[t])))
        top.sort(key=lambda pair: -pair[1])
    out.append(TokenLogprob(vocab.texts[token] or "", float(logprobs[token]), top))


def guided_tokens(backend: "Backend", prompt: list[int], sampling: "Sampling", cancel: CancelToken,
                  matcher: "Matcher | None", logprobs: list | None = None,
                  top_logprobs: int = 0, outcome: dict | None = None) -> Iterator[int]:
    """Token ids, one step at a time (forced text may come several at once). Ends at an end
    token, at max_new_tokens, or when the grammar's value is complete (then outcome["complete"]
    is set). `logprobs`, when a list, receives one TokenLogprob per token (forced text then goes
    one token per step)."""
    outcome = outcome if outcome is not None else {}
    vocab = vocab_of(backend)
    ends = vocab.end_tokens(backend)
    rng = np.random.default_rng(sampling.seed)
    history = list(prompt)
    stepper = backend.stepper(prompt, cancel)
    produced = 0

    def emit(tokens: list[int], final: bool = False) -> Iterator[int]:
        nonlocal produced
        for index, token in enumerate(tokens):
            if logprobs is not None:  # one token per step, so each has its own logits
                if index:
                    stepper.feed([tokens[index - 1]])
                _record(penalize(stepper.logits.copy(), history, sampling.repetition_penalty),
                        token, vocab, top_logprobs, logprobs)
            history.append(token)
            produced += 1
            yield token
        if not final and produced < sampling.max_new_tokens:
            stepper.feed(tokens if logprobs is None else tokens[-1:])

    while produced < sampling.max_new_tokens:
        budget = sampling.max_new_tokens - produced
        if matcher is not None and not matcher.free:
            if matcher.finished:
                outcome["complete"] = True
                return
            rest = matcher.min_text()
            forced = "" if logprobs is not None else matcher.forced_text()
            after = matcher.advance(forced) if forced else None
            forced_ids = vocab.encode(forced, backend) if forced else []
            if vocab.cost(rest, backend, budget - 1) >= budget or (forced and len(forced_ids) + vocab.cost(
                    after.min_text(), backend, budget - len(forced_ids)) > budget):
                # 1. Out of room: finish the value the shortest way.
                outcome["complete"] = True
                yield from emit(vocab.encode(rest, backend), final=True)
                return
            if forced:  # 2. Nothing to choose: write it.
                matcher = after
                yield from emit(forced_ids, final=matcher.finished)
                cancel.raise_if_cancelled()
                continue
        # 3. Sample one token (from the allowed ones under a grammar).
        logits = penalize(stepper.logits.copy(), history, sampling.repetition_penalty)
        candidates = None
        if matcher is not None and not matcher.free:
            candidates = allowed(logits, vocab, matcher, sampling, budget, ends, backend)
        token = choose(logits, candidates, sampling, rng)
        if backend.is_end(token):
            outcome["complete"] = matcher is not None and not matcher.free
            yield token
            return
        if candidates is not None:
            matcher = matcher.advance(vocab.texts[token])
        yield from emit([token], final=candidates is not None and matcher.finished)
        cancel.raise_if_cancelled()
