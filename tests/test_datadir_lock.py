"""One data dir, one owner: a second studio on the same data dir refuses to start, in one line."""
from __future__ import annotations

import os
import subprocess
import sys


def test_a_second_studio_on_the_same_data_dir_refuses(data_dir):
    from studio.app import build_context
    from studio.config import StudioConfig

    ctx = build_context(StudioConfig(data_dir=data_dir, queue_worker=False))
    second = subprocess.run(
        [sys.executable, "-c", "import sys; from pathlib import Path; from studio.app import build_context; "
         "from studio.config import StudioConfig; build_context(StudioConfig(data_dir=Path(sys.argv[1])))",
         str(data_dir)], capture_output=True, text=True, timeout=120)
    assert second.returncode != 0
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and "another studio" in lines[0] and str(os.getpid()) in lines[0], second.stderr
    ctx.db.engine.dispose()
