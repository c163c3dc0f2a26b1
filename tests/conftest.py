"""Shared fixtures: temp data dir, in-memory database, a StudioContext, a running studio on the
app's own wiring (`studio`, tests/wiring.py), the real studio as a subprocess, and Playwright
pages in Debian's Chromium."""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before anything imports torch
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pg_server import pg_server, pg_url  # noqa: F401 -- a throwaway PostgreSQL for the tests
from wiring import studio, tiny_engine  # noqa: F401 -- the app's own wiring plus a worker (tests/wiring.py)

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("GENSTUDIO_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-quic", "--disable-dev-shm-usage"]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture
def db():
    from studio.db.database import Database

    database = Database(None)
    database.migrate()
    yield database
    database.engine.dispose()


@pytest.fixture
def gallery(db, data_dir):
    from studio.gallery.store import GalleryStore

    return GalleryStore(db, data_dir)


@pytest.fixture
def ctx(db, gallery, data_dir):
    """A StudioContext on CPU with every engine registered (none loaded) and no queue."""
    from engines.base import EngineManager
    from studio.app import ENGINES
    from studio.config import StudioConfig
    from studio.context import StudioContext

    engines = EngineManager("cpu", memory_budget_bytes=8 << 30)
    for spec in ENGINES:
        engines.register(spec)
    config = StudioConfig(data_dir=data_dir, device="cpu", offline=True, queue_worker=False,
                          allow_code_execution=True)  # as with --allow-code-execution: run & fix tests
    yield StudioContext(config=config, db=db, gallery=gallery, engines=engines)
    engines.unload()


# ------------------------------------------------------------------ the real studio
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class StudioProcess:
    """The studio launched with launch.py on a free port; restart() keeps the data dir."""
    data_dir: Path
    args: tuple[str, ...] = ()
    port: int = 0
    process: subprocess.Popen | None = None
    log_path: Path | None = None
    startup_seconds: float = 0.0
    extra_env: dict = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90.0) -> "StudioProcess":
        self.port = free_port()
        self.log_path = self.data_dir.parent / f"studio-{self.port}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.extra_env}
        started = time.perf_counter()
        self.process = subprocess.Popen(
            [sys.executable, str(REPO / "launch.py"), "--port", str(self.port),
             "--data-dir", str(self.data_dir), "--offline", *self.args],
            cwd=REPO, env=env, stdout=self.log_path.open("w"), stderr=subprocess.STDOUT)
        while time.perf_counter() - started < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"studio exited early:\n{self.log_path.read_text()}")
            if "GenStudio running at" not in self.log():  # printed once the APIs are mounted
                time.sleep(0.2)
                continue
            try:
                with urllib.request.urlopen(self.url + "/", timeout=2) as response:
                    if response.status == 200:
                        self.startup_seconds = time.perf_counter() - started
                        return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"studio did not answer within {timeout} s:\n{self.log_path.read_text()}")

    def stop(self, kill: bool = False) -> None:
        if self.process and self.process.poll() is None:
            if kill:
                self.process.kill()
            else:
                self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def restart(self) -> "StudioProcess":
        self.stop()
        return self.start()

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path and self.log_path.exists() else ""


@pytest.fixture
def launch_studio(tmp_path):
    """Factory: `server = launch_studio(data_dir=..., args=("--auth", "a:b"))`; stopped after."""
    started: list[StudioProcess] = []

    def launch(data_dir: Path | None = None, args: tuple[str, ...] = (), env: dict | None = None):
        directory = data_dir or (tmp_path / "studio-data")
        directory.mkdir(parents=True, exist_ok=True)
        server = StudioProcess(data_dir=directory, args=tuple(args), extra_env=env or {})
        started.append(server)
        return server.start()

    yield launch
    for server in started:
        server.stop()


@pytest.fixture
def studio_server(launch_studio):
    return launch_studio()


# ------------------------------------------------------------------ browser
@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}: run ./test.sh, which installs it")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, studio_server):
    """A fresh page at the studio (1400×1000), already loaded."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(studio_server.url)
    page.get_by_role("tab").first.wait_for()
    yield page
    context.close()

