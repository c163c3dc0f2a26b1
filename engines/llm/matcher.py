"""Constrained decoding, part 2: running a grammar (engines/llm/grammar.py) over characters.

A stack is a tuple of frames with its top last; epsilon frames choose what comes next without
reading; `Matcher` keeps every stack still alive after the text read so far (the automaton is
nondeterministic: unions and optional properties are followed in parallel)."""
from __future__ import annotations

import json

from engines.llm.grammar import (Any, AnyObjF, ArrF, FreeF, LitF, Node, NumF, ObjF, StartF, StrF,
                                 any_array, num_complete, num_min_text, num_prefix_ok,
                                 obj_rest_text)

EPSILON = {"O", "A", "J", "V"}  # frames that only choose what comes next, reading nothing
ESCAPES = '"\\/bfnrt'
HEX = "0123456789abcdefABCDEF"


def epsilon_alts(frame) -> list[tuple]:
    """What an epsilon frame turns into (each a tuple of frames, top last)."""
    kind = frame.kind
    if kind == "V":
        return frame.node.alts()
    if kind == "O":
        node, alts = frame.node, []
        for j in range(frame.i, len(node.props)):
            key, value, required = node.props[j]
            sep = (", " if frame.any_written else "") + json.dumps(key) + ": "
            alts.append((ObjF("O", node, j + 1, True), StartF("V", value), LitF("L", sep, 0)))
            if required:  # later properties cannot come before a required one
                return alts
        return alts + [(LitF("L", "}", 0),)]
    if kind == "A":
        node, count, alts = frame.node, frame.count, []
        if count >= node.min_items:
            alts.append((LitF("L", node.close, 0),))
        if count < node.max_items:
            item = (ArrF("A", node, count + 1), StartF("V", node.item))
            alts.append(item + ((LitF("L", node.sep, 0),) if count else ()))
        return alts
    # "J": any object: close, or one more "key": value
    alts = [(LitF("L", "}", 0),)]
    key_open = LitF("L", ", \"" if frame.count else "\"", 0)
    alts.append((AnyObjF("J", frame.depth, frame.count + 1), StartF("V", Any(frame.depth)),
                 LitF("L", ": ", 0), StrF("S", 1, 64, 0, 0), key_open))
    return alts


def step(frame, ch: str) -> list[tuple[tuple, bool]]:
    """(replacement frames, consumed) for a reading frame and one character."""
    kind = frame.kind
    if kind == "L":
        if ch != frame.text[frame.i]:
            return []
        return [(((LitF("L", frame.text, frame.i + 1),) if frame.i + 1 < len(frame.text) else ()), True)]
    if kind == "S":
        return _string_step(frame, ch)
    if kind == "N":
        out = []
        text = frame.text + ch
        if num_prefix_ok(frame.node, text):
            out.append(((NumF("N", frame.node, text),), True))
        if num_complete(frame.node, frame.text):
            out.append(((), False))  # the number ended; the character belongs to what follows
        return out
    if kind == "F":
        return [((frame,), True)]
    raise AssertionError(kind)


def _string_step(f: StrF, ch: str) -> list[tuple[tuple, bool]]:
    if f.esc == 1:
        if ch == "u":
            return [((f._replace(esc=-4),), True)]
        return [((f._replace(n=f.n + 1, esc=0),), True)] if ch in ESCAPES else []
    if f.esc < 0:
        if ch not in HEX:
            return []
        return [((f._replace(n=f.n + (f.esc == -1), esc=0 if f.esc == -1 else f.esc + 1),), True)]
    if ch == '"':
        return [((), True)] if f.n >= f.min_len else []
    if ord(ch) < 0x20 or f.n >= f.max_len:
        return []
    if ch == "\\":
        return [((f._replace(esc=1),), True)]
    return [((f._replace(n=f.n + 1),), True)]


def frame_min_text(frame) -> str:
    kind = frame.kind
    if kind == "L":
        return frame.text[frame.i:]
    if kind == "S":
        done = {1: "n", 0: ""}.get(frame.esc, "0" * -frame.esc) if frame.esc else ""
        n = frame.n + (1 if frame.esc else 0)
        return done + "x" * max(0, frame.min_len - n) + '"'
    if kind == "N":
        return num_min_text(frame.node, frame.text)
    if kind == "O":
        return obj_rest_text(frame.node, frame.i, frame.any_written) + "}"
    if kind == "A":
        node, missing = frame.node, max(0, frame.node.min_items - frame.count)
        items = "".join((node.sep if frame.count or k else "") + node.item.min_text for k in range(missing))
        return items + node.close
    if kind == "J":
        return "}"
    if kind == "V":
        return frame.node.min_text
    return ""  # free text may end anywhere


