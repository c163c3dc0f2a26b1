"""The real studio with `launch.py --database postgresql+psycopg://... --storage PATH`: two
front-ends on one database share one queue (pause, cancel and results seen by both, the worker
that ran a job named with its host and pid); a second studio on the same SQLite data dir
refuses to start with a one-line reason; --ray without PostgreSQL is refused."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from studio.jobs.heartbeat import HOST

REPO = Path(__file__).resolve().parent.parent


def launch(*args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "launch.py"), "--offline", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)


@pytest.mark.slow
def test_two_studios_on_one_postgres_database_share_the_queue(launch_studio, pg_url, tmp_path):
    storage = tmp_path / "shared-storage"
    common = ("--database", pg_url, "--storage", str(storage))
    watcher = launch_studio(data_dir=tmp_path / "a", args=(*common, "--no-queue-worker"))
    requests.post(f"{watcher.url}/api/queue/pause", timeout=10).raise_for_status()
    runner = launch_studio(data_dir=tmp_path / "b", args=common)

    # A job queued on one front-end is waiting on the other; the pause is shared.
    job = {"task": "chat", "params": {"messages": [{"role": "user", "content": "Hi"}],
                                      "max_new_tokens": 2, "seed": 1}}
    first = requests.post(f"{watcher.url}/api/queue", json=job, timeout=10).json()["ids"][0]
    second = requests.post(f"{watcher.url}/api/queue", json=job, timeout=10).json()["ids"][0]
    seen = requests.get(f"{runner.url}/api/queue", timeout=10).json()
    assert seen["paused"] is True and [j["id"] for j in seen["jobs"]] == [first, second]
    canceled = requests.post(f"{runner.url}/api/queue/{second}/cancel", timeout=10).json()
    assert canceled["status"] == "canceled"
    assert requests.get(f"{watcher.url}/api/queue/{second}", timeout=10).json()["status"] == "canceled"

    # Run on the second studio's worker; the first sees the result and who ran it.
    requests.post(f"{runner.url}/api/queue/resume", timeout=10).raise_for_status()
    deadline = time.monotonic() + 120
    while (view := requests.get(f"{watcher.url}/api/queue/{first}", timeout=10).json())["status"] != "completed":
        assert view["status"] in ("pending", "running") and time.monotonic() < deadline, view
        time.sleep(0.3)
    assert view["worker"].endswith(f"@{HOST}:{runner.process.pid}")
    assert view["item_ids"] and view["worker"] == requests.get(
        f"{runner.url}/api/queue", timeout=10).json()["jobs"][0]["worker"]
    assert not (tmp_path / "a" / "studio.sqlite3").exists()  # the rows live in PostgreSQL


@pytest.mark.slow
def test_a_second_studio_on_the_same_sqlite_data_dir_refuses(launch_studio, tmp_path):
    data = tmp_path / "data"
    first = launch_studio(data_dir=data)
    result = launch("--data-dir", str(data), "--port", "0")
    assert result.returncode != 0
    message = result.stderr.strip().splitlines()
    assert len(message) == 1 and "already uses" in message[0] and f"pid {first.process.pid}" in message[0]


def test_ray_needs_a_shared_database_and_a_bad_url_is_one_line(tmp_path):
    refused = launch("--data-dir", str(tmp_path), "--ray", "auto", timeout=30)
    assert refused.returncode == 2 and "--database postgresql" in refused.stderr
    bad = launch("--data-dir", str(tmp_path), "--database", "mysql://x@y/z", "--port", "0")
    assert bad.returncode != 0
    assert bad.stderr.strip().splitlines() == [
        "GenStudio: --database: the studio runs on SQLite or PostgreSQL, got a 'mysql' URL "
        "(mysql://x@y/z)"]
