"""A studio process minus the UI, on the app's own wiring (`build_context`), that runs the queue
until it is empty: the process tests/test_chaos.py kills with SIGKILL at random moments.

    python tests/chaos_worker.py DATA_DIR
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(data_dir: str) -> int:
    from studio.app import build_context
    from studio.config import StudioConfig

    ctx = build_context(StudioConfig(data_dir=Path(data_dir), device="cpu", offline=True))
    ctx.queue.start_worker()
    print("recovered", ctx.queue.recovered, flush=True)
    idle = ctx.queue.wait_idle(timeout=900)
    ctx.queue.stop()
    return 0 if idle else 3


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
