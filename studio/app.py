"""The one wiring place: config -> database -> gallery -> engines -> queue -> UI + HTTP APIs.

Nothing here loads a model: engines are registered by import path and load on first use, so the
page is served within seconds of start.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import signal
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from engines.base import EngineManager, EngineSpec
from studio.config import StudioConfig
from studio.context import StudioContext
from studio.db.database import Database
from studio.gallery.sweep import sweep_shared
from studio.gallery.store import GalleryStore
from studio.jobs.queue import JobQueue
from studio.jobs.runner import Runner
from studio.uploads import sweep_uploads

log = logging.getLogger("genstudio")

ENGINES = (
    EngineSpec("llm", "engines.llm.engine:LLMEngine", "smollm2-135m-instruct"),
    EngineSpec("embed", "engines.llm.embeddings:EmbeddingEngine", "all-minilm-l6-v2"),
    EngineSpec("diffusion", "engines.diffusion.engine:DiffusionEngine", "genstudio-tiny-sd"),
    EngineSpec("style", "engines.style.engine:StyleEngine", "vintage"),
    EngineSpec("upscale", "engines.upscale.engine:UpscaleEngine", "R-ESRGAN AnimeVideo"),
)

# Tab order is the order users see. Each module: TAB_ID, TITLE, build(ctx), optional wire(...).
TAB_MODULES = (
    "studio.ui.chat",
    "studio.ui.code",
    "studio.ui.txt2img",
    "studio.ui.inpaint",
    "studio.ui.style",
    "studio.ui.upscale",
    "studio.ui.queue",
    "studio.ui.gallery",
    "studio.ui.models",
)

API_MODULES = (
    "studio.api.gallery",
    "studio.api.openai",
    "studio.api.queue",
    "studio.api.a1111_extras",
    "studio.api.a1111_lora",
    "studio.api.a1111_controlnet",
    "studio.api.a1111",
)

CSS = """
.gs-muted { opacity: 0.75; font-size: 0.9em; }
footer { display: none !important; }
"""


def build_context(config: StudioConfig) -> StudioContext:
    # 1. Storage: migrate (after a backup) and repair what an earlier crash left behind.
    config.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        db = Database(config.database or config.database_path)
        db.lock_exclusive()  # one studio per SQLite file; PostgreSQL is shared (docs/scale-out.md)
        applied = db.migrate()
    except (ValueError, RuntimeError, OSError, SQLAlchemyError) as error:  # one line, no traceback
        raise SystemExit(f"GenStudio: {str(error).splitlines()[0]}") from None
    if applied:
        log.info("database migrated to version %s", applied[-1])
    gallery = GalleryStore(db, config.storage)
    # Shared database and storage: other processes write files now; only long-dead leftovers go.
    repaired = gallery.sweep() if not db.shared else sweep_shared(gallery)
    if any(repaired.values()):
        log.warning("start-up sweep repaired %s", repaired)
    # 2. Engines: registered, not loaded.
    engines = EngineManager(config.device, int(config.memory_budget_gb * (1 << 30)))
    for spec in ENGINES:
        engines.register(spec)
    ctx = StudioContext(config=config, db=db, gallery=gallery, engines=engines)
    sweep_uploads(ctx)  # stored masks that no job needs any more (studio/uploads.py)
    # 3. The persistent queue and the one runner every generation goes through.
    ctx.queue = JobQueue(ctx)
    ctx.runner = Runner(ctx.queue)
    return ctx


def build_ui(ctx: StudioContext):
    import gradio as gr

    handles: dict[str, dict[str, Any]] = {}
    modules = [importlib.import_module(name) for name in TAB_MODULES]
    with gr.Blocks(title="GenStudio") as demo:
        gr.Markdown("## GenStudio", elem_id="gs-title")
        with gr.Tabs() as tabs:
            for module in modules:
                with gr.Tab(module.TITLE, id=module.TAB_ID) as tab:
                    handles[module.TAB_ID] = module.build(ctx) or {}
                handles[module.TAB_ID]["_tab"] = tab
        # "Send to" buttons reach across tabs, so they are connected once all tabs exist.
        for module in modules:
            if hasattr(module, "wire"):
                module.wire(ctx, tabs, handles)
            if hasattr(module, "on_load"):  # refresh on page load (e.g. the gallery grid)
                module.on_load(ctx, demo, handles[module.TAB_ID])
        importlib.import_module("studio.ui.api").register(ctx)  # the named "Use via API" endpoints
    return demo


def mount_apis(app, ctx: StudioContext) -> list[str]:
    mounted = []
    for name in API_MODULES:
        if _module_exists(name):
            app.include_router(importlib.import_module(name).router(ctx))
            mounted.append(name)
    # Gradio registered its routes first; ours go in front so no catch-all can shadow them.
    ours = [r for r in app.router.routes
            if getattr(r, "path", "").startswith(("/v1", "/sdapi", "/api/", "/controlnet/"))]
    others = [r for r in app.router.routes if r not in ours]
    app.router.routes[:] = ours + others
    return mounted


def serve(config: StudioConfig, block: bool = True):
    """Start the studio; returns (demo, ctx, local_url, share_url)."""
    import gradio as gr

    from studio.ui import widgets

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    ctx = build_context(config)
    demo = build_ui(ctx)
    demo.queue(default_concurrency_limit=4)  # engines serialise on the device lock themselves
    from studio.security import Guard, gradio_paths

    guard = Guard.from_config(config)  # Host, Origin, JSON, body size, login on /docs, readiness
    allowed, blocked = gradio_paths(config)
    launch_kwargs = dict(
        server_name=config.host, server_port=config.port,
        auth=list(config.auth) or None, auth_message="GenStudio: sign in",
        prevent_thread_lock=True, show_error=False, quiet=True,
        allowed_paths=allowed, blocked_paths=blocked,  # outputs and thumbnails, never the database
        app_kwargs={"docs_url": "/docs", "redoc_url": None, "openapi_url": "/openapi.json",
                    "middleware": [guard.middleware()]},
        theme=gr.themes.Soft(), css=CSS + widgets.CSS, head=widgets.HEAD,
    )
    share_url = None
    try:
        app, local_url, share_url = demo.launch(share=config.share, **launch_kwargs)
    except Exception as error:  # no network for the tunnel: keep serving locally and say why
        if not config.share:
            raise
        print(f"Share link could not be created ({error}); the studio runs locally only.")
        demo.close()
        app, local_url, share_url = demo.launch(share=False, **launch_kwargs)
    if config.share and not share_url:
        print("Share link could not be created (no network to the share server); "
              "the studio runs locally only.")
    mount_apis(app, ctx)
    guard.allow_origin(share_url)
    guard.ready = True  # until now /api, /v1 and /sdapi answered 503 with Retry-After
    if ctx.queue is not None and config.queue_worker:
        from studio.jobs.ray_worker import start_queue_worker

        start_queue_worker(ctx)  # in this process, or on Ray actors with --ray (issue 14)
    print(f"GenStudio running at {local_url}" + (f"  (public: {share_url})" if share_url else ""), flush=True)
    if config.open_browser:
        from studio.browser import open_studio

        open_studio(local_url)
    if block:
        # SIGTERM (service managers, `kill`) closes like Ctrl-C, so a running job is put back
        # cleanly by queue.stop() instead of being recovered as a crash at the next start.
        signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        try:
            demo.block_thread()
        finally:
            if ctx.queue is not None:
                ctx.queue.stop()
    return demo, ctx, local_url, share_url


def _raise_keyboard_interrupt(*_):
    raise KeyboardInterrupt


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False
