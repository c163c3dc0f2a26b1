"""One SQLite connection wrapper for the whole studio: WAL, foreign keys, busy timeout, a
`transaction()` context manager, and numbered migrations run at start after a backup.

Migrations are plain SQL files `NNNN_name.sql` in ./migrations, applied in order once each; the
ORM models in the feature packages mirror them (a test checks that they agree).
"""
from __future__ import annotations

import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import create_engine, event, text
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.pool import StaticPool

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


class Base(DeclarativeBase):
    """Declarative base for every table of the studio (gallery, chat, queue)."""


def _set_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")  # the queue worker and the UI write concurrently
    cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
    cursor.execute("PRAGMA synchronous=NORMAL")  # safe with WAL; FULL costs a fsync per commit
    cursor.close()


def list_migrations() -> list[tuple[int, Path]]:
    found = []
    for path in sorted(MIGRATIONS_DIR.glob("[0-9][0-9][0-9][0-9]_*.sql")):
        found.append((int(path.name[:4]), path))
    versions = [v for v, _ in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two migrations share a number in {MIGRATIONS_DIR}: {versions}")
    return found


class Database:
    """`Database(None)` is a private in-memory database (tests); `Database(path)` a file."""

    def __init__(self, path: Path | str | None = None) -> None:
        self.path = Path(path) if path not in (None, ":memory:") else None
        if self.path is None:
            # One shared connection, or every new connection would see an empty database.
            self.engine = create_engine(
                "sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False})
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.engine = create_engine(
                f"sqlite:///{self.path}", connect_args={"check_same_thread": False, "timeout": 10})
        event.listen(self.engine, "connect", _set_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    # --- sessions
    def session(self) -> Session:
        return self._sessions()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """Commit on success, roll back on any exception (which is re-raised)."""
        with self._sessions() as session:
            with session.begin():
                yield session

    # --- schema
    def schema_version(self) -> int:
        with self.engine.connect() as conn:
            exists = conn.execute(text(
                "SELECT name FROM sqlite_master WHERE type='table' AND name='schema_version'"
            )).first()
            if not exists:
                return 0
            return conn.execute(text("SELECT COALESCE(MAX(version), 0) FROM schema_version")).scalar_one()

    def migrate(self) -> list[int]:
        """Apply pending migrations; back the file up first if it already holds data."""
        current = self.schema_version()
        pending = [(v, p) for v, p in list_migrations() if v > current]
        if not pending:
            return []
        if self.path is not None and current > 0:
            self.backup(self.path.with_name(f"{self.path.name}.v{current}.{int(time.time())}.bak"))
        raw = self.engine.raw_connection()
        try:
            for version, path in pending:
                # executescript commits implicitly, so wrap each file in its own transaction.
                raw.executescript(
                    "BEGIN;\n" + path.read_text() +
                    f"\nCREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY,"
                    f" applied_at REAL NOT NULL);\nINSERT INTO schema_version VALUES ({version}, {time.time()});"
                    "\nCOMMIT;")
        except sqlite3.Error as error:
            raw.rollback()
            raise RuntimeError(f"migration {path.name} failed: {error}") from error
        finally:
            raw.close()
        return [v for v, _ in pending]

    def backup(self, destination: Path) -> Path:
        """A consistent copy through SQLite's online backup API (safe while others write)."""
        raw = self.engine.raw_connection()
        try:
            target = sqlite3.connect(destination)
            with target:
                raw.driver_connection.backup(target)
            target.close()
        finally:
            raw.close()
        return destination
