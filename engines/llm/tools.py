"""Structured output and function calling, in OpenAI's shapes, turned into grammars and prompts.

  response_format  {"type": "text" | "json_object" | "json_schema", "json_schema": {"name", "schema"}}
  tools            [{"type": "function", "function": {"name", "description", "parameters"}}]
  tool_choice      "auto" | "none" | "required" | {"type": "function", "function": {"name"}}

A tool call is written the way Qwen2.5 / Hermes chat templates spell it (and that format is
taught in a system message to models whose template knows no tools):

  <tool_call>
  {"name": "get_weather", "arguments": {"city": "Paris"}}
  </tool_call>

`constraint(...)` gives the grammar node the engine decodes under; `parse_tool_calls(text)` reads
the calls back. Checks raise ParamError naming the field, before any model is loaded.
"""
from __future__ import annotations

import json
import re
import uuid
from typing import Any

from engines.base import ParamError
from engines.llm.grammar import AnyObject, Arr, Free, Lit, Node, Obj, Union
from engines.llm.jsonschema import compile_schema

NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_TOOLS = 64
MAX_PARALLEL_CALLS = 8
CALL_OPEN, CALL_CLOSE = "<tool_call>\n", "\n</tool_call>"
CALL_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)


# ---------------------------------------------------------------- checks
def check_response_format(value: Any) -> Node | None:
    """The grammar for a response_format (None for plain text)."""
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("type") not in ("text", "json_object", "json_schema"):
        raise ParamError("response_format", "`response_format` must be {\"type\": \"text\"}, "
                         f"{{\"type\": \"json_object\"}} or {{\"type\": \"json_schema\", ...}}, got {value!r}")
    if value["type"] == "text":
        return None
    if value["type"] == "json_object":
        return AnyObject()
    spec = value.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
        raise ParamError("response_format", "`response_format.json_schema.schema` must be a JSON Schema object")
    return compile_schema(spec["schema"], "response_format")


def check_tools(tools: Any) -> tuple[dict, ...]:
    """Tools in OpenAI's shape, each with a name and a parameters schema that compiles."""
    if not isinstance(tools, (list, tuple)) or len(tools) > MAX_TOOLS:
        raise ParamError("tools", f"`tools` must be a list of up to {MAX_TOOLS} functions")
    names = set()
    for index, tool in enumerate(tools):
        where = f"tools[{index}]"
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(function, dict):
            raise ParamError(where, f"`{where}` must be {{\"type\": \"function\", \"function\": {{...}}}}")
        name = function.get("name")
        if not isinstance(name, str) or not NAME.match(name) or name in names:
            raise ParamError(f"{where}.function.name", f"`{where}.function.name` must be a unique name of "
                             f"letters, digits, _ and - (at most 64), got {name!r}")
        names.add(name)
        compile_schema(parameters_of(function), f"{where}.function.parameters")
    return tuple(tools)


def check_tool_choice(choice: Any, tools: tuple[dict, ...]) -> None:
    if choice in ("auto", "none", "required"):
        if choice == "required" and not tools:
            raise ParamError("tool_choice", "`tool_choice` \"required\" needs `tools`")
        return
    name = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
    if name is None or choice.get("type") != "function":
        raise ParamError("tool_choice", "`tool_choice` must be \"auto\", \"none\", \"required\" or "
                         f"{{\"type\": \"function\", \"function\": {{\"name\": ...}}}}, got {choice!r}")
    if name not in tool_names(tools):
        raise ParamError("tool_choice", f"`tool_choice` names {name!r}, which is not among `tools`")


def parameters_of(function: dict) -> dict:
    return function.get("parameters") or {"type": "object", "properties": {}}


def tool_names(tools: tuple[dict, ...]) -> list[str]:
    return [t["function"]["name"] for t in tools]


def calls_tools(tools: tuple[dict, ...], choice: Any) -> bool:
    return bool(tools) and choice != "none"


