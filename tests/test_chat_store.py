"""Chat conversations in SQLite: saved whole, listed, renamed, deleted, there after a restart;
the ORM models mirror the migration; the chat task records a gallery text item."""
from __future__ import annotations

import pytest

from studio.chat.models import Conversation, Message
from studio.chat.store import ChatStore, MessageView, title_from
from studio.db.database import Base, Database


def test_conversations_survive_a_restart(tmp_path):
    path = tmp_path / "studio.sqlite3"
    db = Database(path)
    db.migrate()
    store = ChatStore(db)
    conv = store.create("Rivers", model="smollm2-135m-instruct")
    store.save(conv.id, [MessageView("user", "What is a river?"),
                         MessageView("assistant", "Flowing water.")], system_prompt="Be brief.",
               params={"temperature": 0.7})
    db.engine.dispose()

    reopened = Database(path)
    assert reopened.migrate() == []  # nothing pending the second time
    again = ChatStore(reopened)
    listed = again.list()
    assert [(c.title, c.message_count) for c in listed] == [("Rivers", 2)]
    loaded = again.get(listed[0].id)
    assert [(m.role, m.content) for m in loaded.messages] == [
        ("user", "What is a river?"), ("assistant", "Flowing water.")]
    assert loaded.system_prompt == "Be brief." and loaded.params == {"temperature": 0.7}
    reopened.engine.dispose()


def test_rename_delete_and_replace(db):
    store = ChatStore(db)
    first, second = store.create("one"), store.create("two")
    store.save(first.id, [MessageView("user", "a"), MessageView("assistant", "b")])
    store.save(first.id, [MessageView("user", "a"), MessageView("assistant", "c")])  # regenerate
    assert [m.content for m in store.get(first.id).messages] == ["a", "c"]
    assert store.rename(second.id, "  renamed   chat ").title == "renamed chat"
    assert store.list()[0].id == first.id  # most recently updated first
    store.delete(first.id)
    assert [c.title for c in store.list()] == ["renamed chat"]
    with db.session() as session:
        assert session.query(Message).count() == 0  # messages went with their conversation
    with pytest.raises(LookupError):
        store.get(first.id)
    with pytest.raises(ValueError, match="empty"):
        store.rename(second.id, "   ")


def test_a_failed_save_keeps_the_old_messages(db):
    store = ChatStore(db)
    conv = store.create("keep")
    store.save(conv.id, [MessageView("user", "kept")])
    with pytest.raises(ValueError, match="role"):
        store.save(conv.id, [MessageView("user", "new"), MessageView("robot", "x")])
    assert [m.content for m in store.get(conv.id).messages] == ["kept"]


def test_orm_mirrors_the_migration(db):
    raw = db.engine.raw_connection()
    try:
        for table in (Conversation.__table__, Message.__table__):
            columns = {row[1] for row in raw.execute(f"PRAGMA table_info({table.name})")}
            assert columns == {c.name for c in table.columns}, table.name
    finally:
        raw.close()
    assert "chat_messages" in Base.metadata.tables


def test_title_from_first_message():
    assert title_from("  hello\n world ") == "hello world"
    assert title_from("x" * 100).endswith("…") and len(title_from("x" * 100)) == 61
