"""OpenAI-compatible HTTP API over the studio's language models.

  GET  /v1/models             the catalogue (embedded, extra, data-dir models, HF cache)
  POST /v1/chat/completions   messages -> reply; `stream: true` sends server-sent events
  POST /v1/completions        prompt (+ `suffix`: fill in the middle) -> text

Wire format, usage counts and the error shape ({"error": {message, type, param, code}}) follow
OpenAI's, so its clients work with base_url=http://127.0.0.1:7860/v1. Beyond OpenAI's fields,
`top_k` and `repetition_penalty` are accepted. Replies are recorded in the gallery (tag "api").
"""
from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from typing import TYPE_CHECKING, Any, Callable

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.routing import APIRoute

from studio.api.auth import require_auth

if TYPE_CHECKING:
    from studio.context import StudioContext

IGNORED = {"user", "logit_bias", "response_format", "tools", "tool_choice", "parallel_tool_calls",
           "store", "metadata", "service_tier", "stream_options", "logprobs", "top_logprobs"}


class OpenAIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   kind: str | None = None, headers: dict | None = None) -> JSONResponse:
    kind = kind or {401: "authentication_error", 404: "invalid_request_error",
                    500: "server_error"}.get(status, "invalid_request_error")
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}},
                        status_code=status, headers=headers)


class OpenAIRoute(APIRoute):
    """Every failure, the auth dependency's included, leaves in OpenAI's error shape."""

    def get_route_handler(self) -> Callable:
        original = super().get_route_handler()

        async def handler(request: Request):
            try:
                return await original(request)
            except OpenAIError as error:
                return error_response(error.status, error.message, error.param, error.code, error.kind)
            except HTTPException as error:
                code = "invalid_api_key" if error.status_code == 401 else None
                return error_response(error.status_code, str(error.detail), code=code,
                                      headers=getattr(error, "headers", None))

        return handler


def _param_of(message: str) -> str | None:
    """The field a ValueError names, in OpenAI's spelling."""
    found = re.search(r"`([\w.\[\]]+)`", message)
    if not found:
        return None
    return {"max_new_tokens": "max_tokens"}.get(found.group(1), found.group(1))


async def _json_body(request: Request) -> dict:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise OpenAIError(400, "the request body is not valid JSON")
    if not isinstance(body, dict):
        raise OpenAIError(400, "the request body must be a JSON object")
    return body


