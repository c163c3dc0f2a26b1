"""The services one studio process shares: built once in studio.app, handed to every tab, task
and API router. Nothing here loads a model."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engines.base import EngineManager
from studio.config import StudioConfig
from studio.db.database import Database
from studio.gallery.store import GalleryStore


@dataclass
class StudioContext:
    config: StudioConfig
    db: Database
    gallery: GalleryStore
    engines: EngineManager
    queue: Any = None  # studio.jobs.queue.JobQueue once the app has built it
    runner: Any = None  # studio.jobs.runner.Runner: the one way to run a generation
    job_id: int | None = None  # inside a running job: its id, so its gallery writes link to it
