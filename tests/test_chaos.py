"""Chaos: one data dir, one owner; SIGKILL at random moments of a txt2img batch, style jobs
(which write an upload and a result) and a style training; restart until the queue is empty.
Every job is done exactly once, every gallery row has its file and every file its row."""
from __future__ import annotations

import base64
import io
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
WORKER = [sys.executable, str(REPO / "tests" / "chaos_worker.py")]


def _photo_b64(seed: int) -> str:
    rng = random.Random(seed)
    image = Image.new("RGB", (48, 40), tuple(rng.randrange(256) for _ in range(3)))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _queue_everything(ctx) -> dict[int, int]:
    """Job id -> the gallery items it must make (0 for training: its output is a style)."""
    from studio.jobs.runner import BATCH

    expected = {}
    for handle in ctx.runner.submit_many("txt2img", [
            {"prompt": f"a red star, job {i}", "steps": 12, "seed": i, "batch_size": 2}
            for i in range(6)], priority=BATCH):
        expected[handle.id] = 2
    for handle in ctx.runner.submit_many("style", [
            {"style": "ink", "image": _photo_b64(i)} for i in range(3)], priority=BATCH):
        expected[handle.id] = 1  # the result; the saved upload is its parent, not an output
    uploads = [ctx.gallery.add_image(Image.new("RGB", (48, 48), (40 * i, 90, 160)), task="upload",
                                     engine="", prompt="training image").id for i in range(4)]
    training = ctx.runner.submit("train_style", {
        "name": "Chaos", "style_image_ids": uploads[:2], "content_image_ids": uploads[2:],
        "size": 32, "iterations": 400, "width": 8, "blocks": 1}, priority=BATCH)
    expected[training.id] = 0
    return expected


@pytest.mark.slow
def test_sigkill_at_random_moments_then_restart_does_every_job_once(tmp_path):
    from sqlalchemy import select

    from studio.app import build_context
    from studio.config import StudioConfig
    from studio.gallery.models import Item
    from studio.jobs.models import COMPLETED, RUNNING

    data_dir = tmp_path / "data"
    config = StudioConfig(data_dir=data_dir, device="cpu", offline=True)
    ctx = build_context(config)  # this process queues and inspects; it holds the data dir
    expected = _queue_everything(ctx)
    ctx.db.close()  # the workers below own the data dir from now on

    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    log = (tmp_path / "workers.log").open("a")
    rng = random.Random(7)
    kills = 0
    for _ in range(4):
        worker = subprocess.Popen([*WORKER, str(data_dir)], cwd=REPO, env=env, stdout=log,
                                  stderr=subprocess.STDOUT)
        # 1. A second studio on the same data dir refuses to start, in one line.
        if kills == 0:
            time.sleep(3)
            second = subprocess.run([*WORKER, str(data_dir)], cwd=REPO, env=env,
                                    capture_output=True, text=True, timeout=120)
            assert second.returncode != 0 and "GenStudio:" in second.stderr, second.stderr[-500:]
        # 2. Kill at a random moment once a job runs.
        _wait_running(data_dir, worker, timeout=180)
        time.sleep(rng.uniform(0.05, 1.5))
        if worker.poll() is None:
            worker.send_signal(signal.SIGKILL)
            worker.wait()
            kills += 1
    final = subprocess.run([*WORKER, str(data_dir)], cwd=REPO, env=env, stdout=log,
                           stderr=subprocess.STDOUT, timeout=900)
    assert final.returncode == 0 and kills >= 2

    ctx = build_context(config)
    ctx.gallery.sweep(min_age_s=0)  # what any later start does once the crash's files are old
    for job_id, count in expected.items():
        job = ctx.queue.get(job_id)
        assert job.status == COMPLETED, (job_id, job.task, job.status, job.error)
        assert len(job.item_ids) == count, (job_id, job.task, job.item_ids)  # exactly once
    styles = [p.name for p in (data_dir / "styles").iterdir() if not p.name.startswith(".")]
    assert styles == ["chaos"]
    with ctx.db.session() as session:
        rows = session.execute(select(Item.uid, Item.file_path, Item.thumb_path)
                               .where(Item.kind == "image")).all()
    for uid, file_path, thumb_path in rows:  # every row has its files
        assert (data_dir / file_path).is_file() and (data_dir / thumb_path).is_file(), uid
    uids = {uid for uid, _, _ in rows}
    files = [p for folder in ("outputs", "thumbnails") for p in (data_dir / folder).rglob("*")
             if p.is_file()]
    assert all(p.stem in uids for p in files), [p for p in files if p.stem not in uids]
    outputs = sum(expected.values())
    made = sum(len(ctx.queue.get(j).item_ids) for j in expected)
    assert made == outputs and ctx.queue.counts()[RUNNING] == 0


def _wait_running(data_dir: Path, worker: subprocess.Popen, timeout: float) -> None:
    import sqlite3

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            return  # it finished the queue (or failed): nothing to kill
        try:
            with sqlite3.connect(data_dir / "studio.sqlite3", timeout=5) as conn:
                if conn.execute("SELECT 1 FROM jobs WHERE status = 'running'").fetchone():
                    return
        except sqlite3.Error:
            pass
        time.sleep(0.1)
    raise AssertionError("no job started running")