def _text_content(content: Any, index: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise OpenAIError(400, "only text content parts are supported", f"messages[{index}].content")
            parts.append(str(part.get("text", "")))
        return "".join(parts)
    if content is None:
        return ""
    raise OpenAIError(400, "message content must be a string or a list of text parts",
                      f"messages[{index}].content")


def _sampling(body: dict, default_max: int) -> dict:
    """OpenAI names to the engine's; unsupported options are refused, not silently dropped."""
    n = body.get("n", 1)
    if n != 1:
        raise OpenAIError(400, f"only n=1 is supported, got {n!r}", "n")
    for name in ("frequency_penalty", "presence_penalty"):
        if body.get(name) not in (None, 0, 0.0):
            raise OpenAIError(400, f"`{name}` is not supported; use repetition_penalty", name)
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    values = {"max_new_tokens": default_max if limit is None else limit}
    for ours, theirs in (("temperature", "temperature"), ("top_p", "top_p"), ("top_k", "top_k"),
                         ("repetition_penalty", "repetition_penalty"), ("seed", "seed"),
                         ("stop", "stop")):
        if body.get(theirs) is not None:
            values[ours] = body[theirs]
    return values


def router(ctx: "StudioContext") -> APIRouter:
    from studio.tasks.text import DEFAULT_MODEL

    api = APIRouter(prefix="/v1", tags=["OpenAI-compatible"], route_class=OpenAIRoute,
                    dependencies=[Depends(require_auth(ctx))])

    def models_dirs() -> tuple:
        return (ctx.config.models_dir, *ctx.config.extra_models_dirs)

    def make_params(model: str, values: dict):
        from engines.llm.engine import LLMParams
        from engines.llm.catalog import resolve

        try:
            resolve(model, offline=ctx.config.offline or None)
        except ValueError as error:
            status = 404 if "unknown model" in str(error) or "does not exist" in str(error) else 400
            raise OpenAIError(status, str(error), "model",
                              "model_not_found" if status == 404 else None)
        try:
            return LLMParams.from_dict(values)
        except (ValueError, TypeError) as error:
            raise OpenAIError(400, str(error), _param_of(str(error)))

    async def start(model: str, params):
        from engines.base import EngineError
        from studio.tasks.text import LiveGeneration

        live = LiveGeneration(ctx, model, params).start()
        await asyncio.to_thread(live.ready.wait)
        if live.error is not None:
            if isinstance(live.error, ValueError):
                raise OpenAIError(400, str(live.error), _param_of(str(live.error)))
            if isinstance(live.error, EngineError):
                raise OpenAIError(500, str(live.error), kind="server_error")
            raise live.error
        return live

    async def record(live, prompt: str) -> None:
        from studio.tasks.text import record_reply

        if live.error is None and live.text:
            await asyncio.to_thread(record_reply, ctx, "chat", live.model, prompt, live.params,
                                    live.text, live.stats, ("api",))

    def usage(live) -> dict:
        return {"prompt_tokens": live.stats.prompt_tokens,
                "completion_tokens": live.stats.completion_tokens,
                "total_tokens": live.stats.prompt_tokens + live.stats.completion_tokens}

    def finish(live) -> str:
        return "length" if live.stats.finish_reason == "length" else "stop"

    def sse(payload: dict | str) -> str:
        return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"

    def respond(live, body: dict, prompt: str, make_chunk: Callable, make_full: Callable):
        if not body.get("stream"):
            async def full():
                async for _ in live.achunks():
                    pass
                await record(live, prompt)
                return JSONResponse(make_full(live))
            return full()

        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        async def events():
            try:
                first = make_chunk(live, None, first=True)
                if first:
                    yield sse(first)
                async for text in live.achunks():
                    yield sse(make_chunk(live, text))
                yield sse(make_chunk(live, None, finish=finish(live)))
                if include_usage:
                    yield sse({**make_chunk(live, None), "choices": [], "usage": usage(live)})
            except Exception as error:  # mid-stream failure: an error event, then the end
                yield sse({"error": {"message": str(error), "type": "server_error",
                                     "param": None, "code": None}})
            yield sse("[DONE]")
            await record(live, prompt)

        async def streamed():
            return StreamingResponse(events(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return streamed()

    # ------------------------------------------------------------ routes
    @api.get("/models")
    def list_models_route() -> dict:
        from engines.llm.catalog import list_models

        return {"object": "list", "data": [
            {"id": m.model_id, "object": "model", "created": 0, "owned_by": "genstudio",
             "format": m.format, "label": m.label} for m in list_models(models_dirs())]}

    @api.post("/chat/completions")
    async def chat_completions(request: Request):
        body = await _json_body(request)
        model = body.get("model") or DEFAULT_MODEL
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise OpenAIError(400, "`messages` must be a non-empty list", "messages")
        listed = []
        for index, message in enumerate(messages):
            if not isinstance(message, dict):
                raise OpenAIError(400, "every message must be an object", f"messages[{index}]")
            role = {"developer": "system"}.get(message.get("role"), message.get("role"))
            listed.append({"role": role, "content": _text_content(message.get("content"), index)})
        params = make_params(model, {"messages": listed, **_sampling(body, 512)})
        live = await start(model, params)
        rid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())

        def chunk(live, text, first=False, finish=None):
            delta = {"role": "assistant", "content": ""} if first else ({"content": text} if text else {})
            return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

        def full(live):
            return {"id": rid, "object": "chat.completion", "created": created, "model": model,
                    "choices": [{"index": 0, "finish_reason": finish(live),
                                 "message": {"role": "assistant", "content": live.text}}],
                    "usage": usage(live)}

        prompt = next((m["content"] for m in reversed(listed) if m["role"] == "user"), "")
        return await respond(live, body, prompt, chunk, full)

    @api.post("/completions")
    async def completions(request: Request):
        body = await _json_body(request)
        model = body.get("model") or DEFAULT_MODEL
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise OpenAIError(400, "`prompt` must be a string (one prompt per request)", "prompt")
        if body.get("echo"):
            raise OpenAIError(400, "`echo` is not supported", "echo")
        values = {"prompt": prompt, **_sampling(body, 16)}
        if body.get("suffix") is not None:
            values["suffix"] = body["suffix"]
        params = make_params(model, values)
        live = await start(model, params)
        rid, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())

        def chunk(live, text, first=False, finish=None):
            if first:
                return None
            return {"id": rid, "object": "text_completion", "created": created, "model": model,
                    "choices": [{"index": 0, "text": text or "", "logprobs": None,
                                 "finish_reason": finish}]}

        def full(live):
            return {"id": rid, "object": "text_completion", "created": created, "model": model,
                    "choices": [{"index": 0, "text": live.text, "logprobs": None,
                                 "finish_reason": finish(live)}],
                    "usage": usage(live)}

        return await respond(live, body, prompt, chunk, full)

    return api
