"""Ready means ready: from the moment the studio accepts connections, an API call gets either a
503 with Retry-After (routes not mounted yet) or its real answer, never a 404."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import requests
from conftest import REPO, free_port


def test_apis_answer_503_until_mounted_never_404(tmp_path):
    port = free_port()
    log = (tmp_path / "studio.log").open("w")
    process = subprocess.Popen(
        [sys.executable, str(REPO / "launch.py"), "--port", str(port), "--data-dir", str(tmp_path / "data"),
         "--offline"], cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=log, stderr=subprocess.STDOUT)
    seen, health = [], []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            try:
                response = requests.get(f"http://127.0.0.1:{port}/sdapi/v1/sd-models", timeout=5)
            except requests.ConnectionError:  # not listening yet
                time.sleep(0.02)
                continue
            seen.append(response.status_code)
            if response.status_code == 503:
                assert response.headers["retry-after"] == "1"
                health.append(requests.get(f"http://127.0.0.1:{port}/api/health", timeout=5).json())
            if response.status_code == 200:
                break
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
    assert seen and seen[-1] == 200, (seen, (tmp_path / "studio.log").read_text()[-2000:])
    assert set(seen) <= {503, 200}, seen
    assert all(set(h) == {"ready"} and isinstance(h["ready"], bool) for h in health)  # (it may be ready by then)
    print(f"{seen.count(503)} answers of 503 before the first 200")
