"""The constrained-decoding grammar without a model: what a JSON Schema lets through, the shortest
completion from any point (what the engine writes when the token budget runs out), forced
text, bounded numbers, unions and recursion, unsupported keywords, and the OpenAI stream shaper
for tool calls."""
from __future__ import annotations

import json

import pytest

from engines.base import ParamError
from engines.llm.grammar import AnyObject
from engines.llm.jsonschema import compile_schema
from engines.llm.matcher import Matcher
from engines.llm.tools import constraint, parse_tool_calls
from studio.api.openai_shapes import ChoiceStream, json_prefix

PERSON = {"type": "object", "required": ["name", "age", "role", "tags", "address"], "properties": {
    "name": {"type": "string"}, "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "role": {"enum": ["admin", "user"]}, "tags": {"type": "array", "items": {"type": "string"}},
    "address": {"type": "object", "required": ["city"], "properties": {"city": {"type": "string"}}},
    "nick": {"anyOf": [{"type": "string"}, {"type": "null"}]}}}


def accepts(schema_or_node, text: str) -> bool:
    node = compile_schema(schema_or_node) if isinstance(schema_or_node, dict) else schema_or_node
    matcher = Matcher(node).advance(text)
    return matcher is not None and matcher.complete


def test_valid_json_passes_and_invalid_does_not():
    good = {"name": "Bob", "age": 42, "role": "user", "tags": ["a", "b"], "address": {"city": "X"}}
    assert accepts(PERSON, json.dumps(good))
    assert accepts(PERSON, json.dumps({**good, "nick": None}))
    assert accepts(PERSON, json.dumps({**good, "nick": "Bobby"}))
    assert not accepts(PERSON, json.dumps({**good, "role": "root"}))  # not in the enum
    assert not accepts(PERSON, json.dumps({**good, "age": 200}))  # above the maximum
    assert not accepts(PERSON, json.dumps({k: v for k, v in good.items() if k != "tags"}))
    assert Matcher(compile_schema(PERSON)).advance('{"name": "Bob", "age": 4x') is None


def test_every_prefix_can_be_finished_by_its_shortest_completion():
    text = json.dumps({"name": 'A"b\\n', "age": 7, "role": "admin", "tags": ["x"], "address": {"city": "C"}})
    node = compile_schema(PERSON)
    for cut in range(len(text)):
        matcher = Matcher(node).advance(text[:cut])
        if matcher is None:
            continue  # e.g. inside an escape the compact writer never produces
        finished = text[:cut] + matcher.min_text()
        assert accepts(PERSON, finished), finished
        json.loads(finished)


def test_forced_text_is_the_only_way_on():
    matcher = Matcher(compile_schema(PERSON))
    assert matcher.forced_text() == '{"name": "'
    after_age = matcher.advance('{"name": "B", "age": 42')
    assert after_age.forced_text() == ', "role": "'  # 42 cannot grow within 0..120
    assert after_age.advance(', "role": "').first_chars() == {"a", "u"}


@pytest.mark.parametrize("low, high, good, bad", [
    (-50, -5, ["-5", "-50", "-17"], ["-51", "-4", "5", "-0"]),
    (10, 20, ["10", "20", "15"], ["9", "21", "0"]),
])
def test_integer_bounds_are_enforced_while_writing(low, high, good, bad):
    schema = {"type": "integer", "minimum": low, "maximum": high}
    for text in good:
        assert accepts(schema, text), text
    for text in bad:
        assert not accepts(schema, text), text
    assert low <= int(Matcher(compile_schema(schema)).min_text()) <= high


def test_any_object_mode_and_recursion():
    assert accepts(AnyObject(), '{"a": [1, {"b": "c"}], "d": -1.5, "e": null}')
    assert not accepts(AnyObject(), "[1, 2]")  # json_object mode wants an object
    tree = {"$defs": {"Node": {"type": "object", "required": ["v", "kids"], "properties": {
        "v": {"type": "integer"}, "kids": {"type": "array", "items": {"$ref": "#/$defs/Node"}}}}},
        "$ref": "#/$defs/Node"}
    assert accepts(tree, '{"v": 1, "kids": [{"v": 2, "kids": []}]}')
    assert Matcher(compile_schema(tree)).min_text() == '{"v": 0, "kids": []}'


@pytest.mark.parametrize("schema, word", [
    ({"type": "string", "pattern": "a+"}, "pattern"),
    ({"type": "number", "multipleOf": 3}, "multipleOf"),
    ({"type": "string", "format": "date-time"}, "date-time"),
    ({"$defs": {"A": {"type": "object", "required": ["a"], "properties": {"a": {"$ref": "#/$defs/A"}}}},
      "$ref": "#/$defs/A"}, "needs itself"),
    ({"type": "object", "required": ["x"], "properties": {}}, "no schema"),
])
def test_unsupported_schemas_are_refused_naming_the_field(schema, word):
    with pytest.raises(ParamError, match=word) as caught:
        compile_schema(schema)
    assert caught.value.field == "response_format"


def test_tool_call_grammar_and_parsing():
    tools = ({"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "required": ["city"], "properties": {"city": {"type": "string"}}}}},
             {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}})
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    required = constraint(None, tools, "required", True)
    assert accepts(required, call)
    assert accepts(required, call + "\n" + call.replace("get_weather", "get_time").replace('"city": "Paris"', ""))
    assert not accepts(required, "Hello")
    named = constraint(None, tools, {"type": "function", "function": {"name": "get_time"}}, False)
    assert not accepts(named, call)
    auto = Matcher(constraint(None, tools, "auto", True))
    assert auto.advance("It is sunny.").free  # words: unconstrained from there
    content, calls = parse_tool_calls(call)
    assert content == "" and calls[0]["name"] == "get_weather"
    assert json.loads(calls[0]["arguments"]) == {"city": "Paris"}


def test_stream_shaper_sends_openai_tool_call_deltas():
    text = '<tool_call>\n{"name": "f", "arguments": {"a": "x}y", "b": [1, 2]}}\n</tool_call>'
    shaper, deltas = ChoiceStream(tools_active=True), []
    for cut in range(1, len(text) + 1):
        deltas += shaper.deltas(text[:cut])
    assert deltas[0]["tool_calls"][0]["function"] == {"name": "f", "arguments": ""}
    arguments = "".join(d["tool_calls"][0]["function"]["arguments"] for d in deltas[1:])
    assert json.loads(arguments) == {"a": "x}y", "b": [1, 2]}
    plain = ChoiceStream(tools_active=True)
    assert plain.deltas("<to") == [] and plain.deltas("<tool") == []
    assert ChoiceStream(tools_active=True).deltas("Hi there") == [{"content": "Hi there"}]
    assert json_prefix('{"a": "}"} tail') == '{"a": "}"}'


def test_auto_tools_with_a_json_reply_allow_a_call_or_that_json():
    tools = ({"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}},)
    node = constraint({"type": "json_object"}, tools, "auto", True)
    assert accepts(node, '{"a": 1}')
    assert accepts(node, '<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>')
    assert Matcher(node).advance("plain words") is None
