"""What one language-model request is: messages or a prompt, sampling, and the shape of the reply
(structured output, tools, log-probabilities, several choices). Frozen and validated on
construction, so a bad value fails with a ParamError naming the field before any model loads;
`from_dict` / `to_dict` carry it through JSON (tasks, the queue, the HTTP API).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from engines.base import ParamError, check_int, check_range

MAX_MESSAGE_CHARS = 32_000  # one message; longer text is refused before tokenizing
MAX_MESSAGES = 500
MAX_CHOICES = 8
ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as OpenAI sends it


@dataclass(frozen=True)
class ChatMessage:
    role: str  # system | user | assistant | tool
    content: str
    tool_calls: tuple[ToolCall, ...] = ()  # assistant messages that called tools
    tool_call_id: str | None = None  # tool messages: the call this is the result of


@dataclass(frozen=True)
class LLMParams:
    """One request. Chat when `messages` is given; plain completion with `prompt`; fill in the
    middle with `prompt` + `suffix`. Validated on construction: ValueError names the field."""
    messages: tuple[ChatMessage, ...] = ()
    prompt: str | None = None
    suffix: str | None = None
    system_prompt: str = ""  # placed first when the messages have no system message
    continue_last: bool = False  # extend the final assistant message instead of a new reply
    max_new_tokens: int = 512
    temperature: float = 0.7  # 0 = greedy
    top_p: float = 0.9
    top_k: int = 40  # 0 = off
    repetition_penalty: float = 1.1  # 1 = off
    seed: int | None = None  # None = a random seed, reported in the stats
    stop: tuple[str, ...] = ()
    response_format: dict | None = None  # OpenAI's: json_object / json_schema (constrained decoding)
    tools: tuple[dict, ...] = ()  # OpenAI's function tools
    tool_choice: Any = "auto"  # auto | none | required | {"type": "function", "function": {"name"}}
    parallel_tool_calls: bool = True
    logprobs: bool = False  # report each token's log-probability
    top_logprobs: int = 0  # and this many alternatives per token (0-20)
    n: int = 1  # choices; choice i uses seed + i

    def __post_init__(self) -> None:
        from engines.llm import tools

        if bool(self.messages) == (self.prompt is not None):
            raise ValueError("give either `messages` (chat) or `prompt` (completion), not both or neither")
        if len(self.messages) > MAX_MESSAGES:
            raise ParamError("messages", f"`messages` holds {len(self.messages)} messages; the limit is {MAX_MESSAGES}")
        for index, message in enumerate(self.messages):
            if not isinstance(message, ChatMessage) or message.role not in ROLES:
                raise ParamError("messages", f"`messages[{index}]` must have a role in {ROLES}, got {message!r}")
            _check_text(f"messages[{index}].content", message.content)
        last = self.messages[-1] if self.messages else None
        if last is not None and not last.content.strip() and not last.tool_calls and not self.continue_last:
            raise ValueError("the message is empty: type something to send")
        if self.continue_last and (last is None or last.role != "assistant"):
            raise ParamError("continue_last", "`continue_last` needs the messages to end with an assistant message")
        if self.prompt is not None:
            _check_text("prompt", self.prompt)
            if not self.prompt and not self.suffix:
                raise ParamError("prompt", "`prompt` is empty")
        if self.suffix is not None:
            if self.prompt is None:
                raise ParamError("suffix", "`suffix` needs a `prompt` (fill in the middle)")
            _check_text("suffix", self.suffix)
        _check_text("system_prompt", self.system_prompt)
        check_int("max_new_tokens", self.max_new_tokens, 1, 8192)
        check_range("temperature", self.temperature, 0.0, 2.0)
        check_range("top_p", self.top_p, 0.01, 1.0)
        check_int("top_k", self.top_k, 0, 1000)
        check_range("repetition_penalty", self.repetition_penalty, 1.0, 2.0)
        if self.seed is not None:
            check_int("seed", self.seed, 0, 2**32 - 1)
        if not isinstance(self.stop, tuple) or len(self.stop) > 8 or not all(
                isinstance(s, str) and 0 < len(s) <= 200 for s in self.stop):
            raise ParamError("stop", f"`stop` must be up to 8 non-empty strings, got {self.stop!r}")
        self._check_shape(tools)

    def _check_shape(self, tools) -> None:
        """Structured output, tools, logprobs and n: checked (schemas compiled) up front."""
        for name in ("parallel_tool_calls", "logprobs"):
            if not isinstance(getattr(self, name), bool):
                raise ParamError(name, f"`{name}` must be true or false, got {getattr(self, name)!r}")
        check_int("top_logprobs", self.top_logprobs, 0, 20)
        if self.top_logprobs and not self.logprobs:
            raise ParamError("top_logprobs", "`top_logprobs` needs `logprobs` set to true")
        check_int("n", self.n, 1, MAX_CHOICES)
        tools.check_response_format(self.response_format)
        tools.check_tools(self.tools)
        tools.check_tool_choice(self.tool_choice, self.tools)
        if tools.calls_tools(self.tools, self.tool_choice) and self.prompt is not None:
            raise ParamError("tools", "`tools` need `messages` (a chat), not a `prompt`")
        if self.response_format and self.response_format.get("type") != "text" and \
                tools.calls_tools(self.tools, self.tool_choice) and self.tool_choice != "auto":
            raise ParamError("response_format", "`response_format` and a forced tool call cannot both shape the reply")

    @property
    def guided(self) -> bool:
        """True when our own decoding loop runs (a grammar, or log-probabilities wanted)."""
        from engines.llm import tools

        return self.logprobs or tools.constraint_wanted(self.response_format, self.tools, self.tool_choice)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LLMParams":
        """From JSON-able values (tasks, queue, API): messages as [{"role", "content"}]."""
        if not isinstance(data, dict):
            raise ValueError(f"parameters must be an object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown parameter(s) {', '.join(unknown)}")
        values = dict(data)
        messages = values.get("messages") or ()
        if not isinstance(messages, (list, tuple)):
            raise ParamError("messages", f"`messages` must be a list, got {type(messages).__name__}")
        values["messages"] = tuple(_message(m, index) for index, m in enumerate(messages))
        stop = values.get("stop") or ()
        values["stop"] = (stop,) if isinstance(stop, str) else tuple(stop)
        tools = values.get("tools") or ()
        if not isinstance(tools, (list, tuple)):
            raise ParamError("tools", f"`tools` must be a list, got {type(tools).__name__}")
        values["tools"] = tuple(tools)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["messages"] = [_message_dict(m) for m in self.messages]
        data["stop"] = list(self.stop)
        data["tools"] = list(self.tools)
        return data

    def sampling_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("max_new_tokens", "temperature", "top_p", "top_k",
                                               "repetition_penalty", "seed")}


def _message(m: Any, index: int) -> ChatMessage:
    if isinstance(m, ChatMessage):
        return m
    if not isinstance(m, dict) or "role" not in m or ("content" not in m and "tool_calls" not in m):
        raise ParamError("messages", f"`messages[{index}]` must be an object with role and content")
    calls = []
    for number, call in enumerate(m.get("tool_calls") or ()):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or \
                not isinstance(function.get("arguments", ""), str):
            raise ParamError("messages", f"`messages[{index}].tool_calls[{number}]` must be "
                             "{\"id\", \"type\": \"function\", \"function\": {\"name\", \"arguments\"}}")
        calls.append(ToolCall(str(call.get("id", "")), function["name"], function.get("arguments") or "{}"))
    return ChatMessage(str(m["role"]), m.get("content") or "", tuple(calls), m.get("tool_call_id"))


def _message_dict(m: ChatMessage) -> dict[str, Any]:
    data: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.tool_calls:
        data["tool_calls"] = [{"id": c.id, "type": "function",
                               "function": {"name": c.name, "arguments": c.arguments}} for c in m.tool_calls]
    if m.tool_call_id is not None:
        data["tool_call_id"] = m.tool_call_id
    return data


def _check_text(name: str, value: Any) -> None:
    if not isinstance(value, str):
        raise ParamError(name, f"`{name}` must be text, got {type(value).__name__}")
    if len(value) > MAX_MESSAGE_CHARS:
        raise ParamError(name, f"`{name}` is {len(value):,} characters long; the limit is "
                         f"{MAX_MESSAGE_CHARS:,}")