# ---------------------------------------------------------------- grammar
def constraint(response_format: Any, tools: tuple[dict, ...], choice: Any, parallel: bool) -> Node | None:
    """What the reply must look like: tool calls, a JSON value, or anything (None)."""
    if calls_tools(tools, choice):
        wanted = [t for t in tools if choice in ("auto", "required") or
                  t["function"]["name"] == choice["function"]["name"]]
        calls = []
        for tool in wanted:
            call = Obj()
            call.props = [("name", Lit(json.dumps(tool["function"]["name"])), True),
                          ("arguments", compile_schema(parameters_of(tool["function"]), "tools"), True)]
            calls.append(call)
        block = Arr(Union(calls), 1, MAX_PARALLEL_CALLS if parallel else 1,
                    CALL_OPEN, CALL_CLOSE + "\n" + CALL_OPEN, CALL_CLOSE)
        if choice == "auto":  # the model may also answer: in words, or in the asked-for JSON
            return Union([block, check_response_format(response_format) or Free()])
        return block
    return check_response_format(response_format)


# ---------------------------------------------------------------- prompts
def template_knows_tools(template: str | None) -> bool:
    return bool(template) and "tools" in template and "tool_call" in template


def tools_system_text(tools: tuple[dict, ...]) -> str:
    """For templates without tool support: the Hermes-style instructions Qwen's template writes."""
    listed = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
    return ("You may call one or more functions to help with the user's request. The functions are "
            f"listed in <tools></tools>:\n<tools>\n{listed}\n</tools>\n\nTo call a function, reply "
            "with its name and arguments as JSON inside <tool_call></tool_call> tags:\n<tool_call>\n"
            '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>\n'
            "When a function's result is given, answer the user in plain words.")


def message_for_template(message, knows_tools: bool) -> dict:
    """A ChatMessage as the template reads it. Templates that know tools get OpenAI's fields;
    others get the calls and results written out as text."""
    if message.role == "assistant" and message.tool_calls:
        if knows_tools:
            return {"role": "assistant", "content": message.content or None, "tool_calls": [
                {"id": c.id, "type": "function",
                 "function": {"name": c.name, "arguments": _json_or_text(c.arguments)}}
                for c in message.tool_calls]}
        blocks = "\n".join(f"{CALL_OPEN}{call_text(c.name, c.arguments)}{CALL_CLOSE}" for c in message.tool_calls)
        return {"role": "assistant", "content": (message.content + "\n" if message.content else "") + blocks}
    if message.role == "tool":
        if knows_tools:
            return {"role": "tool", "content": message.content, "tool_call_id": message.tool_call_id}
        return {"role": "user", "content": f"<tool_response>\n{message.content}\n</tool_response>"}
    return {"role": message.role, "content": message.content}


def call_text(name: str, arguments: str) -> str:
    return '{"name": ' + json.dumps(name) + ', "arguments": ' + arguments + "}"


def _json_or_text(arguments: str) -> Any:
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments


# ---------------------------------------------------------------- reading replies
def parse_tool_calls(text: str) -> tuple[str, list[dict]]:
    """(content outside the calls, [{"id", "name", "arguments"}]) from a reply."""
    calls = []
    for block in CALL_BLOCK.findall(text):
        try:
            value = json.loads(block)
        except ValueError:
            continue
        if isinstance(value, dict) and isinstance(value.get("name"), str):
            arguments = value.get("arguments", {})
            calls.append({"id": "call_" + uuid.uuid4().hex[:24], "name": value["name"],
                          "arguments": json.dumps(arguments, ensure_ascii=False)})
    content = CALL_BLOCK.sub("", text).strip() if calls else text
    return content, calls


def constraint_wanted(response_format: Any, tools: tuple[dict, ...], choice: Any) -> bool:
    json_reply = isinstance(response_format, dict) and response_format.get("type") in ("json_object", "json_schema")
    return json_reply or calls_tools(tools, choice)
