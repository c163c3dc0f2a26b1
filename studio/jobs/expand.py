"""Turning one prompt template or one uploaded file into many jobs.

Template syntax (combinatorial: every combination is one prompt):
    {red|green|blue} car          three prompts; options may be empty ({|at night}) or nested
    a __animal__ in the snow      one prompt per line of <data_dir>/wildcards/animal.txt
                                  (blank and # lines skipped; lines may use the syntax too;
                                  `__colors/warm__` reads wildcards/colors/warm.txt)
    \\{ \\} \\| \\_                  a literal brace, bar or underscore
Prompt matrix (A1111's): `a house|oil painting|at night` -> the first part always, each later
part on or off: 2^(parts-1) prompts ("a house", "a house, oil painting", ...).

Counts are computed without expanding anything, so the UI can say "this makes 1,234,567 jobs"
and refuse it before a single string is built.

Uploaded files: plain text, one prompt per line, with optional A1111-style options after it
(`a red car --steps 20 --seed 5 --negative_prompt "blurry"`); or CSV with a header row that has
a `prompt` column and any parameter columns.
"""
from __future__ import annotations

import csv
import io
import itertools
import json
import math
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Union

from studio.api.a1111_names import PARAM_NAMES

MAX_EXPANSION = 10_000  # one expansion; the queue refuses bigger requests as well
MAX_WILDCARD_DEPTH = 8  # a wildcard may use wildcards, this deep
MAX_NESTING = 32  # braces inside braces (wildcards included): deeper is an attack, not a prompt
MAX_TEMPLATE_CHARS = 200_000  # one template as typed or uploaded
MAX_EXPANDED_CHARS = 8_000_000  # all prompts of one request together (counted before expanding)
# A1111's option names (studio/api/a1111_names.py) and two short forms of our own
OPTION_ALIASES = {**PARAM_NAMES, "negative": "negative_prompt", "neg": "negative_prompt"}


_WILDCARD = re.compile(r"__([\w\-/.]+?)__")


@dataclass(frozen=True)
class Choice:
    options: tuple["Seq", ...]


Node = Union[str, Choice]
Seq = tuple[Node, ...]


# ------------------------------------------------------------------ parsing
class _Parser:
    def __init__(self, wildcards_dir: Path | None) -> None:
        self.wildcards_dir = Path(wildcards_dir) if wildcards_dir else None
        self._cache: dict[str, Choice] = {}
        self._open_braces = 0  # nesting right now, across wildcard files too

    def parse(self, text: str, depth: int = 0, stack: tuple[str, ...] = ()) -> Seq:
        seq, end = self._seq(text, 0, depth, stack, top=True)
        return seq

    def _seq(self, text: str, i: int, depth: int, stack: tuple[str, ...], top: bool) -> tuple[Seq, int]:
        """Parse until an unescaped | or } that closes the enclosing brace (or the end)."""
        nodes: list[Node] = []
        literal: list[str] = []

        def flush() -> None:
            if literal:
                nodes.append("".join(literal))
                literal.clear()

        while i < len(text):
            char = text[i]
            if char == "\\" and i + 1 < len(text):
                literal.append(text[i + 1])
                i += 2
            elif char == "{":
                flush()
                options, i = self._choice(text, i + 1, depth, stack)
                nodes.append(options)
            elif char in "|}" and not top:
                break
            elif char == "}":
                raise ValueError(f"unbalanced '}}' at character {i + 1} of {text!r}")
            elif text.startswith("__", i) and (match := _WILDCARD.match(text, i)):  # no copy of the rest
                flush()
                nodes.append(self._wildcard(match.group(1), depth, stack))
                i = match.end()
            else:
                literal.append(char)
                i += 1
        flush()
        return tuple(nodes), i

    def _choice(self, text: str, i: int, depth: int, stack: tuple[str, ...]) -> tuple[Choice, int]:
        self._open_braces += 1
        try:
            return self._options(text, i, depth, stack)
        finally:
            self._open_braces -= 1

    def _options(self, text: str, i: int, depth: int, stack: tuple[str, ...]) -> tuple[Choice, int]:
        if self._open_braces > MAX_NESTING:
            raise ValueError(f"braces nest deeper than {MAX_NESTING} at character {i} of the prompt")
        options = []
        start = i
        while True:
            seq, i = self._seq(text, i, depth, stack, top=False)
            options.append(seq)
            if i >= len(text):
                raise ValueError(f"'{{' at character {start} has no closing '}}' in {text!r}")
            if text[i] == "}":
                return Choice(tuple(options)), i + 1
            i += 1  # past the |

    def _wildcard(self, name: str, depth: int, stack: tuple[str, ...]) -> Choice:
        if name in stack:
            raise ValueError(f"wildcard __{name}__ uses itself (through {' -> '.join(stack)})")
        if depth >= MAX_WILDCARD_DEPTH:
            raise ValueError(f"wildcards nest deeper than {MAX_WILDCARD_DEPTH} at __{name}__")
        if name in self._cache:
            return self._cache[name]
        if self.wildcards_dir is None:
            raise ValueError(f"__{name}__ is a wildcard, but there is no wildcards folder")
        path = (self.wildcards_dir / f"{name}.txt").resolve()
        if self.wildcards_dir.resolve() not in path.parents:
            raise ValueError(f"wildcard name {name!r} points outside the wildcards folder")
        if not path.is_file():
            known = sorted(p.relative_to(self.wildcards_dir).with_suffix("").as_posix()
                           for p in self.wildcards_dir.rglob("*.txt")) if self.wildcards_dir.exists() else []
            raise ValueError(f"no wildcard file for __{name}__ (expected {path}); "
                             f"known: {', '.join(known) or 'none'}")
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        lines = [line for line in lines if line and not line.startswith("#")]
        if not lines:
            raise ValueError(f"wildcard file {path} has no lines")
        choice = Choice(tuple(self.parse(line, depth + 1, (*stack, name)) for line in lines))
        self._cache[name] = choice
        return choice


