"""Constrained decoding, part 3: a JSON Schema as a grammar (engines/llm/grammar.py).

Supported: type (and lists of types), properties + required (written in schema order),
items, minItems/maxItems, enum, const, anyOf/oneOf, allOf of one schema, local $ref/$defs
(recursion included), minLength/maxLength, integer minimum/maximum (exclusive too; bounded
numbers are written as integers), additionalProperties (an object without properties: any
object). Anything else (pattern, most formats, multipleOf...) is refused with a ParamError
naming the field, rather than producing replies that fail validation.
"""
from __future__ import annotations

import json
import math

from engines.base import ParamError
from engines.llm.grammar import (ANY_DEPTH, Any, AnyObject, Arr, Lit, Node, Num, Obj, Ref, Str, Union,
                                 _Cycle)

SUPPORTED = {"type", "properties", "required", "items", "enum", "const", "anyOf", "oneOf", "allOf",
             "$ref", "$defs", "definitions", "minItems", "maxItems", "minLength", "maxLength",
             "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "additionalProperties",
             "title", "description", "default", "examples", "$schema", "$id", "strict", "format"}
FORMATS = {None, "uuid", "email", "uri"}  # free strings that validators accept loosely; others refused


# ---------------------------------------------------------------- JSON Schema -> nodes
class _Compiler:
    def __init__(self, root: dict, field: str) -> None:
        self.root, self.field = root, field
        self.defs: dict[str, Node] = {}
        self.resolving: set[str] = set()

    def fail(self, message: str) -> ParamError:
        return ParamError(self.field, f"`{self.field}`: {message}")

    def resolve(self, name: str) -> Node:
        if name not in self.defs:
            if name in self.resolving:
                raise self.fail(f"the schema {name!r} requires itself without end")
            self.resolving.add(name)
            self.defs[name] = self.compile(self._lookup(name))
            self.resolving.discard(name)
        return self.defs[name]

    def _lookup(self, ref: str) -> dict:
        if not ref.startswith("#/"):
            raise self.fail(f"only local $ref (#/...) are supported, got {ref!r}")
        target: Any = self.root
        for part in ref[2:].split("/"):
            if not isinstance(target, dict) or part not in target:
                raise self.fail(f"$ref {ref!r} points nowhere")
            target = target[part]
        if not isinstance(target, dict):
            raise self.fail(f"$ref {ref!r} is not a schema")
        return target

    def compile(self, schema: Any) -> Node:
        if schema is True or schema == {}:
            return Any(ANY_DEPTH)
        if not isinstance(schema, dict):
            raise self.fail(f"a schema must be an object, got {schema!r}")
        unknown = sorted(set(schema) - SUPPORTED)
        if unknown:
            raise self.fail(f"unsupported JSON Schema keyword(s) {', '.join(unknown)}")
        if schema.get("format") not in FORMATS:
            raise self.fail(f"string format {schema['format']!r} is not supported")
        if "$ref" in schema:
            ref = schema["$ref"]
            return Ref(self, ref)
        if "const" in schema:
            return Lit(json.dumps(schema["const"]))
        if "enum" in schema:
            values = schema["enum"]
            if not isinstance(values, list) or not values:
                raise self.fail("`enum` must be a non-empty list")
            return Union([Lit(json.dumps(v)) for v in values])
        for key in ("anyOf", "oneOf"):
            if key in schema:
                return Union([self.compile(s) for s in schema[key]])
        if "allOf" in schema:
            if len(schema["allOf"]) != 1:
                raise self.fail("`allOf` is supported with one schema only")
            return self.compile(schema["allOf"][0])
        kind = schema.get("type")
        if isinstance(kind, list):
            return Union([self.compile({**schema, "type": k}) for k in kind])
        if kind is None:
            kind = "object" if "properties" in schema else "array" if "items" in schema else None
        return self._typed(kind, schema)

    def _typed(self, kind: str | None, schema: dict) -> Node:
        if kind is None:
            return Any(ANY_DEPTH)
        if kind == "string":
            return Str(int(schema.get("minLength", 0)), int(schema.get("maxLength", 10_000)))
        if kind in ("integer", "number"):
            low, high = schema.get("minimum"), schema.get("maximum")
            if "exclusiveMinimum" in schema:
                low = _floor(schema["exclusiveMinimum"]) + 1
            if "exclusiveMaximum" in schema:
                high = -_floor(-schema["exclusiveMaximum"]) - 1
            low = None if low is None else -_floor(-low)
            high = None if high is None else _floor(high)
            return Num(kind == "integer", low, high)
        if kind == "boolean":
            return Union([Lit("true"), Lit("false")])
        if kind == "null":
            return Lit("null")
        if kind == "array":
            item = self.compile(schema.get("items", {}))
            node = Arr(item, int(schema.get("minItems", 0)), int(schema.get("maxItems", 1_000)))
            if node.min_items > node.max_items:
                raise self.fail(f"minItems {node.min_items} is above maxItems {node.max_items}")
            return node
        if kind == "object":
            return self._object(schema)
        raise self.fail(f"unknown type {kind!r}")

    def _object(self, schema: dict) -> Node:
        properties = schema.get("properties") or {}
        if not properties and schema.get("additionalProperties") not in (None, False):
            return AnyObject()
        required = set(schema.get("required") or [])
        missing = sorted(required - set(properties))
        if missing:
            raise self.fail(f"required properties {', '.join(missing)} have no schema")
        node = Obj()
        for key, sub in properties.items():
            node.props.append((key, self.compile(sub), key in required))
        return node


def _floor(value: float) -> int:
    return math.floor(value)


def compile_schema(schema: Any, field: str = "response_format") -> Node:
    """A JSON Schema as a node tree; ParamError(field) for what is not supported."""
    compiler = _Compiler(schema if isinstance(schema, dict) else {}, field)
    node = compiler.compile(schema)
    try:
        _ = node.min_text  # resolves every $ref needed to finish, so errors show now
    except (_Cycle, RecursionError):
        raise compiler.fail("the schema needs itself to finish (a required field refers back)")
    return node
