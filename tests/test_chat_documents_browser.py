"""Documents and export in the Chat tab, in Chromium against the real studio: attach a Markdown
file holding a fact, ask about it, see the reply's sources name the file and the passage; export
the conversation as JSON and find the messages (and the document) in the download; import it back
(the document indexed again); search finds the conversations by a word of their messages."""
from __future__ import annotations

import json

import pytest
from helpers import open_tab

pytestmark = [pytest.mark.browser, pytest.mark.slow]

FACT = """# Harbour notes

## The lighthouse
The lighthouse keeper is named Oskar Brandvold. The lighthouse is painted green.

## Ferry
The ferry to Lindholm island leaves from pier 4 every ninety minutes.
"""


def test_attach_ask_cite_and_export(page, tmp_path):
    notes = tmp_path / "harbour.md"
    notes.write_text(FACT, encoding="utf-8")
    open_tab(page, "Chat")

    # 1. Attach: the file is indexed and listed with the (new) conversation.
    with page.expect_file_chooser() as chooser:
        page.locator("#chat-attach").click()
    chooser.value.set_files(str(notes))
    page.wait_for_function("document.querySelector('#chat-docs').innerText.includes('harbour.md')",
                           timeout=180_000)
    assert "passages" in page.locator("#chat-docs").inner_text()

    # 2. Ask: the reply lists its sources, naming the file, lines and the passage with the fact.
    page.locator("#chat-message textarea").fill("What is the name of the lighthouse keeper?")
    page.locator("#chat-send").click()
    page.wait_for_function("document.querySelector('#chat-sources').innerText.includes('harbour.md')",
                           timeout=240_000)
    sources = page.locator("#chat-sources").inner_text()
    assert "harbour.md, lines" in sources and "Oskar Brandvold" in sources
    reply = page.locator("#chat-history [data-testid='bot']").last.inner_text().strip()
    assert reply

    # 3. Export as JSON: the download holds the question, the reply and the document.
    page.get_by_text("Export / import").click()
    page.locator("#chat-export-json").click()
    link = page.locator("#chat-export-file a").first
    link.wait_for(timeout=30_000)
    with page.expect_download() as download:
        link.click()
    data = json.loads(open(download.value.path(), encoding="utf-8").read())
    assert data["format"] == "genstudio-conversation"
    assert [m["role"] for m in data["messages"]] == ["user", "assistant"]
    assert data["messages"][0]["content"] == "What is the name of the lighthouse keeper?"
    assert data["messages"][1]["content"].strip()[:20] == reply[:20]
    assert data["documents"] == [{"name": "harbour.md", "text": FACT}]

    # 4. Importing the download opens a copy, its document indexed again.
    exported = tmp_path / "conversation.json"  # the upload button takes .json files only
    download.value.save_as(exported)
    with page.expect_file_chooser() as chooser:
        page.locator("#chat-import").click()
    chooser.value.set_files(str(exported))
    page.wait_for_function("document.querySelectorAll('#chat-conversations label').length === 2",
                           timeout=120_000)
    page.wait_for_function("document.querySelector('#chat-docs').innerText.includes('harbour.md')",
                           timeout=60_000)
    assert "What is the name of the lighthouse keeper?" in page.locator("#chat-history").inner_text()

    # 5. Search finds them by a word of their messages, and not by a word they lack. by a word of its messages, and not by a word it lacks.
    page.locator("#chat-search textarea").fill("lighthouse keeper")
    page.wait_for_function("document.querySelectorAll('#chat-conversations label').length === 2",
                           timeout=30_000)
    page.locator("#chat-search textarea").fill("zeppelin")
    page.wait_for_function("document.querySelectorAll('#chat-conversations label').length === 0",
                           timeout=30_000)
