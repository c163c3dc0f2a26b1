"""OpenAI-compatible HTTP API over the studio's language models, on the one runner.

  GET  /v1/models             the catalogue (embedded, extra, data-dir models, HF cache)
  POST /v1/chat/completions   messages -> reply; `stream: true` sends server-sent events;
                              response_format (JSON mode / JSON Schema), tools, logprobs, n
  POST /v1/completions        prompt (+ `suffix`: fill in the middle) -> text
  POST /v1/embeddings         texts -> unit vectors (all-MiniLM-L6-v2 embedded, or any model)

Every completion request becomes "chat" jobs at API priority (one per choice, seed + i), so it
shows in the Queue tab and GET /api/queue; tokens stream from the running job, and a client that
goes away cancels its jobs. Wire format, usage counts and the error shape ({"error": {message,
type, param, code}}) follow OpenAI's, so its clients work with base_url=http://127.0.0.1:7860/v1.
Beyond OpenAI's fields, `top_k` and `repetition_penalty` are accepted; a field the studio does
not honour is refused with a 400 naming it. Replies are recorded in the gallery.
"""
from __future__ import annotations

import asyncio
import base64
import functools
import json
import time
import uuid
from typing import TYPE_CHECKING, AsyncIterator, Callable

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.routing import APIRoute

from studio.api import openai_shapes as shapes
from studio.api.auth import require_auth

if TYPE_CHECKING:
    from studio.context import StudioContext

DISCONNECT_CHECK_S = 0.5  # a waiting non-streaming request asks this often whether its client left


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
            except shapes.BadRequest as error:
                return error_response(400, str(error), error.param)
            except HTTPException as error:
                code = "invalid_api_key" if error.status_code == 401 else None
                return error_response(error.status_code, str(error.detail), code=code,
                                      headers=getattr(error, "headers", None))

        return handler


async def _json_body(request: Request) -> dict:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise OpenAIError(400, "the request body is not valid JSON")
    if not isinstance(body, dict):
        raise OpenAIError(400, "the request body must be a JSON object")
    if body.get("stream") not in (None, True, False):  # "sometimes" is no answer
        raise OpenAIError(400, f"`stream` must be true or false, got {body['stream']!r}", "stream")
    return body


def _failure(update) -> OpenAIError:
    """A failed or canceled job as an HTTP error: 400 naming the field when one is at fault."""
    if update.status == "canceled":
        return OpenAIError(500, "the generation was canceled", kind="server_error")
    if update.error_field:
        return OpenAIError(400, update.error or "bad request", shapes.openai_param(update.error_field))
    return OpenAIError(500, update.error or "the generation failed", kind="server_error")


