"""Scale-out figures (docs/scale-out.md): claim latency on PostgreSQL vs SQLite, and jobs/s with
1, 2 and 4 Ray actors on the trivial engine and on 64 px txt2img.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/scale.py
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/scale.py --actors 1 2 --skip-txt2img --json out.json

1. Claim latency: a fresh database with `depth` pending jobs (10 and 10,000); 200 claims, each
   timed alone (one UPDATE ... RETURNING; on PostgreSQL its FOR UPDATE SKIP LOCKED subquery),
   then the job is finished and a new one queued (not timed) so the depth stays put. PostgreSQL
   is a local server with its default durability (every commit flushed to disk), and again with
   `synchronous_commit = off`, which is what SQLite's WAL with synchronous=NORMAL (the studio's
   setting) does: a power cut may lose the last commits, never corrupt.
2. Throughput: a local Ray cluster with 4 fake GPUs; for N actors, a fresh database, a warm-up
   of 2N jobs (models load), then `repeats` times: `jobs` queued while paused, resumed, timed
   until all are done; the median. Scaling efficiency = jobs/s with N / (N x jobs/s with 1).

On a machine with few cores the actors share them, so throughput on a CPU-bound engine cannot
grow with N; the figures show what the queue itself costs and where it stops scaling.
"""
from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Run as `python benchmarks/scale.py`: put the repo root first (benchmarks/queue.py would shadow
# the standard library's `queue`), and tests/ for the throwaway PostgreSQL server.
sys.path[:] = [str(REPO), str(REPO / "tests")] + [
    p for p in sys.path if Path(p or ".").resolve() != REPO / "benchmarks"]

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private local cluster

from pg_server import PostgresServer  # noqa: E402
from studio.db.database import Database  # noqa: E402
from studio.jobs.store import JobStore, NewJob  # noqa: E402

SETUP = "studio.jobs.ray_worker:add_test_engine"
TRIVIAL = ("queue_test", {"prompt": "bench", "steps": 1})
TXT2IMG = ("txt2img", {"prompt": "a red apple on a table", "width": 64, "height": 64, "steps": 8,
                       "preview_every": 0})


def claim_latency(target, depth: int, claims: int = 200) -> dict[str, float]:
    db = Database(target)
    db.migrate()
    store = JobStore(db)
    for start in range(0, depth, 5000):
        store.insert([NewJob("queue_test", "null", {"steps": 1}) for _ in range(min(5000, depth - start))])
    times = []
    for _ in range(claims):
        started = time.perf_counter()
        job = store.claim("bench")
        times.append(time.perf_counter() - started)
        store.finish(job.id, "completed", result={})
        store.insert([NewJob("queue_test", "null", {"steps": 1})])
    db.engine.dispose()
    times.sort()
    return {"median_ms": round(statistics.median(times) * 1000, 2),
            "p95_ms": round(times[int(0.95 * len(times))] * 1000, 2)}


def async_commit_database(pg: PostgresServer) -> str:
    import psycopg

    url = pg.create_database()
    with psycopg.connect(host="127.0.0.1", port=pg.port, user="studio", dbname="postgres",
                         autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{url.rsplit("/", 1)[1]}" SET synchronous_commit = off')
    return url


def throughput(pg: PostgresServer, actors: int, task: str, params: dict, jobs: int,
               repeats: int) -> float:
    from studio.app import ENGINES
    from studio.jobs.queue import JobQueue
    from studio.jobs.ray_worker import RayWorker
    from studio.jobs.testing import make_context

    ctx = make_context(Path(tempfile.mkdtemp(prefix="scale-")), pg.create_database())
    for spec in ENGINES:  # the front-end validates txt2img jobs; actors run them
        ctx.engines.register(spec)
    queue = JobQueue(ctx)
    ctx.queue = queue
    worker = RayWorker(ctx, address=None, workers=actors, board=queue.board, setup=SETUP,
                       on_finished=queue._notify_finished)
    queue.start_worker(worker)
    try:
        queue.enqueue_many(task, [dict(params, seed=10**6 + i) for i in range(2 * actors)])  # warm-up
        assert queue.wait_idle(timeout=600), "warm-up did not finish"
        rates = []
        for repeat in range(repeats):
            queue.pause()
            ids = queue.enqueue_many(task, [dict(params, seed=1000 * repeat + i) for i in range(jobs)])
            started = time.perf_counter()
            queue.resume()
            assert queue.wait_idle(timeout=1800, poll_s=0.02), "batch did not finish"
            rates.append(jobs / (time.perf_counter() - started))
            failed = [j for j in (queue.get(i) for i in ids) if j.status != "completed"]
            assert not failed, f"{len(failed)} jobs did not complete: {failed[0].error}"
        return statistics.median(rates)
    finally:
        worker.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--depths", type=int, nargs="+", default=[10, 10_000])
    parser.add_argument("--jobs", type=int, default=200, help="trivial jobs per batch")
    parser.add_argument("--txt2img-jobs", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="timed batches per figure (median)")
    parser.add_argument("--skip-txt2img", action="store_true")
    parser.add_argument("--claims-only", action="store_true", help="only the claim latency")
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args()
    results: dict = {"cores": os.cpu_count(), "load_before": os.getloadavg()[0]}
    pg = PostgresServer(durable=True).start()
    try:
        print(f"{os.cpu_count()} cores, load average {results['load_before']:.1f}")
        print("\nclaim latency (one claim, ms)       median    p95")
        results["claim"] = {}
        for depth in args.depths:
            for name, target in (("SQLite", Path(tempfile.mkdtemp()) / "b.sqlite3"),
                                 ("PostgreSQL", pg.create_database()),
                                 ("PostgreSQL async", async_commit_database(pg))):
                figures = claim_latency(target, depth)
                results["claim"][f"{name} {depth}"] = figures
                print(f"  {name:<16} {depth:>6} queued {figures['median_ms']:>6.2f}  {figures['p95_ms']:>6.2f}")

        if args.claims_only:
            return
        import ray

        ray.init(address="local", num_gpus=max(args.actors), namespace="genstudio",
                 include_dashboard=False, log_to_driver=False)
        kinds = [("trivial", *TRIVIAL, args.jobs)]
        if not args.skip_txt2img:
            kinds.append(("txt2img 64 px", *TXT2IMG, args.txt2img_jobs))
        results["throughput"] = {}
        for label, task, params, jobs in kinds:
            print(f"\n{label}: jobs/s by actors (efficiency = jobs/s / (N x one actor's))")
            rates = {}
            for n in args.actors:
                rates[n] = throughput(pg, n, task, params, jobs, args.repeats)
                efficiency = rates[n] / (n * rates[args.actors[0]] / args.actors[0])
                print(f"  {n} actor(s)   {rates[n]:7.2f} jobs/s   efficiency {efficiency:.2f}")
            results["throughput"][label] = rates
        ray.shutdown()
    finally:
        pg.stop()
    results["load_after"] = os.getloadavg()[0]
    print(f"\nload average after: {results['load_after']:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
