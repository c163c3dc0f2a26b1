"""One database wrapper for the whole studio, on SQLite (the default: a file in the data dir) or
PostgreSQL (`postgresql+psycopg://...`, when several machines share one queue and gallery).

* SQLite: WAL, foreign keys, busy timeout; a consistent backup before a migration.
* PostgreSQL: a connection pool checked before use; migrations serialised between processes by an
  advisory lock; NOTIFY/LISTEN so that idle workers wake when jobs are queued elsewhere.

Migrations are numbered SQL files `NNNN_name.sql` in ./migrations, applied in order once each.
A dialect that needs other DDL has its own file with the same number, `NNNN_name.postgresql.sql`;
the plain file serves every dialect that has none. The ORM models in the feature packages mirror
them (a test checks that they agree, on both databases).
"""
from __future__ import annotations

import fcntl
import os
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.pool import StaticPool

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
DIALECTS = ("sqlite", "postgresql")
MIGRATION_LOCK = 7_460_001  # pg_advisory_xact_lock key: one migrating process at a time


class Base(DeclarativeBase):
    """Declarative base for every table of the studio (gallery, chat, queue)."""


def _set_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")  # the queue worker and the UI write concurrently
    cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
    cursor.execute("PRAGMA synchronous=NORMAL")  # safe with WAL; FULL costs a fsync per commit
    cursor.close()


def _bools_as_integers(dbapi_connection, _record) -> None:
    """Flags are 0/1 INTEGER columns, as on SQLite (the ORM and the SQL compare them with 1);
    psycopg would send a Python bool as a PostgreSQL boolean, which an integer column refuses."""
    from psycopg.types.numeric import IntDumper

    class BoolAsInt(IntDumper):
        def dump(self, obj):
            return b"1" if obj else b"0"

    dbapi_connection.adapters.register_dumper(bool, BoolAsInt)


def list_migrations(dialect: str = "sqlite") -> list[tuple[int, Path]]:
    """(version, file) for `dialect`, in order: its own file where there is one, else the plain."""
    if dialect not in DIALECTS:
        raise ValueError(f"no migrations for the {dialect!r} dialect; one of {', '.join(DIALECTS)}")
    plain: dict[int, Path] = {}
    own: dict[int, Path] = {}
    for path in sorted(MIGRATIONS_DIR.glob("[0-9][0-9][0-9][0-9]_*.sql")):
        parts = path.name.split(".")
        target = own if len(parts) == 3 and parts[1] == dialect else plain if len(parts) == 2 else None
        if target is None:
            continue  # another dialect's file
        version = int(path.name[:4])
        if version in target:
            raise RuntimeError(f"two migrations share the number {version} in {MIGRATIONS_DIR}: "
                               f"{target[version].name}, {path.name}")
        target[version] = path
    orphans = sorted(set(own) - set(plain))
    if orphans:
        raise RuntimeError(f"migration {orphans[0]} exists only for {dialect}; every number needs "
                           f"a plain NNNN_name.sql file")
    return [(v, own.get(v, p)) for v, p in sorted(plain.items())]


def database_url(target: Path | str | URL | None) -> URL:
    """A SQLAlchemy URL from what --database or a test gives: None (in-memory SQLite), a file
    path (SQLite) or a URL. `postgresql://` means psycopg 3 (the driver the `scale` extra
    installs), not SQLAlchemy's default psycopg2."""
    if target in (None, ":memory:"):
        return make_url("sqlite://")
    if isinstance(target, Path) or (not isinstance(target, URL) and "://" not in str(target)):
        return URL.create("sqlite", database=str(Path(target)))
    url = target if isinstance(target, URL) else make_url(
        str(target).replace("postgres://", "postgresql://", 1))
    if url.get_backend_name() not in DIALECTS:
        raise ValueError(f"--database: the studio runs on SQLite or PostgreSQL, got a "
                         f"{url.get_backend_name()!r} URL ({url.render_as_string(hide_password=True)})")
    if url.get_backend_name() == "postgresql" and url.get_driver_name() != "psycopg":
        url = url.set(drivername="postgresql+psycopg")
    return url