def _split_top_level(text: str, separator: str = "|") -> list[str]:
    """Split on separators outside braces (for the prompt matrix)."""
    parts, depth, current, i = [], 0, [], 0
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text):
            current.append(text[i:i + 2])
            i += 2
            continue
        depth += char == "{"
        depth -= char == "}"
        if char == separator and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
        i += 1
    parts.append("".join(current))
    return parts


def parse_template(template: str, wildcards_dir: Path | None = None, matrix: bool = False) -> Seq:
    if not isinstance(template, str):
        raise ValueError(f"the prompt must be text, got {type(template).__name__}")
    if len(template) > MAX_TEMPLATE_CHARS:
        raise ValueError(f"the prompt template has {len(template):,} characters; the limit is "
                         f"{MAX_TEMPLATE_CHARS:,}")
    parser = _Parser(wildcards_dir)
    if not matrix:
        return parser.parse(template)
    base, *optional = [part.strip() for part in _split_top_level(template)]
    seq: list[Node] = list(parser.parse(base))
    for part in optional:  # each later part on or off
        seq.append(Choice(((), (", ", *parser.parse(part)))))
    return tuple(seq)


# ------------------------------------------------------------------ counting and expanding
def _count(seq: Seq) -> int:
    return math.prod(1 if isinstance(node, str) else sum(_count(o) for o in node.options) for node in seq)


