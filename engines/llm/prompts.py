"""Prompt text: the model's own chat template, the fill-in-the-middle fallback for models
without FIM tokens, and stop strings."""
from __future__ import annotations

from datetime import datetime

CHATML = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")  # no template: ChatML
FENCE = "```"
CURSOR = "<CURSOR>"


def render_template(template: str | None, messages: list[dict], bos: str, eos: str,
                    add_generation_prompt: bool, tools: list[dict] | None = None) -> str:
    """The model's own Jinja chat template, rendered the way transformers does (sandboxed)."""
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template or CHATML).render(
            messages=messages, bos_token=bos, eos_token=eos, tools=tools or None,
            add_generation_prompt=add_generation_prompt)
    except TemplateError as error:
        raise ValueError(f"the model's chat template refused these messages: {error}") from error


# ---------------------------------------------------------------- fill in the middle, in words
def fim_messages(prefix: str, suffix: str) -> tuple[list[tuple[str, str]], tuple[str, ...]]:
    """For models without FIM tokens: (role, content) messages whose last one, the assistant's,
    already holds the code up to the cursor, so the model *continues* the prefix instead of
    repeating it; and the stop strings that end the middle (a closing fence, the end of the
    line for a cursor inside a line, or the suffix's next line)."""
    ask = f"Fill in the code at {CURSOR}.\n{FENCE}\n{prefix}{CURSOR}{suffix}\n{FENCE}"
    # A blank after code ("return ") is where a model's own next token would begin with that
    # space: leave it out and let the model write it (clean_middle drops it again).
    last_line = prefix.rsplit("\n", 1)[-1]
    head = prefix.rstrip(" \t") if last_line.strip() else prefix
    messages = [("user", ask), ("assistant", f"{FENCE}\n{head}")]
    return messages, tuple(dict.fromkeys((FENCE,) + middle_stops(suffix)))


def middle_stops(suffix: str) -> tuple[str, ...]:
    """Where a middle ends, for every fill-in-the-middle model (with FIM tokens too: instruct
    models among them rarely end the middle themselves): the end of the line for a cursor
    inside a line, else the suffix's next line written again."""
    line_rest = suffix.split("\n", 1)[0].strip()
    if line_rest:  # cursor inside a line: the middle ends where that line goes on
        return ("\n",) + ((line_rest,) if len(line_rest) >= 2 else ())
    following = next((line for line in suffix.split("\n") if line.strip()), "")
    return ("\n" + following,) if following else ()


def clean_middle(text: str, prefix: str, suffix: str) -> str:
    """What an editor inserts as is: no fence or cursor marker, no repeat of the prefix's last
    line, no blanks doubling the prefix's indentation, nothing of the suffix."""
    text = text.replace(CURSOR, "")
    if text.lstrip().startswith(FENCE):  # a fence the model opened anyway
        text = text.lstrip()[len(FENCE):].split("\n", 1)[-1]
    text = text.split(FENCE, 1)[0]
    last_line = prefix.rsplit("\n", 1)[-1]
    if last_line.strip() and text.startswith(last_line):
        text = text[len(last_line):]
    if prefix[-1:] in (" ", "\t"):
        text = text.lstrip(" \t")
    head = suffix.strip()[:40]
    if len(head) >= 4 and head in text:
        text = text[:text.index(head)]
    line_rest = suffix.split("\n", 1)[0].strip()
    for size in range(len(line_rest), 0, -1):  # the suffix's start written again at the end
        tail = line_rest[:size]
        if text.endswith(tail) and (size >= 2 or _unbalanced(text, tail)):
            text = text[:-size]
            break
    text = _within_block(text, prefix)
    if suffix.startswith("\n") or not suffix.strip():
        text = text.rstrip()
    return text


def _within_block(text: str, prefix: str) -> str:
    """A middle that starts inside an indented block ends where a line starts a new top-level
    statement (`def test_...`, `# Test cases`, `print(...)`): models go on to write usage
    examples after the middle. Closing brackets at column 0 stay (they end C-like blocks)."""
    before = next((line for line in reversed(prefix.split("\n")) if line.strip()), "")
    first = next((line for line in text.split("\n") if line.strip()), "")
    if not (before[:1].isspace() or first[:1].isspace() or prefix.endswith((" ", "\t"))):
        return text  # at the top level: anything may follow
    lines = text.split("\n")
    for number, line in enumerate(lines[1:], 1):
        if line[:1] and not line[:1].isspace() and line[:1] not in ")]}":
            return "\n".join(lines[:number])
    return text


def _unbalanced(text: str, closing: str) -> bool:
    pairs = {")": "(", "]": "[", "}": "{"}
    return closing in pairs and text.count(closing) > text.count(pairs[closing])


def split_at_stop(text: str, stops: tuple[str, ...], final: bool = False) -> tuple[str, str, bool]:
    """(text safe to emit, text held back because it may begin a stop string, stop found)."""
    hits = [text.find(s) for s in stops if s in text]
    if hits:
        return text[:min(hits)], "", True
    keep = 0
    if not final:
        for s in stops:
            for length in range(min(len(text), len(s) - 1), 0, -1):
                if text.endswith(s[:length]):
                    keep = max(keep, length)
                    break
    return (text[:-keep], text[-keep:], False) if keep else (text, "", False)
