"""Constrained decoding, part 1: the grammar as a tree of nodes, and the automaton's frames.

A JSON Schema (engines/llm/jsonschema.py), "any JSON object", or a tool call is a small tree of
these nodes; a `Matcher` (engines/llm/matcher.py) runs that tree as a nondeterministic pushdown automaton over characters. The engine
asks it, for every candidate token, whether the token's text can come next (`advance`), and
before every step whether the text is already decided (`forced_text`, written without asking the
model) or whether the token budget is about to run out (`min_text`: the shortest way to finish,
written as is). So a reply under a schema always parses and validates, even when `max_tokens`
is small and the model is tiny: llama.cpp's grammars cannot know the token budget; this can.

The JSON written is compact and in schema order: {"a": 1, "b": [true, null]}.

  node = compile_schema(schema)            # engines.llm.jsonschema; ParamError names the keyword
  m = Matcher(node); m = m.advance('{"a')  # engines.llm.matcher; None when the text cannot come next
"""
from __future__ import annotations

import json
from typing import NamedTuple

from engines.base import ParamError

MAX_INT_DIGITS = 15  # longer numbers are refused: they only loop on small models
MAX_FRACTION_DIGITS = 6
ANY_DEPTH = 3  # nesting allowed inside free-form JSON (json_object mode)
# ---------------------------------------------------------------- nodes (a compiled schema)
class _Cycle(Exception):
    """A schema needs itself to finish (computing its shortest text went round)."""


class Node:
    """One schema piece. `alts()` gives the frame tuples (top of stack last) that start it;
    `min_text` is the shortest text it accepts (computed on first use: schemas may recurse)."""
    _min: str | None = None
    _busy = False

    @property
    def min_text(self) -> str:
        if self._min is None:
            if self._busy:
                raise _Cycle()
            self._busy = True
            try:
                self._min = self.shortest()
            finally:
                self._busy = False
        return self._min

    def shortest(self) -> str:
        raise NotImplementedError

    def alts(self) -> list[tuple]:
        raise NotImplementedError


class Lit(Node):
    def __init__(self, text: str) -> None:
        self.text = text

    def shortest(self):
        return self.text

    def alts(self):
        return [(LitF("L", self.text, 0),)]


class Str(Node):
    def __init__(self, min_len: int = 0, max_len: int = 10_000) -> None:
        self.min_len, self.max_len = min_len, max_len

    def shortest(self):
        return '"' + "x" * self.min_len + '"'

    def alts(self):
        return [(StrF("S", self.min_len, self.max_len, 0, 0), LitF("L", '"', 0))]


class Num(Node):
    def __init__(self, integer: bool, low: int | None = None, high: int | None = None) -> None:
        self.integer = integer or low is not None or high is not None  # bounds: integers only
        self.low = -10 ** MAX_INT_DIGITS + 1 if low is None else low
        self.high = 10 ** MAX_INT_DIGITS - 1 if high is None else high
        if self.low > self.high:
            raise ParamError("response_format", f"no number lies between {low} and {high}")

    def shortest(self):
        return num_min_text(self, "")

    def alts(self):
        return [(NumF("N", self, ""),)]


class Obj(Node):
    def __init__(self) -> None:
        self.props: list[tuple[str, Node, bool]] = []  # (key, value, required), schema order

    def shortest(self):
        return "{" + obj_rest_text(self, 0, False) + "}"

    def alts(self):
        return [(ObjF("O", self, 0, False), LitF("L", "{", 0))]


class Arr(Node):
    def __init__(self, item: Node, min_items: int = 0, max_items: int = 1_000,
                 open_: str = "[", sep: str = ", ", close: str = "]") -> None:
        self.item, self.min_items, self.max_items = item, min_items, max_items
        self.open, self.sep, self.close = open_, sep, close

    def shortest(self):
        items = [self.item.min_text] * self.min_items if self.min_items else []
        return self.open + self.sep.join(items) + self.close

    def alts(self):
        return [(ArrF("A", self, 0), LitF("L", self.open, 0))]


class Union(Node):
    def __init__(self, options: list[Node]) -> None:
        self.options = options

    def shortest(self):
        found = []
        for option in self.options:
            try:
                found.append(option.min_text)
            except _Cycle:  # e.g. Optional[Self]: the other option ends it
                continue
        if not found:
            raise _Cycle()
        return min(found, key=len)

    def alts(self):
        return [alt for option in self.options for alt in option.alts()]


class Seq(Node):
    def __init__(self, parts: list[Node]) -> None:
        self.parts = parts

    def shortest(self):
        return "".join(p.min_text for p in self.parts)

    def alts(self):
        return [tuple(StartF("V", p) for p in reversed(self.parts))]


