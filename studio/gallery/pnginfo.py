"""Generation metadata inside PNG files.

Two text chunks: `parameters`, in AUTOMATIC1111's exact infotext layout so that A1111, ComfyUI,
Civitai and friends read our images, and `genstudio`, our own JSON with every parameter.

    <prompt>
    Negative prompt: <negative prompt>
    Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, Model hash: ..., Model: ...
"""
from __future__ import annotations

import io
import json
import re
from typing import Any

from PIL import Image, PngImagePlugin

PARAMETERS_CHUNK = "parameters"
JSON_CHUNK = "genstudio"

# One "Key: value" pair of the last line; values with commas or colons are JSON-quoted (A1111's
# own rule), so a quoted value may hold anything. A1111 parses this with the regular expression
# below; `_pairs` gives the same pairs in one pass (the expression is quadratic on a long line
# without pairs: 40 kB took 11 s, and a PNG text chunk can hold megabytes).
_PAIR = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_SIZE = re.compile(r"^(\d+)x(\d+)$")


def _quote(value: Any) -> str:
    text = str(value)
    if "," not in text and "\n" not in text and ":" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def format_infotext(prompt: str, negative_prompt: str, settings: dict[str, Any]) -> str:
    """settings keeps A1111's key names and order, e.g. {"Steps": 20, "Sampler": "Euler a", ...}.
    None values are left out."""
    lines = [prompt]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    pairs = [f"{key}: {_quote(value)}" for key, value in settings.items() if value is not None]
    lines.append(", ".join(pairs))
    return "\n".join(lines)


def parse_infotext(infotext: str) -> dict[str, Any]:
    """Inverse of format_infotext, tolerant like A1111's parser: returns {"Prompt", "Negative
    prompt", and each key of the last line}; "Size" also gives "Size-1"/"Size-2"."""
    lines = infotext.strip().split("\n")
    last = lines[-1] if lines else ""
    pairs = _pairs(last)
    if len(pairs) < 3:  # no settings line: everything is prompt
        lines.append("")
        last, pairs = "", []
    prompt_lines, negative_lines, in_negative = [], [], False
    for line in lines[:-1]:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:"):].strip()
        (negative_lines if in_negative else prompt_lines).append(line)
    result: dict[str, Any] = {"Prompt": "\n".join(prompt_lines),
                              "Negative prompt": "\n".join(negative_lines)}
    for key, value in pairs:
        value = value.strip()
        if value.startswith('"') and value.endswith('"'):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass
        result[key] = value
        size = _SIZE.match(value) if key == "Size" and isinstance(value, str) else None
        if size:
            result["Size-1"], result["Size-2"] = size.group(1), size.group(2)
    return result


# Pieces of `_PAIR` that are linear on their own, matched at a position (run in C).
_SPACES = re.compile(r"\s*")
_KEY_RUN = re.compile(r"[\w \-/]*")
_QUOTED_BODY = re.compile(r'[^\\"]*(?:\\.[^\\"]*)*')  # the unrolled (?:\\.|[^\\"])*: fast
MAX_PAIRS = 1000  # A1111 writes a few dozen; a line of 100,000 pairs is an attack, not settings


def _pairs(line: str) -> list[tuple[str, str]]:
    """`_PAIR.findall(line)[:MAX_PAIRS]` in linear time. A key is a run of word, space, - and /
    characters that starts with a word character, is at least two long and ends at a colon; a
    run that ends elsewhere cannot hold a key anywhere inside it, so the scan skips all of it."""
    pairs, i, n = [], 0, len(line)
    unclosed_from = n + 1  # a quote scan from here on reached the end: later ones will too
    while i < n and len(pairs) < MAX_PAIRS:
        # 1. The key.
        k = _SPACES.match(line, i).end()
        if k >= n or not (line[k].isalnum() or line[k] == "_"):
            i = k + 1
            continue
        end = _KEY_RUN.match(line, k).end()
        if end >= n or line[end] != ":" or end - k < 2:
            i = end if end > k else k + 1
            continue
        # 2. The value: JSON-quoted up to its closing quote and a comma, or up to the next comma.
        v = _SPACES.match(line, end + 1).end()
        close = -1
        if v < n and line[v] == '"' and v + 1 < unclosed_from:
            body_end = _QUOTED_BODY.match(line, v + 1).end()
            if body_end >= n or line[body_end] != '"':  # ran to the end (or a lone backslash)
                unclosed_from = v + 1
            elif body_end > v + 1 and (body_end + 1 == n or line[body_end + 1] == ","):
                close = body_end
        if close != -1:
            pairs.append((line[k:end], line[v:close + 1]))
            i = close + 2
        else:
            comma = line.find(",", v)
            pairs.append((line[k:end], line[v:] if comma == -1 else line[v:comma]))
            i = n if comma == -1 else comma + 1
    return pairs


def png_bytes_with_metadata(image: Image.Image, infotext: str | None, data: dict | None) -> bytes:
    """Encode as PNG with our two chunks. Returned as bytes so the caller decides where it lands."""
    info = PngImagePlugin.PngInfo()
    if infotext is not None:
        info.add_text(PARAMETERS_CHUNK, infotext)
    if data is not None:
        info.add_text(JSON_CHUNK, json.dumps(data, ensure_ascii=False, default=str))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def read_png_metadata(source: Image.Image | bytes | str) -> dict[str, Any]:
    """Both chunks of a PNG: {"parameters": str|None, "parsed": dict, "genstudio": dict|None}."""
    if isinstance(source, bytes):  # a client's bytes: size and format checked first
        from studio.images import open_user_image

        source = open_user_image(source)
    image = source if isinstance(source, Image.Image) else Image.open(source)
    chunks = getattr(image, "text", None) or image.info
    infotext = chunks.get(PARAMETERS_CHUNK)
    ours = chunks.get(JSON_CHUNK)
    try:
        ours_parsed = json.loads(ours) if ours else None
    except json.JSONDecodeError:
        ours_parsed = None
    return {"parameters": infotext,
            "parsed": parse_infotext(infotext) if infotext else {},
            "genstudio": ours_parsed}
