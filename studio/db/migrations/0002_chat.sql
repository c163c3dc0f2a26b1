-- Chat conversations and their messages (studio/chat/models.py mirrors this). A reply also lands
-- in the gallery as a text item; item_id links the message to it.
CREATE TABLE chat_conversations (
    id {ID},
    title TEXT NOT NULL,
    model TEXT NOT NULL DEFAULT '',
    system_prompt TEXT NOT NULL DEFAULT '',
    params_json TEXT NOT NULL DEFAULT '{}',
    created_at {TIMESTAMP} NOT NULL,
    updated_at {TIMESTAMP} NOT NULL
);
CREATE INDEX ix_chat_conversations_updated ON chat_conversations(updated_at);

CREATE TABLE chat_messages (
    id {ID},
    conversation_id INTEGER NOT NULL REFERENCES chat_conversations(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
    content TEXT NOT NULL,
    item_id INTEGER REFERENCES items(id) ON DELETE SET NULL,
    created_at {TIMESTAMP} NOT NULL,
    UNIQUE (conversation_id, position)
);