def _measure(seq: Seq, depth: int = 0) -> tuple[int, int]:
    """(prompts, characters of all prompts together) without expanding: for a sequence, each
    part's characters appear once per combination of the other parts."""
    if depth > 2 * MAX_NESTING * (MAX_WILDCARD_DEPTH + 1):  # cached wildcards reused deep inside
        raise ValueError(f"braces and wildcards nest deeper than {MAX_NESTING}")
    parts = []
    for node in seq:
        if isinstance(node, str):
            parts.append((1, len(node)))
        else:
            measured = [_measure(option, depth + 1) for option in node.options]
            parts.append((sum(c for c, _ in measured), sum(n for _, n in measured)))
    count = math.prod(c for c, _ in parts)
    chars = sum(n * (count // c) for c, n in parts if c)
    return count, chars


def _check_size(count: int, chars: int, limit: int, what: str = "prompts") -> None:
    if count > limit:
        raise ValueError(f"this makes {count:,} {what}; the limit is {limit:,} (fewer options, "
                         f"or split it into several batches)")
    if chars > MAX_EXPANDED_CHARS:
        raise ValueError(f"these {count:,} prompts hold {chars:,} characters together; the limit "
                         f"is {MAX_EXPANDED_CHARS:,} (shorter prompts, or fewer of them)")


def _expand(seq: Seq) -> Iterator[str]:
    def alternatives(node: Node):
        if isinstance(node, str):
            return (node,)
        return [text for option in node.options for text in _expand(option)]
    for parts in itertools.product(*(alternatives(n) for n in seq)):
        yield "".join(parts)


def count_prompts(template: str, wildcards_dir: Path | None = None, matrix: bool = False) -> int:
    return _count(parse_template(template, wildcards_dir, matrix))


def expand_prompts(template: str, wildcards_dir: Path | None = None, matrix: bool = False,
                   limit: int = MAX_EXPANSION) -> list[str]:
    """Every prompt the template makes, in order; ValueError when there are more than `limit`."""
    seq = parse_template(template, wildcards_dir, matrix)
    _check_size(*_measure(seq), limit)
    return [" ".join(p.split()) for p in _expand(seq)]  # tidy doubled spaces left by empty options


# ------------------------------------------------------------------ uploaded files
def _value(text: str):
    """Option text to a JSON value: 20 -> int, 7.5 -> float, true -> bool, [..]/{..} -> JSON."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    if text[:1] in "[{":
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            pass
    return text


def _options(words: list[str], where: str) -> dict:
    params: dict = {}
    i = 0
    while i < len(words):
        word = words[i]
        if not word.startswith("--") or len(word) < 3:
            raise ValueError(f"{where}: expected an option like --steps, got {word!r}")
        key = OPTION_ALIASES.get(word[2:].replace("-", "_"), word[2:].replace("-", "_"))
        if i + 1 >= len(words) or words[i + 1].startswith("--"):
            raise ValueError(f"{where}: option {word} needs a value")
        params[key] = _value(words[i + 1])
        i += 2
    return params


def parse_prompt_file(text: str, filename: str = "prompts.txt") -> list[dict]:
    """Rows of parameters, each with a `prompt`. ValueError names the line that is wrong."""
    if filename.lower().endswith(".csv") or _looks_like_csv_header(text):
        return _parse_csv(text)
    rows = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"line {number}"
        if line.startswith("--"):  # A1111's "prompts from file": --prompt "..." --steps 20
            try:
                row = _options(shlex.split(line), where)
            except ValueError as error:
                raise ValueError(str(error)) from None
        else:
            prompt, sep, rest = line.partition(" --")
            try:
                row = {"prompt": prompt.strip(), **(_options(shlex.split("--" + rest), where) if sep else {})}
            except ValueError as error:  # shlex's "No closing quotation" is a ValueError too
                raise ValueError(f"{where}: {error}" if not str(error).startswith("line") else str(error)) from None
        if not str(row.get("prompt", "")).strip():
            raise ValueError(f"{where}: no prompt (give one before the options, or --prompt)")
        row["prompt"] = str(row["prompt"])
        rows.append(row)
    if not rows:
        raise ValueError("the file has no prompts (one per line; # starts a comment)")
    return rows


def _looks_like_csv_header(text: str) -> bool:
    first = next((line for line in text.splitlines() if line.strip()), "")
    return "," in first and "prompt" in [c.strip().lower() for c in next(csv.reader([first]))]


def _parse_csv(text: str) -> list[dict]:
    reader = csv.DictReader(io.StringIO(text))
    fields = [f.strip().lower() for f in reader.fieldnames or []]
    if "prompt" not in fields:
        raise ValueError(f"the CSV file needs a `prompt` column; its header is {reader.fieldnames}")
    rows = []
    for number, record in enumerate(reader, 2):
        row = {}
        for key, value in record.items():
            if key is None:
                raise ValueError(f"line {number}: more cells than header columns")
            key = key.strip().lower()
            if value is None or not value.strip():
                continue
            key = OPTION_ALIASES.get(key, key)
            row[key] = value.strip() if key in ("prompt", "negative_prompt") else _value(value.strip())
        if not row.get("prompt"):
            continue  # a blank row
        rows.append(row)
    if not rows:
        raise ValueError("the CSV file has no rows with a prompt")
    return rows


# ------------------------------------------------------------------ rows -> job parameters
def count_jobs(rows: list[dict], wildcards_dir: Path | None = None, matrix: bool = False) -> int:
    return sum(count_prompts(row.get("prompt", ""), wildcards_dir, matrix) for row in rows)


def expand_jobs(base: dict, rows: list[dict], wildcards_dir: Path | None = None,
                matrix: bool = False, limit: int = MAX_EXPANSION) -> list[dict]:
    """Parameters of every job: `base` (the tab's settings) overlaid by each row, with each row's
    prompt expanded. Refused as a whole when it would make more than `limit` jobs."""
    sizes = [_measure(parse_template(row.get("prompt", ""), wildcards_dir, matrix)) for row in rows]
    _check_size(sum(c for c, _ in sizes), sum(n for _, n in sizes), limit, "jobs")
    jobs = []
    for row in rows:
        for prompt in expand_prompts(row.get("prompt", ""), wildcards_dir, matrix, limit):
            jobs.append({**base, **row, "prompt": prompt})
    return jobs
