"""Conversations exported to JSON and read back unchanged, exported to Markdown for reading,
bad imports refused by field with nothing stored, and search over titles and message text."""
from __future__ import annotations

import json

import pytest

from studio.chat.service import ChatService


@pytest.fixture
def chats(db, gallery):  # the gallery's tables: a message may link to a gallery item
    return ChatService(db)


def _conversation(chats: ChatService, title: str, *pairs: tuple[str, str]) -> int:
    messages = [{"role": r, "content": c} for r, c in pairs]
    saved = chats.record_turn(None, messages, reply_item_id=None, model="smollm2-135m-instruct",
                              system_prompt="Be brief.", params={"temperature": 0.3, "seed": 7})
    if title:
        chats.rename(saved.id, title)
    return saved.id


def test_json_export_imports_back_unchanged(chats):
    conv_id = _conversation(chats, "Rivers · ünïcode", ("user", "What is a river?\n\nTwo lines."),
                            ("assistant", "Flowing *water* [1]."), ("user", "And a lake?"),
                            ("assistant", "Still water."))
    exported = chats.export_json(conv_id)
    data = json.loads(exported)
    assert data["format"] == "genstudio-conversation" and len(data["messages"]) == 4

    imported = chats.import_json(exported.encode("utf-8"))
    original = chats.open(conv_id)
    assert imported.id != conv_id
    assert imported.title == original.title == "Rivers · ünïcode"
    assert [(m.role, m.content) for m in imported.messages] == \
        [(m.role, m.content) for m in original.messages]
    assert imported.system_prompt == "Be brief." and imported.model == "smollm2-135m-instruct"
    assert imported.params == original.params == {"temperature": 0.3, "seed": 7}
    again = json.loads(chats.export_json(imported.id))  # a round trip changes nothing but times
    for key in ("title", "model", "system_prompt", "params", "messages", "documents"):
        assert again[key] == data[key]


def test_markdown_export_reads_as_a_transcript(chats):
    conv_id = _conversation(chats, "Lakes", ("user", "Name a lake."), ("assistant", "Baikal."))
    text = chats.export_markdown(conv_id)
    assert text.startswith("# Lakes\n")
    assert "**System prompt:**\n\nBe brief." in text
    assert text.index("## User\n\nName a lake.") < text.index("## Assistant\n\nBaikal.")


@pytest.mark.parametrize("payload, match", [
    (b"{not json", "not a JSON file"),
    (json.dumps({"title": "x", "messages": []}), "not a GenStudio conversation"),
    (json.dumps({"format": "genstudio-conversation", "version": 9, "title": "x"}), "version"),
    (json.dumps({"format": "genstudio-conversation", "version": 1, "title": " ", "messages": []}),
     "title"),
    (json.dumps({"format": "genstudio-conversation", "version": 1, "title": "x",
                 "messages": [{"role": "tool", "content": "hi"}]}), r"messages\[0\]"),
    (json.dumps({"format": "genstudio-conversation", "version": 1, "title": "x", "messages": [],
                 "documents": [{"name": "a.md"}]}), r"documents\[0\]"),
])
def test_bad_imports_are_refused_by_field_and_store_nothing(chats, payload, match):
    with pytest.raises(ValueError, match=match):
        chats.import_json(payload)
    assert chats.choices() == []


def test_search_finds_titles_and_message_text(chats):
    rivers = _conversation(chats, "Rivers", ("user", "What is a river?"), ("assistant", "Water."))
    cakes = _conversation(chats, "Baking", ("user", "How long for a CAKE?"),
                          ("assistant", "40 min at 180°C, 100% done."))
    assert [i for _, i in chats.search("river")] == [rivers]  # title and text, listed once
    assert [i for _, i in chats.search("cake")] == [cakes]  # case-insensitive, in messages
    assert [i for _, i in chats.search("100%")] == [cakes]  # % is a character, not a wildcard
    assert chats.search("_") == [] and chats.search("nothing like this") == []
    assert {i for _, i in chats.search("  ")} == {rivers, cakes}  # blank: everything


def test_tab_exports_a_file_and_imports_it_back(ctx):
    from studio.ui import chat_transfer as tab

    chats = ChatService(ctx.db)
    conv_id = _conversation(chats, "Export me", ("user", "Hello"), ("assistant", "Hi there."))
    path = tab.export_conversation(ctx, chats, conv_id, kind="json")
    assert path.endswith(".json") and json.loads(open(path, encoding="utf-8").read())["title"] == "Export me"
    markdown = tab.export_conversation(ctx, chats, conv_id, kind="md")
    assert "## Assistant\n\nHi there." in open(markdown, encoding="utf-8").read()
    shown, stored, new_id, radio, title = tab.import_conversation(ctx, chats, path)
    assert new_id != conv_id and title == "Export me"
    assert shown == [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi there."}]
    assert radio["value"] == new_id and len(radio["choices"]) == 2
