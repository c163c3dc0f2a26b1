"""OpenAI's wire shapes, both ways: request bodies -> the "chat" task's params, and job results
-> completion objects, stream chunks (tool-call deltas included), logprobs and usage. Pure
functions; studio/api/openai.py does the HTTP and the jobs."""
from __future__ import annotations

import re
import uuid
from typing import Any

# Request fields by what happens to them. Anything else is refused with a 400 naming it.
CHAT_FIELDS = {"model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens",
               "temperature", "top_p", "top_k", "repetition_penalty", "seed", "stop", "n",
               "response_format", "tools", "tool_choice", "parallel_tool_calls", "logprobs",
               "top_logprobs", "user", "frequency_penalty", "presence_penalty", "logit_bias", "store"}
COMPLETION_FIELDS = {"model", "prompt", "suffix", "stream", "stream_options", "max_tokens",
                     "temperature", "top_p", "top_k", "repetition_penalty", "seed", "stop", "n",
                     "logprobs", "echo", "best_of", "user", "frequency_penalty", "presence_penalty",
                     "logit_bias"}
PARAM_NAMES = {"max_new_tokens": "max_tokens"}  # the engine's spelling -> OpenAI's
CALL_HEAD = re.compile(r'<tool_call>\s*\{"name": "((?:[^"\\]|\\.)*)", "arguments": ')


class BadRequest(ValueError):
    def __init__(self, message: str, param: str | None) -> None:
        super().__init__(message)
        self.param = param


def openai_param(field: str | None) -> str | None:
    if field is None:
        return None
    head, dot, rest = field.partition(".")
    return PARAM_NAMES.get(head, head) + dot + rest


def check_fields(body: dict, allowed: set[str]) -> None:
    """Refuse what the studio does not do, naming it, instead of silently ignoring it."""
    for name in sorted(set(body) - allowed):
        hint = " (use `tools` and `tool_choice`)" if name in ("functions", "function_call") else ""
        raise BadRequest(f"`{name}` is not supported by this server{hint}", name)
    for name in ("frequency_penalty", "presence_penalty"):
        if body.get(name) not in (None, 0, 0.0):
            raise BadRequest(f"`{name}` is not supported; use repetition_penalty", name)
    if body.get("logit_bias"):
        raise BadRequest("`logit_bias` is not supported", "logit_bias")
    if body.get("echo"):
        raise BadRequest("`echo` is not supported", "echo")
    if body.get("best_of") not in (None, 1):
        raise BadRequest("`best_of` is not supported; use `n`", "best_of")


def sampling(body: dict, default_max: int) -> dict:
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    values: dict[str, Any] = {"max_new_tokens": default_max if limit is None else limit}
    for name in ("temperature", "top_p", "top_k", "repetition_penalty", "seed", "stop"):
        if body.get(name) is not None:
            values[name] = body[name]
    return values


def choices_count(body: dict) -> int:
    n = body.get("n", 1)
    if n is None:
        return 1
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 8:
        raise BadRequest(f"`n` must be a whole number from 1 to 8, got {n!r}", "n")
    return n


