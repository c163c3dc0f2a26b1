"""The constrained sampler's lazy scan (engines/llm/guided.py `allowed`) keeps exactly the tokens
llama.cpp's order keeps over the allowed ones: top-k of every allowed token (end tokens where the
value may end), then top-p. Checked against a brute-force reference that checks every token, on
random logits at many points of a JSON Schema and of JSON mode, with small and large budgets."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest

from engines.llm import guided
from engines.llm.grammar import AnyObject
from engines.llm.guided import UNBOUNDED_TOP_K, Vocab, allowed
from engines.llm.jsonschema import compile_schema
from engines.llm.matcher import Matcher
from engines.llm.sampling import Sampling

SCHEMA = {"type": "object", "required": ["title", "year", "cast"], "properties": {
    "title": {"type": "string"}, "year": {"type": "integer", "minimum": 1900, "maximum": 2030},
    "genre": {"enum": ["drama", "comedy"]},
    "cast": {"type": "array", "items": {"type": "string"}}}}
EXAMPLE = {"title": 'A "B"', "year": 1999, "genre": "drama", "cast": ["Ann", "Bo"]}
PIECES = ['{', '}', '{"', '"', '",', '":', ': ', ', ', ',', '[', ']', '["', '"]', ' ', '\\n', 'a',
          'An', 'Ann', 'Bo', 'title', 'year', 'cast', 'genre', 'drama', 'comedy', 'the', ' film',
          '1', '19', '99', '2', '0', '-', '.', '5e', 'true', 'false', 'null', '\\', '\\"', 'x"}',
          '"}', '}]', '"title"', '"year": ', '"cast": [', 'dr', 'ama"', 'é', '1999', '3000']


class Backend:
    """What `allowed` asks of a backend: end tokens and tokenizing text the vocabulary lacks."""
    def is_end(self, token: int) -> bool:
        return token >= len(PIECES)

    def tokenize(self, text: str, special: bool = False) -> list[int]:
        return [PIECES.index(c) if c in PIECES else 0 for c in text]


def reference(logits, vocab, matcher, sampling, budget, ends, backend) -> list[int]:
    """Check every token, then top-k and top-p over the allowed ones."""
    ok = [e for e in ends] if matcher.complete else []
    room = matcher.plain_room()
    for token, text in enumerate(vocab.texts):
        if text and vocab.plain[token] and len(text) <= room:
            ok.append(token)  # inside a string: as the engine's rule (the completion only shrinks)
        elif text:
            after = matcher.advance(text)
            if after is not None and vocab.cost(after.min_text(), backend, budget - 1) <= budget - 1:
                ok.append(token)
    ok = sorted(ok, key=lambda t: -logits[t])
    ok = ok[:1] if sampling.temperature == 0 else ok[:sampling.top_k or UNBOUNDED_TOP_K]
    if sampling.temperature == 0 or sampling.top_p >= 1.0 or not ok:
        return ok
    probs = np.exp(logits[ok].astype(np.float64) - logits[ok].max())
    probs /= probs.sum()
    return ok[:int(np.searchsorted(np.cumsum(probs), sampling.top_p) + 1)]


def points(node, text: str):
    """The matcher after every prefix of `text`."""
    for cut in range(len(text)):
        matcher = Matcher(node).advance(text[:cut])
        assert matcher is not None, text[:cut]
        yield matcher


@pytest.mark.parametrize("node, text", [(compile_schema(SCHEMA), json.dumps(EXAMPLE)),
                                        (AnyObject(), json.dumps({"a": [1, {"b": None}], "c": "d"}))])
def test_the_lazy_scan_keeps_what_checking_every_token_keeps(node, text, monkeypatch):
    stops = []  # the early stops, so the test covers them
    certain = guided._cut_is_certain
    monkeypatch.setattr(guided, "_cut_is_certain", lambda *a: stops.append(certain(*a)) or stops[-1])
    texts = PIECES + [None, None]  # two end tokens
    vocab, backend, rng = Vocab(texts), Backend(), random.Random(0)
    ends = vocab.end_tokens(backend)
    checked = 0
    for matcher in points(node, text):
        for _ in range(6):
            # peaked (a confident model: the lazy stop) or flat (the scan runs to k)
            scale = rng.choice([0.5, 3.0, 12.0])
            logits = np.array([rng.gauss(0, scale) for _ in texts], dtype=np.float32)
            sampling = Sampling(rng.choice([0.0, 0.7, 1.3]), rng.choice([0.5, 0.9, 0.95, 1.0]),
                                rng.choice([0, 1, 3, 40]), 1.0, 0, 64)
            budget = rng.choice([3, 8, 64])
            got = allowed(logits, vocab, matcher, sampling, budget, ends, backend)
            assert got == reference(logits, vocab, matcher, sampling, budget, ends, backend)
            checked += 1
    assert checked > 100 and stops.count(True) > 20