def _sse(payload: dict | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


def router(ctx: "StudioContext") -> APIRouter:
    api = APIRouter(prefix="/v1", tags=["OpenAI-compatible"], route_class=OpenAIRoute,
                    dependencies=[Depends(require_auth(ctx))])

    @api.get("/models")
    def list_models_route() -> dict:
        return list_models(ctx)

    @api.post("/chat/completions")
    async def chat_completions_route(request: Request):
        return await chat_completions(ctx, request)

    @api.post("/completions")
    async def completions_route(request: Request):
        return await completions(ctx, request)

    @api.post("/embeddings")
    async def embeddings_route(request: Request):
        body = await _json_body(request)
        return await asyncio.to_thread(embed_request, ctx, body)

    return api


def list_models(ctx: "StudioContext") -> dict:
    from engines.llm.catalog import list_models as catalogue
    from engines.llm.embeddings import EMBEDDED_EMBEDDING_ID, embedded_model_dir

    dirs = (ctx.config.models_dir, *ctx.config.extra_models_dirs)
    data = [{"id": m.model_id, "object": "model", "created": 0, "owned_by": "genstudio",
             "format": m.format, "label": m.label} for m in catalogue(dirs)]
    if embedded_model_dir() is not None:
        data.append({"id": EMBEDDED_EMBEDDING_ID, "object": "model", "created": 0, "owned_by": "genstudio",
                     "format": "transformers", "label": "all-MiniLM-L6-v2 (embeddings, embedded)"})
    return {"object": "list", "data": data}


# ---------------------------------------------------------------- jobs
def check_model(ctx: "StudioContext", model: str) -> None:
    from engines.llm.catalog import resolve

    try:
        resolve(model, offline=ctx.config.offline or None)
    except ValueError as error:
        status = 404 if "unknown model" in str(error) or "does not exist" in str(error) else 400
        raise OpenAIError(status, str(error), "model", "model_not_found" if status == 404 else None)


def submit(ctx: "StudioContext", model: str, values: dict, n: int) -> list:
    """n "chat" jobs at API priority (choice i: seed + i); validated once, by the queue."""
    from studio.jobs.runner import API

    seed = values.get("seed")
    step = isinstance(seed, int) and not isinstance(seed, bool)
    jobs = [{**values, "model": model, **({"seed": seed + i} if step else {})} for i in range(n)]
    try:
        return ctx.runner.submit_many("chat", jobs, priority=API)
    except ValueError as error:
        raise OpenAIError(400, str(error), shapes.openai_param(getattr(error, "field", None)))


async def finals(request: Request, handles: list) -> list[dict]:
    """Wait (on the event loop) for every job; their result infos, in order. A client that goes
    away cancels what is left."""
    infos, checked = [], time.monotonic()
    try:
        for handle in handles:
            async for update in handle.aupdates():
                if time.monotonic() - checked > DISCONNECT_CHECK_S:
                    checked = time.monotonic()
                    if await request.is_disconnected():
                        raise OpenAIError(499, "the client went away")
                if update.finished:
                    if update.status != "completed":
                        raise _failure(update)
                    infos.append(update.result["info"])
    finally:
        for handle in handles[len(infos):]:
            handle.cancel()
    return infos


async def streamed(handles: list, make_chunk: Callable, stream_choice: Callable,
                   include_usage: bool) -> StreamingResponse:
    """Wait for the first job to show text (or fail: then a plain HTTP error), then stream the
    choices one after the other."""
    updates = handles[0].aupdates()
    first = await anext(updates)
    while not first.finished and not first.text:
        first = await anext(updates)
    if first.finished and first.status != "completed":
        raise _failure(first)

    async def events() -> AsyncIterator[str]:
        infos, current = [], updates
        try:
            for index, handle in enumerate(handles):
                current = current if index == 0 else handle.aupdates()
                async for chunk in stream_choice(index, current, first if index == 0 else None, infos):
                    yield _sse(chunk)
            if include_usage:
                yield _sse({**make_chunk(), "choices": [], "usage": shapes.usage(infos)})
        except OpenAIError as error:  # a job failed mid-stream: an error event, then the end
            yield _sse({"error": {"message": error.message, "type": error.kind,
                                  "param": error.param, "code": None}})
        finally:
            await current.aclose()  # the client went away: its running job is canceled
            for handle in handles[len(infos):]:
                handle.cancel()
        yield _sse("[DONE]")

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _final_or_text(updates, pending):
    """The next update of a choice's job (the one already read first, if any)."""
    update = pending if pending is not None else await anext(updates)
    if update.finished and update.status != "completed":
        raise _failure(update)
    return update


async def _start(ctx: "StudioContext", request: Request, make_values: Callable) -> tuple:
    """(body, model, task values, job handles): the request checked and its jobs queued."""
    from studio.tasks.text import DEFAULT_MODEL

    body = await _json_body(request)
    model = body.get("model") or DEFAULT_MODEL
    values, n = make_values(body), shapes.choices_count(body)
    check_model(ctx, model)
    return body, model, values, submit(ctx, model, values, n)


# ---------------------------------------------------------------- chat completions
async def chat_completions(ctx: "StudioContext", request: Request):
    from engines.llm.tools import calls_tools

    body, model, values, handles = await _start(ctx, request, shapes.chat_params)
    rid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
    tools_active = calls_tools(tuple(values.get("tools") or ()), values.get("tool_choice", "auto"))

    def chunk(index: int = 0, delta: dict | None = None, finish: str | None = None, **extra) -> dict:
        return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": index, "delta": delta or {}, "finish_reason": finish, **extra}]}

    if body.get("stream"):
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return await streamed(handles, chunk, functools.partial(chat_choice_events, chunk, tools_active),
                              include_usage)
    infos = await finals(request, handles)
    choices = [i["choices"][0] for i in infos]
    return JSONResponse({"id": rid, "object": "chat.completion", "created": created, "model": model,
                         "choices": [{"index": k, "message": shapes.chat_message(c),
                                      "logprobs": shapes.chat_logprobs(c["logprobs"]),
                                      "finish_reason": shapes.finish_reason(c)} for k, c in enumerate(choices)],
                         "usage": shapes.usage(infos)})


async def chat_choice_events(chunk: Callable, tools_active: bool, index: int, updates, pending, infos):
    """One choice's chunks: the role, content or tool-call deltas, logprobs, the finish."""
    shaper = shapes.ChoiceStream(tools_active)
    yield chunk(index, {"role": "assistant", "content": ""})
    while True:
        update, pending = await _final_or_text(updates, pending), None
        if not update.finished:
            for delta in shaper.deltas(update.text or ""):
                yield chunk(index, delta)
            continue
        info = update.result["info"]
        choice = info["choices"][0]
        for delta in shaper.deltas(choice["text"], final=True):
            yield chunk(index, delta)
        if choice["logprobs"] is not None:
            yield chunk(index, {}, logprobs=shapes.chat_logprobs(choice["logprobs"]))
        infos.append(info)
        yield chunk(index, {}, "tool_calls" if shaper.calls else shapes.finish_reason(choice))
        return


# ---------------------------------------------------------------- completions
async def completions(ctx: "StudioContext", request: Request):
    body, model, values, handles = await _start(ctx, request, shapes.completion_params)
    rid, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())

    def chunk(index: int = 0, text: str = "", finish: str | None = None, logprobs=None) -> dict:
        return {"id": rid, "object": "text_completion", "created": created, "model": model,
                "choices": [{"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}]}

    if body.get("stream"):
        # A middle written in words is cleaned once it is complete (prompts.clean_middle), so
        # fill-in-the-middle sends its text at the end; plain completions stream as they come.
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        events = functools.partial(completion_choice_events, chunk, "suffix" in values)
        return await streamed(handles, chunk, events, include_usage)
    infos = await finals(request, handles)
    choices = [i["choices"][0] for i in infos]
    return JSONResponse({"id": rid, "object": "text_completion", "created": created, "model": model,
                         "choices": [{"index": k, "text": c["text"], "finish_reason": shapes.finish_reason(c),
                                      "logprobs": shapes.completion_logprobs(c["logprobs"])}
                                     for k, c in enumerate(choices)],
                         "usage": shapes.usage(infos)})


async def completion_choice_events(chunk: Callable, hold: bool, index: int, updates, pending, infos):
    sent = 0
    while True:
        update, pending = await _final_or_text(updates, pending), None
        if not update.finished:
            text = update.text or ""
            if not hold and len(text) > sent:
                yield chunk(index, text[sent:])
                sent = len(text)
            continue
        info = update.result["info"]
        choice = info["choices"][0]
        text = choice["text"] if hold else choice["text"][sent:]
        if text or choice["logprobs"] is not None:
            yield chunk(index, text, logprobs=shapes.completion_logprobs(choice["logprobs"]))
        infos.append(info)
        yield chunk(index, "", shapes.finish_reason(choice))
        return


# ---------------------------------------------------------------- embeddings
def embed_request(ctx: "StudioContext", body: dict) -> JSONResponse:
    """POST /v1/embeddings: a batch of texts through the "embed" engine (holds the device lock)."""
    import numpy as np

    from engines.llm.embeddings import EMBEDDED_EMBEDDING_ID, EmbeddingEngine, check_texts

    shapes.check_fields(body, {"model", "input", "encoding_format", "dimensions", "user"})
    model = body.get("model") or EMBEDDED_EMBEDDING_ID
    try:
        texts = check_texts(body.get("input"))
        EmbeddingEngine._resolve(model)
    except ValueError as error:
        field = getattr(error, "field", None) or "model"
        raise OpenAIError(404 if field == "model" else 400, str(error), field,
                          "model_not_found" if field == "model" else None)
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise OpenAIError(400, f"`encoding_format` must be float or base64, got {encoding!r}", "encoding_format")
    with ctx.engines.use("embed", model) as engine:
        vectors, tokens = engine.embed(texts)
    dimensions = body.get("dimensions")
    if dimensions is not None:
        native = vectors.shape[1]
        if isinstance(dimensions, bool) or not isinstance(dimensions, int) or not 1 <= dimensions <= native:
            raise OpenAIError(400, f"`dimensions` must be from 1 to {native} for {model!r}", "dimensions")
        if dimensions != native and model == EMBEDDED_EMBEDDING_ID:
            raise OpenAIError(400, f"{model!r} was not trained for shortened vectors (Matryoshka): "
                              f"`dimensions` can only be {native}", "dimensions")
        vectors = vectors[:, :dimensions]
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    data = []
    for index, vector in enumerate(vectors):
        value = (base64.b64encode(vector.astype("<f4").tobytes()).decode() if encoding == "base64"
                 else [float(x) for x in vector])
        data.append({"object": "embedding", "index": index, "embedding": value})
    return JSONResponse({"object": "list", "data": data, "model": model,
                         "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})
