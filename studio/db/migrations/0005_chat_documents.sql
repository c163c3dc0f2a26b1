-- Documents attached to a chat conversation and their passages with embedding vectors
-- (studio/chat/models.py mirrors this). Vectors are float32 unit vectors, little-endian bytes.
CREATE TABLE chat_documents (
    id {ID},
    conversation_id INTEGER NOT NULL REFERENCES chat_conversations(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    text TEXT NOT NULL,
    size_bytes INTEGER NOT NULL DEFAULT 0,
    embedding_model TEXT NOT NULL DEFAULT '',
    created_at {TIMESTAMP} NOT NULL
);

CREATE TABLE chat_passages (
    id {ID},
    document_id INTEGER NOT NULL REFERENCES chat_documents(id) ON DELETE CASCADE,
    number INTEGER NOT NULL,
    first_line INTEGER NOT NULL,
    last_line INTEGER NOT NULL,
    text TEXT NOT NULL,
    vector {BLOB} NOT NULL,
    UNIQUE (document_id, number)
);

CREATE INDEX ix_chat_documents_conversation ON chat_documents(conversation_id);
