"""The gallery: SQLite rows (db.py, models.py), files on disk (store.py), metadata inside the PNG
(pnginfo.py) — InvokeAI's three-way split."""