class Database:
    """`Database(None)`: a private in-memory SQLite database (tests); `Database(path)`: a SQLite
    file; `Database("postgresql+psycopg://user@host/db")`: a PostgreSQL database."""

    def __init__(self, target: Path | str | URL | None = None) -> None:
        self.url = database_url(target)
        self.dialect = self.url.get_backend_name()
        self.path = Path(self.url.database) if self.dialect == "sqlite" and self.url.database else None
        if self.dialect == "postgresql":
            try:
                import psycopg  # noqa: F401
            except ImportError:
                raise ValueError("PostgreSQL needs psycopg 3: pip install -e '.[scale]'") from None
            # pre_ping: a server restart or a dropped idle connection is noticed before use
            self.engine = create_engine(self.url, pool_pre_ping=True, pool_size=5, max_overflow=10)
            event.listen(self.engine, "connect", _bools_as_integers)
        elif self.path is None:
            # One shared connection, or every new connection would see an empty database.
            self.engine = create_engine(
                "sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False})
            event.listen(self.engine, "connect", _set_pragmas)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.engine = create_engine(
                f"sqlite:///{self.path}", connect_args={"check_same_thread": False, "timeout": 10})
            event.listen(self.engine, "connect", _set_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._lock_file = None

    def __repr__(self) -> str:
        return f"Database({self.url.render_as_string(hide_password=True)!r})"

    @property
    def shared(self) -> bool:
        """Whether other processes (other machines) may use this database at the same time."""
        return self.dialect != "sqlite"

    # --- sessions
    def session(self) -> Session:
        return self._sessions()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """Commit on success, roll back on any exception (which is re-raised)."""
        with self._sessions() as session:
            with session.begin():
                yield session

    # --- one studio per SQLite file
    def lock_exclusive(self) -> None:
        """Refuse a second studio on the same SQLite file (two processes would each recover the
        other's running jobs and sweep its files). PostgreSQL is made to be shared."""
        if self.path is None:
            return
        lock_path = self.path.with_name(self.path.name + ".lock")
        handle = open(lock_path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            handle.close()
            raise RuntimeError(f"another studio ({owner}) already uses {self.path}; stop it, or "
                               f"give this one another --data-dir (or a shared --database "
                               f"postgresql+psycopg://...)") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        self._lock_file = handle  # held (and the lock with it) as long as this process lives

    def close(self) -> None:
        """Close every connection and let another process take the data dir."""
        self.engine.dispose()
        lock = getattr(self, "_lock_file", None)
        if lock is not None:
            lock.close()  # closing the file releases the flock
            self._lock_file = None

    # --- notifications (PostgreSQL NOTIFY/LISTEN; SQLite has none: listeners poll)
    def notify(self, session_or_conn, channel: str) -> None:
        """Inside a transaction: listeners are told when (and only if) it commits."""
        if self.dialect == "postgresql":
            session_or_conn.execute(text("SELECT pg_notify(:channel, '')"), {"channel": channel})

    def listen(self, channel: str) -> "Listener":
        return Listener(self, channel)

    # --- schema
    def schema_version(self) -> int:
        with self.engine.connect() as conn:
            if not inspect(conn).has_table("schema_version"):
                return 0
            return conn.execute(text("SELECT COALESCE(MAX(version), 0) FROM schema_version")).scalar_one()

    def migrate(self) -> list[int]:
        """Apply pending migrations; back a SQLite file up first if it already holds data."""
        current = self.schema_version()
        pending = [(v, p) for v, p in list_migrations(self.dialect) if v > current]
        if not pending:
            return []
        if self.dialect == "postgresql":
            return self._migrate_postgresql(pending)
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

    def _migrate_postgresql(self, pending: list[tuple[int, Path]]) -> list[int]:
        """Each file in its own transaction, under an advisory lock: several studios starting at
        once on one server apply each migration exactly once (the others find it done)."""
        applied = []
        for version, path in pending:
            with self.engine.begin() as conn:
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
                conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER "
                                     "PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)")
                done = conn.execute(text("SELECT 1 FROM schema_version WHERE version = :v"),
                                    {"v": version}).first()
                if done:
                    continue
                try:
                    conn.exec_driver_sql(path.read_text())
                except Exception as error:
                    raise RuntimeError(f"migration {path.name} failed: {error}") from error
                conn.execute(text("INSERT INTO schema_version VALUES (:v, :t)"),
                             {"v": version, "t": time.time()})
                applied.append(version)
        return applied

    def backup(self, destination: Path) -> Path:
        """A consistent copy through SQLite's online backup API (safe while others write).
        PostgreSQL is backed up by its operator (pg_dump), not by the studio."""
        if self.dialect != "sqlite":
            raise ValueError(f"backup() copies SQLite files; back {self!r} up with pg_dump")
        raw = self.engine.raw_connection()
        try:
            target = sqlite3.connect(destination)
            with target:
                raw.driver_connection.backup(target)
            target.close()
        finally:
            raw.close()
        return destination


class Listener:
    """`wait(timeout)` returns True as soon as someone NOTIFYs the channel (PostgreSQL), or after
    `timeout` seconds with False — on SQLite always the latter: the caller polls."""

    def __init__(self, db: Database, channel: str) -> None:
        self.db, self.channel = db, channel
        self._conn = None

    def _connect(self):
        import psycopg

        url = self.db.url
        self._conn = psycopg.connect(
            host=url.host, port=url.port, user=url.username, password=url.password,
            dbname=url.database, autocommit=True, **dict(url.query))
        self._conn.execute(f'LISTEN "{self.channel}"')

    def wait(self, timeout: float) -> bool:
        if self.db.dialect != "postgresql":
            time.sleep(timeout)
            return False
        try:
            if self._conn is None or self._conn.closed:
                self._connect()
            for _ in self._conn.notifies(timeout=timeout, stop_after=1):
                return True
            return False
        except Exception:  # the server went away: poll until it is back
            self.close()
            time.sleep(timeout)
            return False

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                pass
            self._conn = None