class Any(Node):
    """Any JSON value (json_object mode), nested at most `depth` levels."""

    def __init__(self, depth: int) -> None:
        self.depth = depth

    def shortest(self):
        return "0"

    def alts(self):
        options: list[Node] = [Str(0, 2_000), Num(False), Lit("true"), Lit("false"), Lit("null")]
        alts = [alt for o in options for alt in o.alts()]
        if self.depth > 0:
            alts.append((AnyObjF("J", self.depth - 1, 0), LitF("L", "{", 0)))
            alts.append((ArrF("A", any_array(self.depth - 1), 0), LitF("L", "[", 0)))
        return alts


class AnyObject(Node):
    """Any JSON object: the top of json_object mode."""

    def shortest(self):
        return "{}"

    def __init__(self, depth: int = ANY_DEPTH) -> None:
        self.depth = depth

    def alts(self):
        return [(AnyObjF("J", self.depth, 0), LitF("L", "{", 0))]


class Free(Node):
    """Any text at all (tool_choice "auto": the model may answer in words)."""

    def shortest(self):
        return ""

    def alts(self):
        return [(FreeF("F"),)]


class Ref(Node):
    """A $ref, resolved on use so that recursive schemas compile."""

    def __init__(self, compiler: "_Compiler", name: str) -> None:
        self.compiler, self.name = compiler, name

    @property
    def target(self) -> Node:
        return self.compiler.resolve(self.name)

    def shortest(self):
        return self.target.min_text

    def alts(self):
        return self.target.alts()


def any_array(depth: int) -> Arr:
    return Arr(Any(depth))


# ---------------------------------------------------------------- frames (automaton state)
# Frames are tuples (fast to hash and copy); the first field names the kind. A stack is a tuple
# of frames with its top last; an empty stack is a finished value.
class LitF(NamedTuple):
    kind: str
    text: str
    i: int


class StrF(NamedTuple):
    kind: str
    min_len: int
    max_len: int
    n: int  # characters so far
    esc: int  # 0 plain, 1 after a backslash, -k: k hex digits of \\uXXXX still to come


class NumF(NamedTuple):
    kind: str
    node: Num
    text: str


class ObjF(NamedTuple):
    kind: str
    node: Obj
    i: int  # next property to consider
    any_written: bool


class ArrF(NamedTuple):
    kind: str
    node: Arr
    count: int


class AnyObjF(NamedTuple):
    kind: str
    depth: int
    count: int


class StartF(NamedTuple):
    kind: str
    node: Node


class FreeF(NamedTuple):
    kind: str


def obj_rest_text(node: Obj, i: int, any_written: bool) -> str:
    parts = []
    for key, value, required in node.props[i:]:
        if required:
            parts.append((", " if any_written or parts else "") + json.dumps(key) + ": " + value.min_text)
    return "".join(parts)


# ---------------------------------------------------------------- numbers
def num_prefix_ok(node: Num, text: str) -> bool:
    """Can `text` still grow into a number this node accepts?"""
    sign, body = ("-", text[1:]) if text.startswith("-") else ("", text)
    whole, dot, fraction = body.partition(".")
    if not whole:
        return not dot and (not sign or node.low < 0)
    if not whole.isdigit() or (len(whole) > 1 and whole[0] == "0") or len(whole) > MAX_INT_DIGITS:
        return False
    if sign and whole == "0" and not dot:
        return node.low < 0 and not node.integer  # "-0." can still become -0.5
    if dot:
        return not node.integer and (not fraction or fraction.isdigit()) and len(fraction) <= MAX_FRACTION_DIGITS
    return _int_range_of_prefix(sign, whole, node) is not None


def num_complete(node: Num, text: str) -> bool:
    sign, body = ("-", text[1:]) if text.startswith("-") else ("", text)
    whole, dot, fraction = body.partition(".")
    if not whole or (dot and not fraction) or (sign and whole == "0" and not fraction):
        return False
    if dot:
        return num_prefix_ok(node, text)
    return num_prefix_ok(node, text) and node.low <= int(text) <= node.high


def _int_range_of_prefix(sign: str, digits: str, node: Num) -> int | None:
    """The number of digits still needed (0..) to reach a value in range, or None if none can."""
    value = int(digits)
    for extra in range(0, MAX_INT_DIGITS - len(digits) + 1):
        if value == 0 and extra:
            return None  # "0" cannot grow
        low, high = value * 10 ** extra, (value + 1) * 10 ** extra - 1 if extra else value
        if sign:
            low, high = -high, -low
        if low <= node.high and high >= node.low:
            return extra
    return None


def num_min_text(node: Num, text: str) -> str:
    """The shortest completion of a number begun as `text`."""
    if num_complete(node, text):
        return ""
    sign, body = ("-", text[1:]) if text.startswith("-") else ("", text)
    whole, dot, _ = body.partition(".")
    if dot:
        return "0"
    if not whole:
        if sign:
            return str(min(-1, node.high))[1:] if node.high < 0 else "1"
        return str(max(node.low, min(0, node.high)))
    extra = _int_range_of_prefix(sign, whole, node) or 0
    value = int(whole) * 10 ** extra
    if sign:
        value = -max(-node.high, value)
        return str(-value)[len(whole):] if value < 0 else ""
    return str(max(value, node.low))[len(whole):]
