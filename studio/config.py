"""Settings of one studio process: a frozen dataclass of plain values, filled by launch.py."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
ASSETS_DIR = REPO_ROOT / "assets"


@dataclass(frozen=True)
class StudioConfig:
    data_dir: Path = Path("data")  # database, outputs, thumbnails, user models and styles
    host: str = "127.0.0.1"  # loopback only unless asked: the studio runs code and reads files
    port: int = 7860  # first free port from here on is used
    share: bool = False  # a public gradio.live link; needs auth
    auth: tuple[tuple[str, str], ...] = ()  # (user, password) pairs for the UI and the APIs
    device: str = "auto"  # auto | cpu | cuda | mps
    offline: bool = False  # never try a model hub; set automatically when none is reachable
    memory_budget_gb: float = 8.0  # loaded models above this are unloaded, least recent first
    queue_worker: bool = True  # run the persistent queue's worker in this process
    database: str | None = None  # SQLAlchemy URL (PostgreSQL: many machines); None: SQLite in data_dir
    storage_dir: Path | None = None  # gallery files and thumbnails (shared storage); None: data_dir
    ray_address: str | None = None  # run queued jobs on Ray actors of this cluster (auto, host:port)
    ray_workers: int = 0  # with ray_address: CPU actors when the cluster has no GPUs
    open_browser: bool = False  # open the page in the user's browser once it serves (run.sh)
    extra_models_dirs: tuple[Path, ...] = field(default_factory=tuple)
    allow_code_execution: bool = False  # run & fix runs model-written code: only when asked
    allow_downloads: bool = False  # Models tab imports by hub id / URL (model_download.py)
    allowed_hosts: tuple[str, ...] = ()  # extra Host names to answer (a reverse proxy's name)
    max_request_mb: float = 64.0  # largest request body; an img2img upload is base64 (4/3 larger)

    @property
    def database_path(self) -> Path:
        return self.data_dir / "studio.sqlite3"

    @property
    def storage(self) -> Path:
        """Where the gallery's files live (outputs/, thumbnails/)."""
        return self.storage_dir or self.data_dir

    # The folders, by purpose: gallery files under `storage`, the rest in the data dir.
    outputs_dir = property(lambda self: self.storage / "outputs")
    thumbnails_dir = property(lambda self: self.storage / "thumbnails")
    models_dir = property(lambda self: self.data_dir / "models")  # A1111's sub-folder names
    styles_dir = property(lambda self: self.data_dir / "styles")  # styles trained here
    wildcards_dir = property(lambda self: self.data_dir / "wildcards")  # __name__ word lists
