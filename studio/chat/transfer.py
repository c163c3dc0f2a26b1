"""Conversations out of and into the studio: JSON (lossless, re-importable) and Markdown (for
reading). The JSON keeps title, model, system prompt, sampling settings, times, messages and the
attached documents' text; gallery links (item ids) are local to one studio and stay behind.

    data = to_json(conversation, documents)      # str
    parsed = parse_json(data)                     # ImportedConversation, or ValueError naming the field
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

FORMAT = "genstudio-conversation"
VERSION = 1
MAX_IMPORT_BYTES = 20 << 20
MAX_MESSAGES = 10_000
ROLES = ("system", "user", "assistant")


@dataclass
class ImportedConversation:
    title: str
    model: str = ""
    system_prompt: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, str]] = field(default_factory=list)
    documents: list[dict[str, str]] = field(default_factory=list)  # {"name", "text"}


def to_json(conversation, documents: list[dict[str, str]] = ()) -> str:
    """`conversation`: a ConversationView; `documents`: [{"name", "text"}] attached to it."""
    return json.dumps({
        "format": FORMAT, "version": VERSION, "title": conversation.title,
        "model": conversation.model, "system_prompt": conversation.system_prompt,
        "params": conversation.params, "created_at": conversation.created_at.isoformat(),
        "updated_at": conversation.updated_at.isoformat(),
        "messages": [{"role": m.role, "content": m.content} for m in conversation.messages],
        "documents": [{"name": d["name"], "text": d["text"]} for d in documents],
    }, ensure_ascii=False, indent=2, default=str)


def to_markdown(conversation, documents: list[dict[str, str]] = ()) -> str:
    """A readable transcript: title, settings, then each message under its role."""
    lines = [f"# {conversation.title}", "",
             f"*Model:* {conversation.model or 'default'} · *updated* "
             f"{conversation.updated_at:%Y-%m-%d %H:%M} UTC", ""]
    if conversation.system_prompt:
        lines += ["**System prompt:**", "", conversation.system_prompt, ""]
    if documents:
        lines += ["**Attached documents:** " + ", ".join(d["name"] for d in documents), ""]
    for message in conversation.messages:
        lines += [f"## {message.role.capitalize()}", "", message.content, ""]
    return "\n".join(lines).rstrip() + "\n"


def parse_json(data: bytes | str) -> ImportedConversation:
    """Check an exported conversation field by field; ValueError names what is wrong."""
    if isinstance(data, bytes):
        if len(data) > MAX_IMPORT_BYTES:
            raise ValueError(f"the file is {len(data) / 1e6:.1f} MB; the import limit is "
                             f"{MAX_IMPORT_BYTES >> 20} MB")
        data = data.decode("utf-8", errors="replace")
    try:
        raw = json.loads(data)
    except json.JSONDecodeError as error:
        raise ValueError(f"not a JSON file: {error.msg} at line {error.lineno}") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ValueError(f"not a GenStudio conversation: `format` must be {FORMAT!r} "
                         "(export one from the Chat tab)")
    if raw.get("version") != VERSION:
        raise ValueError(f"`version` {raw.get('version')!r} is not supported (this studio reads {VERSION})")
    out = ImportedConversation(title=_text(raw, "title", required=True),
                               model=_text(raw, "model"), system_prompt=_text(raw, "system_prompt"))
    params = raw.get("params", {})
    if not isinstance(params, dict):
        raise ValueError("`params` must be an object")
    out.params = params
    out.messages = _messages(raw.get("messages"))
    out.documents = _documents(raw.get("documents", []))
    return out


def _text(raw: dict, name: str, required: bool = False) -> str:
    value = raw.get(name, "")
    if not isinstance(value, str) or (required and not value.strip()):
        raise ValueError(f"`{name}` must be a {'non-empty ' if required else ''}string")
    return value


def _messages(value) -> list[dict[str, str]]:
    if not isinstance(value, list) or len(value) > MAX_MESSAGES:
        raise ValueError(f"`messages` must be a list of at most {MAX_MESSAGES} messages")
    out = []
    for i, message in enumerate(value):
        if not isinstance(message, dict) or message.get("role") not in ROLES or \
                not isinstance(message.get("content"), str):
            raise ValueError(f"`messages[{i}]` must be {{'role': system|user|assistant, "
                             "'content': text}}")
        out.append({"role": message["role"], "content": message["content"]})
    return out


def _documents(value) -> list[dict[str, str]]:
    if not isinstance(value, list):
        raise ValueError("`documents` must be a list")
    for i, doc in enumerate(value):
        if not isinstance(doc, dict) or not isinstance(doc.get("name"), str) or \
                not isinstance(doc.get("text"), str):
            raise ValueError(f"`documents[{i}]` must be {{'name': text, 'text': text}}")
    return [{"name": d["name"], "text": d["text"]} for d in value]
