"""AUTOMATIC1111's prompt editing, alternating words and composable `AND`, as text: which prompt
each denoising step reads. No torch here (engines/diffusion/prompt_editing.py encodes and swaps).

    [from:to:when]   `from` until step `when`, then `to`      a [fantasy:cyberpunk:16] landscape
    [to:when]        nothing, then `to` (added after `when`)   a [wooden:0.5] house
    [from::when]     `from`, removed after `when`             a [red::4] ball
    [a|b|c]          a different word each step (alternating)  a [cat|dog] in a field
    p1 AND p2 :0.7   composable diffusion: both prompts guide, the second at weight 0.7

`when` as A1111 (>= 1.6) reads it: written with a decimal point it is a fraction of the steps
(`0.5`, `.25`), otherwise a step number (`16`); beyond the last step it never switches. Nested
and combined with weights: `[(red:1.3):[blue:green:0.8]:5]`. With A1111's "Use old prompt
editing timelines" (its `use_old_scheduling` option, `old=True` here) a number below 1 is a
fraction and any other a step (`1.0` is step 1, `2.5` step 2), and a hires fix's second pass
reads `when` on the first pass's steps, from 0.

A schedule is [(end step, text), ...]: denoising step s (0-based, as A1111's CFG denoiser counts)
uses the first entry with s <= end step. This follows A1111's `get_learned_conditioning_prompt_
schedules` and `get_multicond_prompt_list` (modules/prompt_parser.py), including what it does
with stray brackets (kept as text) and its parse failures (the whole prompt, unscheduled); the
parser is our own recursive descent instead of A1111's lark grammar.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

RE_AND = re.compile(r"\bAND\b")
RE_WEIGHT = re.compile(r":\s*([-+]?(?:\d+\.?|\d*\.\d+))$")  # on the right-stripped text
MAX_AND_PARTS = 8  # each part is one more UNet row per image and step
RE_NUMBER = re.compile(r"\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*")
RE_PLAIN = re.compile(r"(?:[^\\\[\]():|]|\\.)+", re.S)
SPECIAL = "()[]:|"
MAX_DEPTH = 100  # brackets nested deeper than this: the prompt is read unscheduled


# ------------------------------------------------------------------ AND
def split_and(prompt: str) -> list[tuple[str, float]]:
    """[(sub-prompt, weight), ...] as A1111 splits a positive prompt on `AND`; a trailing
    `:number` on each part is its weight (1 when absent).

    >>> split_and("a cat AND a dog :0.7")
    [('a cat', 1.0), (' a dog', 0.7)]
    """
    parts = []
    for sub in RE_AND.split(prompt):
        # A1111's ^(.*?)(?:\s*:\s*(number))?\s*$ without its lazy scan (quadratic on long spaces)
        text = sub.rstrip()
        match = RE_WEIGHT.search(text)
        if match:
            text, weight = text[:match.start()].rstrip(), float(match.group(1))
        else:
            weight = 1.0
        parts.append((text, weight))
    return parts


# ------------------------------------------------------------------ the parse tree
@dataclass
class Group:  # (...), (...:...) or [...]: kept as written, its insides may be scheduled
    opening: str
    parts: list[list]


@dataclass
class Scheduled:  # [from:to:when] / [to:when] / [from::when]
    before: list | None
    after: list
    when: str


@dataclass
class Alternate:  # [a|b|c]
    options: list[list]


class ParseError(ValueError):
    pass


class _Parser:
    """Recursive descent over A1111's schedule grammar. Outside any bracket, a bracket that does
    not open a valid construct is plain text (A1111's `start` rule); inside one, it is an error
    that undoes the enclosing construct. Results per position are memoised: linear time."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.memo: dict[int, tuple | None] = {}
        self.depth = 0

    def top(self) -> list:
        nodes, i, text = [], 0, self.text
        while i < len(text):
            c = text[i]
            if c in "([":
                got = self.bracket(i)
                if got is not None:
                    nodes.append(got[0])
                    i = got[1]
                    continue
            if c in "()[]:":
                nodes.append(c)
                i += 1
                continue
            plain = RE_PLAIN.match(text, i)
            if plain is None:  # "|" or a lone trailing "\": A1111's grammar rejects the prompt
                raise ParseError(f"unexpected {c!r} at {i}")
            nodes.append(plain.group(0))
            i = plain.end()
        return nodes

    def sequence(self, i: int, stops: str) -> tuple[list, int] | None:
        """Nodes up to a character in `stops` (not consumed); None if none comes."""
        nodes, text = [], self.text
        while i < len(text):
            c = text[i]
            if c in stops:
                return nodes, i
            if c in "([":
                got = self.bracket(i)
                if got is None:
                    return None
                nodes.append(got[0])
                i = got[1]
            elif c in SPECIAL:
                return None
            else:
                plain = RE_PLAIN.match(text, i)
                if plain is None:
                    return None
                nodes.append(plain.group(0))
                i = plain.end()
        return None

    def bracket(self, i: int) -> tuple | None:
        if i not in self.memo:
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise ParseError(f"brackets nested deeper than {MAX_DEPTH}")
            self.memo[i] = self._bracket(i)
            self.depth -= 1
        return self.memo[i]

    def _bracket(self, i: int) -> tuple | None:
        opening = self.text[i]
        close, stops = (")", ":)") if opening == "(" else ("]", ":|]")
        parts, separators, j = [], [], i + 1
        while True:
            got = self.sequence(j, stops)
            if got is None:
                return None
            nodes, j = got
            parts.append(nodes)
            if self.text[j] == close:
                j += 1
                break
            separators.append(self.text[j])
            j += 1
        if opening == "(":
            return (Group("(", parts), j) if len(separators) <= 1 else None
        if not separators:
            return Group("[", parts), j
        if all(s == "|" for s in separators):
            return Alternate(parts), j
        if all(s == ":" for s in separators) and len(separators) <= 2:
            last = parts[-1]
            if len(last) == 1 and isinstance(last[0], str) and RE_NUMBER.fullmatch(last[0]):
                before = parts[0] if len(parts) == 3 else None
                return Scheduled(before, parts[-2], RE_NUMBER.fullmatch(last[0]).group(1)), j
        return None


def parse(text: str) -> list:
    return _Parser(text).top()


# ------------------------------------------------------------------ schedules
@dataclass(frozen=True)
class Clock:
    steps: int  # steps of this pass
    hires_base: int | None = None  # a hires fix's second pass: the first pass's steps
    old: bool = False  # A1111's use_old_scheduling (see the module docstring)

    @classmethod
    def for_pass(cls, steps: int, hires_base: int | None, old: bool) -> "Clock":
        """The old timelines ignore the hires pass: every `when` is read on the first pass's
        steps (A1111 schedules over base_steps, with no offsets)."""
        if old:
            return cls(hires_base or steps, None, True)
        return cls(steps, hires_base)

    def when(self, number: str) -> int:
        """A1111's switch step: "0.5" a fraction of the steps, "16" a step; at most `steps`.
        In a hires pass A1111 counts on from the first pass: "16" is step 16 - base steps of
        this pass, "1.5" half of this pass (1.0 being the first pass's end). Old timelines:
        below 1 a fraction, otherwise a step, whatever the decimal point."""
        value = float(number)
        if self.old:
            value = value * self.steps if value < 1 else value
        elif "." in number:
            value = (value - (1.0 if self.hires_base is not None else 0.0)) * self.steps
        else:
            value -= self.hires_base or 0
        return min(self.steps, int(value))


def _switch_steps(nodes: list, clock: Clock, found: set[int]) -> None:
    for node in nodes:
        if isinstance(node, Group):
            for part in node.parts:
                _switch_steps(part, clock, found)
        elif isinstance(node, Scheduled):
            when = clock.when(node.when)
            if when >= 1:
                found.add(when)
            _switch_steps(node.before or [], clock, found)
            _switch_steps(node.after, clock, found)
        elif isinstance(node, Alternate):
            found.update(range(1, clock.steps + 1))
            for option in node.options:
                _switch_steps(option, clock, found)


def _render(nodes: list, step: int, clock: Clock) -> str:
    out = []
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, Group):
            inner = ":".join(_render(part, step, clock) for part in node.parts)
            out.append(node.opening + inner + (")" if node.opening == "(" else "]"))
        elif isinstance(node, Scheduled):
            chosen = (node.before or []) if step <= clock.when(node.when) else node.after
            out.append(_render(chosen, step, clock))
        else:  # Alternate
            out.append(_render(node.options[(step - 1) % len(node.options)], step, clock))
    return "".join(out)


