"""The studio as tests run it: the app's own wiring (`studio.app.build_context`: migrations, the
start-up sweeps, every engine registered, the queue and the one runner) plus its in-process
worker, and FastAPI clients over the app's own routers. Fixtures (imported by conftest.py):

    studio      function: a running studio context on a tmp data dir (CPU, offline)
    tiny_engine module: the diffusion engine on the embedded model (random tiny SD until it
                exists), loaded once for the test module

    with running_studio(data_dir, allow_code_execution=True) as ctx: ...   # other options
    with api_client(studio, a1111, queue) as client: ...   # client.ctx is the studio
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest


@contextmanager
def running_studio(data_dir: Path, worker: bool = True, **options) -> Iterator:
    """build_context on CPU, offline, with the queue's worker started; stopped, unloaded and the
    data dir released at the end (so a test can start the studio again on it)."""
    from studio.app import build_context
    from studio.config import StudioConfig

    ctx = build_context(StudioConfig(data_dir=Path(data_dir), device="cpu", offline=True, **options))
    if worker:
        ctx.queue.start_worker()
    try:
        yield ctx
    finally:
        ctx.queue.stop(10)
        ctx.engines.unload()
        ctx.db.close()


@contextmanager
def api_client(ctx, *modules):
    """A TestClient over the routers of `modules` (studio.api.<name>, each with `router(ctx)`)."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    app = FastAPI()
    for module in modules:
        app.include_router(module.router(ctx))
    with TestClient(app) as client:
        client.ctx = ctx
        yield client


@pytest.fixture
def studio(tmp_path):
    with running_studio(tmp_path / "data") as ctx:
        yield ctx


@pytest.fixture(scope="module")
def tiny_engine(tmp_path_factory):
    from engines.diffusion.engine import DiffusionEngine
    from engines.diffusion.random_weights import embedded_or_random

    engine = DiffusionEngine(embedded_or_random(tmp_path_factory.mktemp("model")), device="cpu")
    engine.load()
    yield engine
    engine.unload()
