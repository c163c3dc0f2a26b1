-- Gallery items: every output of the studio, text or image. Files live on disk under the data
-- dir; the row holds the relative paths. created_at is UTC (SQLite: ISO text; PostgreSQL: a naive
-- TIMESTAMP). Flags are 0/1 INTEGERs so that queries read the same on both databases.
-- {ID}, {TIMESTAMP}... are the type names that differ (studio/db/database.py DIALECT_TYPES).
CREATE TABLE items (
    id {ID},
    uid TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL CHECK (kind IN ('image', 'text')),
    task TEXT NOT NULL,
    engine TEXT NOT NULL,
    model TEXT NOT NULL DEFAULT '',
    prompt TEXT NOT NULL DEFAULT '',
    negative_prompt TEXT NOT NULL DEFAULT '',
    text TEXT,
    params_json TEXT NOT NULL DEFAULT '{}',
    seed {BIGINT},
    width INTEGER,
    height INTEGER,
    duration_s {FLOAT},
    parent_id INTEGER REFERENCES items(id) ON DELETE SET NULL,
    favourite INTEGER NOT NULL DEFAULT 0,
    file_path TEXT,
    thumb_path TEXT,
    created_at {TIMESTAMP} NOT NULL
);
CREATE INDEX ix_items_kind ON items(kind, id);
CREATE INDEX ix_items_task ON items(task, id);
CREATE INDEX ix_items_engine ON items(engine, id);
CREATE INDEX ix_items_model ON items(model, id);
CREATE INDEX ix_items_favourite ON items(favourite, id);
CREATE INDEX ix_items_created ON items(created_at);
CREATE INDEX ix_items_parent ON items(parent_id);

CREATE TABLE tags (
    id {ID},
    name TEXT NOT NULL UNIQUE
);
CREATE TABLE item_tags (
    item_id INTEGER NOT NULL REFERENCES items(id) ON DELETE CASCADE,
    tag_id INTEGER NOT NULL REFERENCES tags(id) ON DELETE CASCADE,
    PRIMARY KEY (item_id, tag_id)
);
CREATE INDEX ix_item_tags_tag ON item_tags(tag_id, item_id);

-- Full-text search over what people type and what text models wrote, found alike on both
-- databases (studio/gallery/search.py). SQLite: an FTS5 table with external content (the text
-- is stored once, in items; triggers keep the index in step).
-- if sqlite
CREATE VIRTUAL TABLE items_fts USING fts5(
    prompt, negative_prompt, text, content='items', content_rowid='id',
    tokenize='unicode61 remove_diacritics 2'
);
CREATE TRIGGER items_fts_insert AFTER INSERT ON items BEGIN
    INSERT INTO items_fts(rowid, prompt, negative_prompt, text)
    VALUES (new.id, new.prompt, new.negative_prompt, new.text);
END;
CREATE TRIGGER items_fts_delete AFTER DELETE ON items BEGIN
    INSERT INTO items_fts(items_fts, rowid, prompt, negative_prompt, text)
    VALUES ('delete', old.id, old.prompt, old.negative_prompt, old.text);
END;
CREATE TRIGGER items_fts_update AFTER UPDATE OF prompt, negative_prompt, text ON items BEGIN
    INSERT INTO items_fts(items_fts, rowid, prompt, negative_prompt, text)
    VALUES ('delete', old.id, old.prompt, old.negative_prompt, old.text);
    INSERT INTO items_fts(rowid, prompt, negative_prompt, text)
    VALUES (new.id, new.prompt, new.negative_prompt, new.text);
END;
-- end if

-- PostgreSQL: one IMMUTABLE function turns the three texts into the words FTS5's unicode61
-- tokenizer would see — lower case, common Latin accents removed, every run of non-letters/digits
-- a separator — so both databases find the same items; a GIN index over its tsvector makes the
-- search an index lookup. studio/gallery/search.py queries exactly this expression.
-- if postgresql
CREATE FUNCTION studio_search_text(prompt TEXT, negative_prompt TEXT, body TEXT) RETURNS TEXT
LANGUAGE SQL IMMUTABLE PARALLEL SAFE AS $$
    SELECT regexp_replace(
        translate(lower(coalesce(prompt, '') || ' ' || coalesce(negative_prompt, '') || ' ' ||
                        coalesce(body, '')),
                  'àáâãäåçèéêëìíîïñòóôõöùúûüýÿāăąćĉċčďēĕėęěĝğġģĥĩīĭįĵķĺļľńņňōŏőŕŗřśŝşšţťũūŭůűųŵŷźżž',
                  'aaaaaaceeeeiiiinooooouuuuyyaaaccccdeeeeegggghiiiijklllnnnooorrrssssttuuuuuuwyzzz'),
        '[^[:alnum:]]+', ' ', 'g')
$$;
CREATE INDEX ix_items_search ON items USING GIN (
    to_tsvector('simple'::regconfig, studio_search_text(prompt, negative_prompt, text)));
-- end if
