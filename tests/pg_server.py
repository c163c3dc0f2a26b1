"""A throwaway PostgreSQL server for the tests, started by the suite itself from Debian's
`postgresql` binaries (scripts/setup.sh installs them in test mode): initdb into a temp dir,
pg_ctl start on a free port with the socket in that dir, stop and delete at the end.

initdb refuses to run as root, so under root the server runs as the `postgres` user (the
package creates it). Fixtures (imported by conftest.py):

    pg_server   session: the running server (`.url(dbname)`, `.create_database()`)
    pg_url      function: a fresh empty database's SQLAlchemy URL
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

USER = "studio"


def find_bin(name: str) -> str:
    """Debian keeps the server binaries out of PATH, in /usr/lib/postgresql/<version>/bin."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    path = found[-1] if found else shutil.which(name)
    if not path:
        raise RuntimeError(f"PostgreSQL's {name} not found: run scripts/setup.sh test "
                           f"(installs Debian's postgresql package)")
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PostgresServer:
    """`durable=False` (tests): no fsync, faster; `durable=True` (benchmarks): the defaults."""

    def __init__(self, durable: bool = False) -> None:
        self.durable = durable
        self.dir = Path(tempfile.mkdtemp(prefix="genstudio-pg-"))
        self.port = _free_port()
        self._as: list[str] = []
        if os.geteuid() == 0:  # initdb and postgres will not run as root
            self._as = ["runuser", "-u", "postgres", "--"]
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)

    def _run(self, *args: str) -> None:
        result = subprocess.run([*self._as, *args], capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed:\n{result.stdout}\n{result.stderr}")

    def start(self) -> "PostgresServer":
        data = self.dir / "data"
        # C.UTF-8: lower() and the text search fold non-ASCII letters, as SQLite's FTS5 does.
        self._run(find_bin("initdb"), "-D", str(data), "-U", USER, "-A", "trust", "-E", "UTF8",
                  "--locale=C.UTF-8")
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c max_connections=200"
        if not self.durable:  # a throwaway server: nothing to keep across a power cut
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run(find_bin("pg_ctl"), "-D", str(data), "-o", options, "-l", str(self.dir / "log"),
                  "-w", "start")
        return self

    def stop(self) -> None:
        try:
            self._run(find_bin("pg_ctl"), "-D", str(self.dir / "data"), "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql+psycopg://{USER}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self) -> str:
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(host="127.0.0.1", port=self.port, user=USER, dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@pytest.fixture(scope="session")
def pg_server():
    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture
def pg_url(pg_server) -> str:
    return pg_server.create_database()
