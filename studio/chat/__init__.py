"""Chat conversations: rows in SQLite (models.py), read and written through ChatStore (store.py)."""
