"""ChatService: what the Chat tab asks of storage — list, open, rename, delete conversations and
record a finished turn. The tab holds messages as plain dicts ({"role", "content", "item_id"});
this service turns them into rows and back, so no storage logic lives in the tab.

A turn is recorded once its reply has ended (completed or stopped): the whole conversation is
saved in one transaction (ChatStore.save), so a user message is never stored without the reply
that answered it.
"""
from __future__ import annotations

from typing import Any, Callable

from studio.chat import transfer
from studio.chat.documents import DocumentStore, DocumentView
from studio.chat.store import MAX_TITLE, ChatStore, ConversationView, MessageView, title_from
from studio.db.database import Database

ROLES = ("system", "user", "assistant")


def as_dicts(conversation: ConversationView) -> list[dict[str, Any]]:
    """The conversation's messages as the tab holds them."""
    return [{"role": m.role, "content": m.content, "item_id": m.item_id}
            for m in conversation.messages]


def for_display(messages: list[dict]) -> list[dict[str, str]]:
    """What gr.Chatbot shows (it rejects unknown keys such as item_id)."""
    return [{"role": m["role"], "content": m["content"]} for m in messages]


class ChatService:
    def __init__(self, db: Database) -> None:
        self.store = ChatStore(db)
        self.docs = DocumentStore(db)

    def choices(self) -> list[tuple[str, int]]:
        """(label, id) of every conversation, most recently updated first."""
        return [(f"{c.title}  ·  {c.message_count} msg", c.id) for c in self.store.list()]

    def search(self, text: str) -> list[tuple[str, int]]:
        """(label, id) of the conversations whose title or messages contain `text`; all of them
        when `text` is blank."""
        text = (text or "").strip()
        if not text:
            return self.choices()
        return [(f"{c.title}  ·  {c.message_count} msg", c.id) for c in self.store.search(text)]

    def documents_for_export(self, conversation_id: int) -> list[dict[str, str]]:
        """[{"name", "text"}] of the attached documents."""
        return self.docs.texts(int(conversation_id))

    def documents(self, conversation_id: int | None) -> list[DocumentView]:
        return [] if conversation_id is None else self.docs.list(int(conversation_id))

    def remove_document(self, document_id: int) -> None:
        self.docs.remove(int(document_id))

    def export_json(self, conversation_id: int) -> str:
        """The conversation as lossless JSON that import_json reads back."""
        conv = self.open(conversation_id)
        return transfer.to_json(conv, self.documents_for_export(conv.id))

    def export_markdown(self, conversation_id: int) -> str:
        conv = self.open(conversation_id)
        return transfer.to_markdown(conv, self.documents_for_export(conv.id))

    def import_json(self, data: bytes | str,
                    attach: Callable[[int, str, str], Any] | None = None) -> ConversationView:
        """A new conversation from an exported one (ValueError naming what is wrong, before
        anything is stored). Its documents are indexed again through `attach(conversation id,
        name, text)` (the tab submits an embed_document job); without it they are left out."""
        parsed = transfer.parse_json(data)
        title = " ".join(parsed.title.split())[:MAX_TITLE]
        conv = self.store.create(title, parsed.model, parsed.system_prompt, parsed.params)
        saved = self.store.save(conv.id, [MessageView(m["role"], m["content"])
                                          for m in parsed.messages])
        for doc in parsed.documents if attach is not None else ():
            attach(saved.id, doc["name"], doc["text"])
        return saved

    def open(self, conversation_id: int) -> ConversationView:
        """Raises LookupError when it no longer exists."""
        return self.store.get(int(conversation_id))

    def rename(self, conversation_id: int, title: str) -> ConversationView:
        return self.store.rename(int(conversation_id), title)

    def delete(self, conversation_id: int) -> None:
        try:
            self.store.delete(int(conversation_id))
        except LookupError:
            pass  # already gone: the tab shows the same empty state either way

    def record_turn(self, conversation_id: int | None, messages: list[dict], *,
                    reply_item_id: int | None, model: str, system_prompt: str,
                    params: dict[str, Any]) -> ConversationView:
        """Save `messages` (ending with the reply) as the conversation, creating it on its first
        turn (titled after its first user message). The last message, when it is the reply,
        links to its gallery item; earlier messages keep theirs."""
        if conversation_id is None:
            first_user = next((m["content"] for m in messages if m["role"] == "user"), "New chat")
            conversation_id = self.store.create(title_from(first_user), model).id
        last = len(messages) - 1
        views = [MessageView(m["role"], m["content"],
                             reply_item_id if i == last and m["role"] == "assistant"
                             else m.get("item_id"))
                 for i, m in enumerate(messages)]
        return self.store.save(int(conversation_id), views, model=model,
                               system_prompt=system_prompt, params=params)
