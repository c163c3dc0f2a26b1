"""Documents for a conversation: text out of files, passages, embeddings, the passages nearest a
question, and a prompt that asks the model to answer from them and cite them.

    chunks = chunk_document("notes.md", extract_text("notes.md", data))
    index = DocumentIndex.build(chunks, embedder)            # engines.llm.embeddings engine
    hits = index.search("What is the refund period?", embedder, k=4)
    message = grounded_question("What is the refund period?", hits)   # the user turn to send
    sources = cited(reply, hits) or hits                        # what the reply used

Storage (rows for documents and passage vectors beside the conversation) belongs to the chat
store (studio/chat/); this module keeps to files and numbers. Text, Markdown, HTML and source
files are read here; PDF needs `pypdf` (not installed by default: refused with a message).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import PurePath

from engines.base import ParamError

MAX_FILE_BYTES = 20 << 20
PASSAGE_CHARS = 700  # about 150 MiniLM tokens: inside its 256-token window with room to spare
TEXT_SUFFIXES = {".txt", ".md", ".markdown", ".rst", ".csv", ".json", ".yaml", ".yml", ".toml", ".ini",
                 ".py", ".js", ".ts", ".tsx", ".jsx", ".java", ".c", ".h", ".cpp", ".hpp", ".go", ".rs",
                 ".rb", ".php", ".sh", ".sql", ".css", ".xml", ".log"}


@dataclass(frozen=True)
class Passage:
    source: str  # the file name
    number: int  # 1-based, within its file
    first_line: int
    last_line: int
    text: str

    @property
    def label(self) -> str:
        return f"{self.source}, lines {self.first_line}-{self.last_line}"


# ---------------------------------------------------------------- files -> text
class _HTMLText(HTMLParser):
    SKIP = {"script", "style", "head", "noscript"}
    BLOCKS = {"p", "div", "br", "li", "h1", "h2", "h3", "h4", "h5", "h6", "tr", "pre", "section", "article"}

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self.skipping += 1
        elif tag in self.BLOCKS:
            self.parts.append("\n\n" if tag.startswith("h") or tag == "p" else "\n")

    def handle_endtag(self, tag):
        if tag in self.SKIP and self.skipping:
            self.skipping -= 1
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self.skipping:
            self.parts.append(data)


def extract_text(name: str, data: bytes) -> str:
    """The readable text of a file; ParamError("file") for what cannot be read."""
    suffix = PurePath(name).suffix.lower()
    if len(data) > MAX_FILE_BYTES:
        raise ParamError("file", f"{name} is {len(data) / 1e6:.1f} MB; the limit is {MAX_FILE_BYTES >> 20} MB")
    if suffix == ".pdf":
        try:
            import io

            from pypdf import PdfReader
        except ImportError:
            raise ParamError("file", f"{name}: reading PDF needs the pypdf package (pip install pypdf)")
        pages = PdfReader(io.BytesIO(data)).pages
        return "\n\n".join(page.extract_text() or "" for page in pages)
    if suffix not in TEXT_SUFFIXES | {".html", ".htm"}:
        raise ParamError("file", f"{name}: {suffix or 'no extension'} files are not supported "
                         "(text, Markdown, HTML, PDF or source code)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    if suffix in (".html", ".htm"):
        parser = _HTMLText()
        parser.feed(text)
        text = re.sub(r"[ \t]+", " ", "".join(parser.parts))
        text = re.sub(r"\n\s*\n\s*\n+", "\n\n", text)
    return text.replace("\r\n", "\n")


# ---------------------------------------------------------------- text -> passages
def chunk_document(name: str, text: str, size: int = PASSAGE_CHARS) -> list[Passage]:
    """Passages of about `size` characters that end at blank lines where they can (paragraphs,
    functions), else at line ends; each knows its line range for the citation."""
    lines = text.split("\n")
    passages, start, length = [], 0, 0
    for i, line in enumerate(lines):
        length += len(line) + 1
        at_break = not line.strip() or i == len(lines) - 1
        if length >= size and (at_break or length >= 2 * size):
            passages.append(_passage(name, len(passages) + 1, lines, start, i))
            start, length = i + 1, 0
    if start < len(lines) and "".join(lines[start:]).strip():
        passages.append(_passage(name, len(passages) + 1, lines, start, len(lines) - 1))
    return [p for p in passages if p.text]


def _passage(name: str, number: int, lines: list[str], first: int, last: int) -> Passage:
    return Passage(name, number, first + 1, last + 1, "\n".join(lines[first:last + 1]).strip())


# ---------------------------------------------------------------- passages -> answers
class DocumentIndex:
    """Passages and their unit vectors; search by cosine similarity (a dot product)."""

    def __init__(self, passages: list[Passage], vectors) -> None:
        self.passages, self.vectors = passages, vectors

    @classmethod
    def build(cls, passages: list[Passage], embedder) -> "DocumentIndex":
        if not passages:
            raise ParamError("file", "the documents hold no text")
        # The heading-like first line and the file name help short passages match questions.
        vectors, _ = embedder.embed([f"{p.source}: {p.text}" for p in passages])
        return cls(passages, vectors)

    def search(self, question: str, embedder, k: int = 4) -> list[Passage]:
        query, _ = embedder.embed([question])
        scores = self.vectors @ query[0]
        order = scores.argsort()[::-1][:k]
        return [self.passages[int(i)] for i in order]


def grounded_question(question: str, hits: list[Passage]) -> str:
    """The user turn: numbered passages, then the question, asking for [n] citations."""
    listed = "\n\n".join(f"[{n}] ({p.label})\n{p.text}" for n, p in enumerate(hits, 1))
    return (f"Answer the question using these passages from the attached documents. Cite the "
            f"passages you use as [1], [2]...\n\n{listed}\n\nQuestion: {question}")


def cited(reply: str, hits: list[Passage]) -> list[Passage]:
    """The passages a reply cites by number, in order of first citation."""
    numbers = dict.fromkeys(int(n) for n in re.findall(r"\[(\d+)\]", reply))
    return [hits[n - 1] for n in numbers if 1 <= n <= len(hits)]