def prompt_schedule(prompt: str, steps: int, hires_base: int | None = None,
                    old: bool = False) -> list[tuple[int, str]]:
    """[(end step, text), ...] for `steps` steps (of a hires fix's second pass after a first
    pass of `hires_base` steps, when given); `old`: A1111's old prompt editing timelines.

    >>> prompt_schedule("a [fantasy:cyberpunk:16] landscape", 20)
    [(16, 'a fantasy landscape'), (20, 'a cyberpunk landscape')]
    """
    clock = Clock.for_pass(steps, hires_base, old)
    try:
        tree = parse(prompt)
    except ParseError:
        return [(clock.steps, prompt)]
    found = {clock.steps}
    _switch_steps(tree, clock, found)
    return [(end, _render(tree, end, clock)) for end in sorted(found)]


def old_timelines_differ(texts: list[str], steps: int, hires_base: int | None = None) -> bool:
    """Whether the old timelines schedule any of these texts differently from the new ones:
    A1111 writes "Old prompt editing timelines: True" into the infotext only then."""
    return any(prompt_schedule(text, steps, hires_base, old=True)
               != prompt_schedule(text, steps, hires_base) for text in texts)


def text_at(schedule: list[tuple[int, str]], step: int) -> int:
    """Index of the entry that 0-based denoising step `step` uses (A1111's
    reconstruct_cond_batch: the first whose end step is >= step)."""
    for index, (end, _) in enumerate(schedule):
        if step <= end:
            return index
    return 0  # past the end (A1111 falls back to the first entry too)
