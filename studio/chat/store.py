"""ChatStore: conversations listed, read, renamed, deleted, and saved whole.

A conversation is saved in one transaction once a reply has finished (or was stopped): the user
message is never stored without the reply that answered it, and regenerate / edit simply save
the new list of messages in place of the old one.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Sequence

from sqlalchemy import delete, func, or_, select

from studio.chat.models import Conversation, Message
from studio.db.database import Database

MAX_TITLE = 120


@dataclass(frozen=True)
class MessageView:
    role: str
    content: str
    item_id: int | None = None


@dataclass(frozen=True)
class ConversationView:
    id: int
    title: str
    model: str
    system_prompt: str
    params: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    messages: tuple[MessageView, ...] = ()
    message_count: int = 0


def title_from(text: str) -> str:
    """A first user message, shortened to one line, names a new conversation."""
    line = " ".join(text.split())
    return (line[:60] + "…") if len(line) > 60 else (line or "New chat")


class ChatStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, title: str, model: str = "", system_prompt: str = "",
               params: dict | None = None) -> ConversationView:
        title = _check_title(title)
        now = _now()
        with self.db.transaction() as session:
            row = Conversation(title=title, model=model, system_prompt=system_prompt,
                               params_json=json.dumps(params or {}), created_at=now, updated_at=now)
            session.add(row)
            session.flush()
            return _view(row)

    def list(self) -> list[ConversationView]:
        """Most recently updated first, without messages (with their count)."""
        with self.db.session() as session:
            counts = dict(session.execute(
                select(Message.conversation_id, func.count()).group_by(Message.conversation_id)).all())
            rows = session.scalars(select(Conversation).order_by(Conversation.updated_at.desc(),
                                                                 Conversation.id.desc())).all()
            return [_view(r, with_messages=False, count=counts.get(r.id, 0)) for r in rows]

    def search(self, text: str, limit: int = 200) -> list[ConversationView]:
        """Conversations whose title or any message contains `text` (case-insensitive), most
        recently updated first, without messages."""
        pattern = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        with self.db.session() as session:
            in_messages = select(Message.conversation_id).where(
                Message.content.ilike(pattern, escape="\\"))
            rows = session.scalars(
                select(Conversation).where(or_(Conversation.title.ilike(pattern, escape="\\"),
                                               Conversation.id.in_(in_messages)))
                .order_by(Conversation.updated_at.desc(), Conversation.id.desc()).limit(limit)).all()
            counts = dict(session.execute(
                select(Message.conversation_id, func.count())
                .where(Message.conversation_id.in_([r.id for r in rows]))
                .group_by(Message.conversation_id)).all())
            return [_view(r, with_messages=False, count=counts.get(r.id, 0)) for r in rows]

    def get(self, conversation_id: int) -> ConversationView:
        with self.db.session() as session:
            return _view(self._row(session, conversation_id))

    def rename(self, conversation_id: int, title: str) -> ConversationView:
        title = _check_title(title)
        with self.db.transaction() as session:
            row = self._row(session, conversation_id)
            row.title = title
            return _view(row)

    def delete(self, conversation_id: int) -> None:
        with self.db.transaction() as session:
            session.delete(self._row(session, conversation_id))

    def save(self, conversation_id: int, messages: Sequence[MessageView], *, model: str | None = None,
             system_prompt: str | None = None, params: dict | None = None) -> ConversationView:
        """Replace the conversation's messages (and settings) in one transaction."""
        for message in messages:
            if message.role not in ("system", "user", "assistant"):
                raise ValueError(f"message role must be system, user or assistant, got {message.role!r}")
        with self.db.transaction() as session:
            row = self._row(session, conversation_id)
            session.execute(delete(Message).where(Message.conversation_id == conversation_id))
            session.flush()
            now = _now()
            for position, message in enumerate(messages):
                session.add(Message(conversation_id=conversation_id, position=position,
                                    role=message.role, content=message.content,
                                    item_id=message.item_id, created_at=now))
            if model is not None:
                row.model = model
            if system_prompt is not None:
                row.system_prompt = system_prompt
            if params is not None:
                row.params_json = json.dumps(params, default=str)
            row.updated_at = now
            session.flush()
            session.expire(row, ["messages"])
            return _view(row)

    @staticmethod
    def _row(session, conversation_id: int) -> Conversation:
        row = session.get(Conversation, conversation_id)
        if row is None:
            raise LookupError(f"no conversation with id {conversation_id}")
        return row


def _check_title(title: str) -> str:
    title = " ".join(str(title or "").split())
    if not title:
        raise ValueError("the conversation title is empty")
    if len(title) > MAX_TITLE:
        raise ValueError(f"the title is {len(title)} characters long; the limit is {MAX_TITLE}")
    return title


def _view(row: Conversation, with_messages: bool = True, count: int | None = None) -> ConversationView:
    messages = tuple(MessageView(m.role, m.content, m.item_id) for m in row.messages) if with_messages else ()
    return ConversationView(row.id, row.title, row.model, row.system_prompt,
                            json.loads(row.params_json or "{}"), row.created_at, row.updated_at,
                            messages, count if count is not None else len(messages))


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)
