-- Semantic gallery search (studio/gallery/semantic.py; ORM: ItemVector in studio/gallery/models.py):
-- one embedding per item's prompt and text output, a float32 unit vector in little-endian bytes,
-- deleted with its item.
CREATE TABLE item_vectors (
    item_id INTEGER PRIMARY KEY REFERENCES items(id) ON DELETE CASCADE,
    model TEXT NOT NULL,
    vector {BLOB} NOT NULL
);
