"""A studio context built by the app's own wiring (queue, runner and worker running) with the
OpenAI router and the queue API served by uvicorn on a free port, for the OpenAI API tests."""
from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def openai_server(data_dir: Path, auth: tuple = ()):
    """Yields (base url of /v1, ctx)."""
    import dataclasses

    import uvicorn
    from fastapi import FastAPI

    from studio.api.openai import router
    from studio.api.queue import router as queue_router
    from studio.app import build_context
    from studio.config import StudioConfig

    ctx = build_context(StudioConfig(data_dir=data_dir, device="cpu", offline=True))
    if auth:
        ctx.config = dataclasses.replace(ctx.config, auth=auth)
    ctx.queue.start_worker()
    app = FastAPI()
    app.include_router(router(ctx))
    app.include_router(queue_router(ctx))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/v1", ctx
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        ctx.queue.stop(10)
        ctx.engines.unload()