# ---------------------------------------------------------------- the matcher
class Matcher:
    """The set of automaton stacks alive after the text read so far."""

    def __init__(self, node: Node, stacks: tuple = None) -> None:  # type: ignore[assignment]
        self.node = node
        self.stacks = stacks if stacks is not None else ((StartF("V", node),),)

    def advance(self, text: str) -> "Matcher | None":
        stacks = self.stacks
        for ch in text:
            out: dict[tuple, None] = {}
            for stack in stacks:
                _feed(stack, ch, out)
            if not out:
                return None
            stacks = tuple(out)
        return Matcher(self.node, stacks)

    @property
    def complete(self) -> bool:
        """The value may end here (a stack is finished, or free text)."""
        return any(_can_finish(s) for s in self.stacks)

    @property
    def finished(self) -> bool:
        """Nothing more may be written."""
        return all(not s for s in self.stacks)

    @property
    def free(self) -> bool:
        """Only free text is left: sample without checks."""
        return all(s and s[-1].kind == "F" for s in self.stacks)

    def plain_room(self) -> int:
        """Inside a JSON string on every path: how many plain characters may still come."""
        room = None
        for stack in self.stacks:
            top = stack[-1] if stack else None
            if top is None or top.kind != "S" or top.esc:
                return 0
            room = top.max_len - top.n if room is None else min(room, top.max_len - top.n)
        return room or 0

    def min_text(self) -> str:
        """The shortest text that finishes the value from here."""
        return min((_stack_min_text(s) for s in self.stacks), key=len)

    def first_chars(self) -> set[str] | None:
        """The characters that may come next, or None when too many to list (inside a string)."""
        found: set[str] = set()
        for stack in self.stacks:
            chars = _first(stack)
            if chars is None:
                return None
            found |= chars
        return found

    def forced_text(self, limit: int = 64) -> str:
        """Text that is the only way on from here (keys, separators): written without sampling."""
        matcher, text = self, ""
        while len(text) < limit and not matcher.complete:
            chars = matcher.first_chars()
            if chars is None or len(chars) != 1:
                break
            ch = next(iter(chars))
            nxt = matcher.advance(ch)
            if nxt is None:
                break
            matcher, text = nxt, text + ch
        return text


def _feed(stack: tuple, ch: str, out: dict) -> None:
    if not stack:
        return
    top = stack[-1]
    if top.kind in EPSILON:
        for alt in epsilon_alts(top):
            _feed(stack[:-1] + alt, ch, out)
        return
    for replacement, consumed in step(top, ch):
        new = stack[:-1] + replacement
        if consumed:
            out[new] = None
        else:
            _feed(new, ch, out)


def _can_finish(stack: tuple) -> bool:
    if not stack:
        return True
    top = stack[-1]
    if top.kind == "F":
        return True
    if top.kind == "N" and num_complete(top.node, top.text):
        return _can_finish(stack[:-1])
    if top.kind in EPSILON:
        return any(_can_finish(stack[:-1] + alt) for alt in epsilon_alts(top))
    return False


def _stack_min_text(stack: tuple) -> str:
    return "".join(frame_min_text(f) for f in reversed(stack))


def _first(stack: tuple) -> set[str] | None:
    if not stack:
        return set()
    top = stack[-1]
    if top.kind in EPSILON:
        found: set[str] = set()
        for alt in epsilon_alts(top):
            chars = _first(stack[:-1] + alt)
            if chars is None:
                return None
            found |= chars
        return found
    if top.kind == "L":
        return {top.text[top.i]}
    if top.kind == "S":
        if top.esc == 1:
            return set(ESCAPES + "u")
        if top.esc < 0:
            return set(HEX)
        if top.n >= top.max_len:
            return {'"'}
        return None
    if top.kind == "N":
        chars = {c for c in "-0123456789." if num_prefix_ok(top.node, top.text + c)}
        if num_complete(top.node, top.text):
            rest = _first(stack[:-1])
            return None if rest is None else chars | rest
        return chars
    return None  # free text