def text_content(content: Any, index: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise BadRequest("only text content parts are supported", f"messages[{index}].content")
            parts.append(str(part.get("text", "")))
        return "".join(parts)
    if content is None:
        return ""
    raise BadRequest("message content must be a string or a list of text parts", f"messages[{index}].content")


def chat_messages(messages: Any) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise BadRequest("`messages` must be a non-empty list", "messages")
    listed = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRequest("every message must be an object", f"messages[{index}]")
        role = {"developer": "system"}.get(message.get("role"), message.get("role"))
        item: dict[str, Any] = {"role": role, "content": text_content(message.get("content"), index)}
        if message.get("tool_calls"):
            item["tool_calls"] = message["tool_calls"]
        if message.get("tool_call_id") is not None:
            item["tool_call_id"] = str(message["tool_call_id"])
        listed.append(item)
    return listed


def chat_params(body: dict) -> dict:
    """The "chat" task's params for one choice of a /v1/chat/completions body."""
    check_fields(body, CHAT_FIELDS)
    values = {"messages": chat_messages(body.get("messages")), **sampling(body, 512)}
    for name in ("response_format", "tools", "tool_choice", "parallel_tool_calls", "logprobs",
                 "top_logprobs"):
        if body.get(name) is not None:
            values[name] = body[name]
    if not values.get("tools") and values.get("tool_choice") in ("none", "auto"):
        del values["tool_choice"]  # means the same without tools; "required" is refused
    return values


def completion_params(body: dict) -> dict:
    check_fields(body, COMPLETION_FIELDS)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise BadRequest("`prompt` must be a string (one prompt per request)", "prompt")
    values = {"prompt": prompt, **sampling(body, 16)}
    if body.get("suffix") is not None:
        values["suffix"] = body["suffix"]
    top = body.get("logprobs")
    if top is not None:  # completions: an int, the number of alternatives (0-5)
        if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= 5:
            raise BadRequest(f"`logprobs` must be a whole number from 0 to 5, got {top!r}", "logprobs")
        values.update(logprobs=True, top_logprobs=top)
    return values


# ---------------------------------------------------------------- results -> OpenAI objects
def chat_logprobs(entries: list | None) -> dict | None:
    if entries is None:
        return None
    return {"content": [{"token": token, "logprob": logprob, "bytes": list(token.encode()),
                         "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())}
                                          for t, lp in top]}
                        for token, logprob, top in entries], "refusal": None}


def completion_logprobs(entries: list | None) -> dict | None:
    if entries is None:
        return None
    offsets, at = [], 0
    for token, _, _ in entries:
        offsets.append(at)
        at += len(token)
    return {"tokens": [e[0] for e in entries], "token_logprobs": [e[1] for e in entries],
            "top_logprobs": [{t: lp for t, lp in e[2]} for e in entries], "text_offset": offsets}


def chat_message(choice: dict) -> dict:
    from engines.llm.tools import parse_tool_calls

    calls = choice.get("tool_calls") or []
    if not calls:
        return {"role": "assistant", "content": choice["text"]}
    content = parse_tool_calls(choice["text"])[0]
    return {"role": "assistant", "content": content or None, "tool_calls": [
        {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
        for c in calls]}


def usage(infos: list[dict]) -> dict:
    prompt = infos[0].get("prompt_tokens", 0) if infos else 0
    completion = sum(i.get("completion_tokens", 0) for i in infos)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def finish_reason(choice: dict) -> str:
    return {"cancelled": "stop"}.get(choice["finish_reason"], choice["finish_reason"] or "stop")


# ---------------------------------------------------------------- streaming one choice
class ChoiceStream:
    """Turns the whole text so far (a job's progress) into OpenAI deltas: content, or, when the
    reply is a tool call, `tool_calls` deltas (a header with id and name, then argument pieces)."""

    def __init__(self, tools_active: bool) -> None:
        self.tools_active = tools_active
        self.mode = "text" if not tools_active else None
        self.sent = 0
        self.calls: list[dict] = []  # {"id", "sent"}

    def deltas(self, text: str, final: bool = False) -> list[dict]:
        if self.mode is None:
            stripped = text.lstrip()
            if "<tool_call>".startswith(stripped) and not final:
                return []  # could still become a tool call: wait
            self.mode = "calls" if stripped.startswith("<tool_call>") else "text"
        if self.mode == "text":
            new, self.sent = text[self.sent:], len(text)
            return [{"content": new}] if new else []
        out = []
        for index, match in enumerate(CALL_HEAD.finditer(text)):
            if index >= len(self.calls):
                self.calls.append({"id": "call_" + uuid.uuid4().hex[:24], "sent": 0})
                out.append({"tool_calls": [{"index": index, "id": self.calls[index]["id"], "type": "function",
                                            "function": {"name": match.group(1), "arguments": ""}}]})
            arguments = json_prefix(text[match.end():])
            new = arguments[self.calls[index]["sent"]:]
            if new:
                self.calls[index]["sent"] = len(arguments)
                out.append({"tool_calls": [{"index": index, "function": {"arguments": new}}]})
        return out


def json_prefix(text: str) -> str:
    """The JSON value at the start of `text`, up to its end if it has one yet."""
    depth, in_string, escaped = 0, False, False
    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
            continue
        if ch == '"':
            in_string = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                return text[:i + 1]
    return text
