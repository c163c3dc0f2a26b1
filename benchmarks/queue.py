"""Queue overhead per job, with a trivial engine (studio/jobs/testing.py: `queue_noop` takes the
engine lock, reports one progress step and returns), at 10 and 10,000 queued jobs.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/queue.py            # 10 and 10,000
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/queue.py --depths 10 1000 --json out.json

Measured, per queue depth (a fresh file database in a temp dir, WAL, like the studio's):
  enqueue (batch)      enqueue_many of the whole backlog, per job (validation + one INSERT)
  enqueue (single)     enqueue() one job at a time (one transaction each), 100 jobs
  bookkeeping          the worker's store calls per job: claim + progress + finish
  per job, end to end  wall time to drain the backlog / jobs (bookkeeping + run_task + lock)
  enqueue -> start     an idle worker: enqueue() until the task starts running (median of 20)
  urgent -> start      a priority job queued behind the backlog, while it drains: until it starts
The target is < 5 ms per job.
"""
from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Run as `python benchmarks/<x>.py`, this folder comes first on sys.path and its queue.py would
# shadow the standard library's `queue` (torch imports it): put the repo root there instead.
sys.path[:] = [str(REPO)] + [p for p in sys.path if Path(p or ".").resolve() != REPO / "benchmarks"]

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

from engines.base import CancelToken, Progress  # noqa: E402
from studio.jobs.queue import JobQueue  # noqa: E402
from studio.jobs.store import JobStore  # noqa: E402
from studio.jobs.testing import make_context  # noqa: E402
from studio.jobs.worker import InProcessWorker  # noqa: E402
from studio.tasks import TaskResult, TaskSpec, register  # noqa: E402

STARTS: dict[str, float] = {}  # probe name -> perf_counter when its task began


def _probe(ctx, params: dict, on_progress, cancel: CancelToken) -> TaskResult:
    STARTS[params["probe"]] = time.perf_counter()
    with ctx.engines.use("null"):
        on_progress(Progress(1, 1))
    return TaskResult()


class TimedStore(JobStore):
    """JobStore that adds up the time of the worker's calls."""

    def __init__(self, db) -> None:
        super().__init__(db)
        self.seconds = {"claim": 0.0, "report_progress": 0.0, "finish": 0.0}
        self.calls = {"claim": 0, "report_progress": 0, "finish": 0}
        self._lock = threading.Lock()

    def _timed(self, name, method, *args, **kwargs):
        started = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            with self._lock:
                self.seconds[name] += time.perf_counter() - started
                self.calls[name] += 1

    def claim(self, worker, tasks=None, skip_tasks=()):
        return self._timed("claim", super().claim, worker, tasks, skip_tasks)

    def report_progress(self, job_id, progress, message):
        return self._timed("report_progress", super().report_progress, job_id, progress, message)

    def finish(self, job_id, status, error=None, result=None):
        return self._timed("finish", super().finish, job_id, status, error, result)


def wait_started(name: str, timeout: float = 60.0) -> float:
    deadline = time.monotonic() + timeout
    while name not in STARTS:
        if time.monotonic() > deadline:
            raise RuntimeError(f"probe {name} never started")
        time.sleep(0.0002)
    return STARTS[name]


def run(depth: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        ctx = make_context(Path(tmp) / "data")
        register(TaskSpec("queue_probe", "null", lambda c, p: None, _probe))
        queue = JobQueue(ctx)
        ctx.queue = queue
        store = TimedStore(ctx.db)
        queue.start_worker(InProcessWorker(ctx, store, lambda: queue.paused, idle_poll_s=1.0))

        # Warm-up: the first job imports torch (device choice) and the task modules.
        queue.enqueue("queue_probe", {"probe": "warm-up"})
        wait_started("warm-up")
        queue.wait_idle(60, poll_s=0.005)

        # Idle worker: enqueue -> start.
        latencies = []
        for i in range(20):
            name = f"idle-{i}"
            started = time.perf_counter()
            queue.enqueue("queue_probe", {"probe": name})
            latencies.append(wait_started(name) - started)
            queue.wait_idle(10, poll_s=0.001)

        # Enqueue the backlog while paused, then single enqueues on top of it.
        queue.pause()
        started = time.perf_counter()
        queue.enqueue_many("queue_noop", [{"n": i} for i in range(depth)])
        batch_s = time.perf_counter() - started
        singles = min(100, depth)
        started = time.perf_counter()
        for i in range(singles):
            queue.enqueue("queue_noop", {"n": i})
        single_s = time.perf_counter() - started
        total = depth + singles

        # Drain it, with a priority job queued behind the backlog once the worker is busy.
        for key in store.seconds:
            store.seconds[key], store.calls[key] = 0.0, 0
        started = time.perf_counter()
        queue.resume()
        time.sleep(0.05)
        urgent_queued = time.perf_counter()
        queue.enqueue("queue_probe", {"probe": "urgent"}, priority=100)
        urgent_latency = wait_started("urgent") - urgent_queued
        if not queue.wait_idle(3600, poll_s=0.01):
            raise RuntimeError("the backlog did not drain")
        drain_s = time.perf_counter() - started
        jobs_run = total + 1
        queue.stop()
        STARTS.clear()
        bookkeeping = sum(store.seconds.values()) / store.calls["finish"]
        return {
            "queued_jobs": depth,
            "enqueue_batch_ms_per_job": 1000 * batch_s / depth,
            "enqueue_single_ms_per_job": 1000 * single_s / singles,
            "bookkeeping_ms_per_job": 1000 * bookkeeping,
            "claim_ms": 1000 * store.seconds["claim"] / max(1, store.calls["claim"]),
            "progress_ms": 1000 * store.seconds["report_progress"] / max(1, store.calls["report_progress"]),
            "finish_ms": 1000 * store.seconds["finish"] / max(1, store.calls["finish"]),
            "end_to_end_ms_per_job": 1000 * drain_s / jobs_run,
            "idle_enqueue_to_start_ms_median": 1000 * statistics.median(latencies),
            "urgent_enqueue_to_start_ms": 1000 * urgent_latency,
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", type=int, nargs="+", default=[10, 10_000])
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    results = [run(depth) for depth in args.depths]
    rows = [("enqueue, batch (ms/job)", "enqueue_batch_ms_per_job"),
            ("enqueue, single (ms/job)", "enqueue_single_ms_per_job"),
            ("bookkeeping: claim+progress+finish (ms/job)", "bookkeeping_ms_per_job"),
            ("  claim (ms)", "claim_ms"), ("  progress (ms)", "progress_ms"),
            ("  finish (ms)", "finish_ms"),
            ("end to end, drain (ms/job)", "end_to_end_ms_per_job"),
            ("enqueue -> start, idle worker (ms, median)", "idle_enqueue_to_start_ms_median"),
            ("urgent enqueue -> start behind backlog (ms)", "urgent_enqueue_to_start_ms")]
    print("| measure | " + " | ".join(f"{r['queued_jobs']:,} queued" for r in results) + " |")
    print("|---|" + "---:|" * len(results))
    for label, key in rows:
        print(f"| {label} | " + " | ".join(f"{r[key]:.2f}" for r in results) + " |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
