"""The database layer on PostgreSQL beside SQLite (issue 14): one set of numbered migrations
builds both schemas, search finds the same items on both, claims never collide, read-then-write
actions are atomic against a concurrent claim, NOTIFY wakes listeners, and recovery touches
only jobs whose worker is provably dead. Runs on a real server (tests/pg_server.py)."""
from __future__ import annotations

import re
import subprocess
import threading
import time
from datetime import timedelta

import pytest
from PIL import Image
from sqlalchemy import inspect, select, update

from studio.db.database import Base, Database, list_migrations, migration_sql
from studio.gallery.store import GalleryQuery, GalleryStore
from studio.jobs.heartbeat import HOST, WorkerProcess
from studio.jobs.models import CANCELED, PENDING, RUNNING, Job
from studio.jobs.store import JobStore, NewJob, now

MODEL_MODULES = ("studio.gallery.models", "studio.jobs.models", "studio.chat.models",
                 "studio.jobs.heartbeat")


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path):
    target = request.getfixturevalue("pg_url") if request.param == "postgresql" else tmp_path / "s.sqlite3"
    db = Database(target)
    db.migrate()
    yield db
    db.engine.dispose()


def jobs(n: int, **params) -> list[NewJob]:
    return [NewJob("queue_test", "null", {"prompt": f"job {i}", **params}) for i in range(n)]


def test_one_numbering_builds_both_schemas_and_the_orm_agrees(pg_url, tmp_path):
    import importlib

    for module in MODEL_MODULES:
        importlib.import_module(module)
    sqlite_versions = [v for v, _ in list_migrations("sqlite")]
    assert sqlite_versions == [v for v, _ in list_migrations("postgresql")]
    columns = {}
    for target in (tmp_path / "s.sqlite3", pg_url):
        db = Database(target)
        assert db.migrate() == sqlite_versions
        assert db.migrate() == []  # once each
        inspector = inspect(db.engine)
        columns[db.dialect] = {t: {c["name"] for c in inspector.get_columns(t)}
                               for t in inspector.get_table_names() if not t.startswith("items_fts")}
        for table in Base.metadata.sorted_tables:  # every ORM column exists in the schema
            assert {c.name for c in table.columns} <= columns[db.dialect][table.name], table.name
        db.engine.dispose()
    assert columns["sqlite"] == columns["postgresql"]  # the same tables and columns


def test_a_second_process_migrating_at_once_waits_and_finds_it_done(pg_url):
    first, second = Database(pg_url), Database(pg_url)
    results = []
    threads = [threading.Thread(target=lambda d=d: results.append(d.migrate())) for d in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # each migration applied once, by one of them (they may take turns)
    assert sorted(results[0] + results[1]) == [v for v, _ in list_migrations("postgresql")]
    assert first.schema_version() == second.schema_version() == list_migrations("postgresql")[-1][0]


def test_search_finds_the_same_items_on_both_databases(pg_url, tmp_path):
    texts = ["A red café at dusk", "crème brûlée, studio light", "Red-haired fox; 64px",
             "naïve art: Zürich in snow", "red_panda in the Forest", "über-detailed robot",
             "a cat", "the catalogue of cats", "São Paulo at night", "x"]
    queries = ["red", "RED", "cafe", "café", "creme brulee", "fox 64", "64px", "zurich", "naive",
               "panda", "red panda", "uber", "detailed", "cat", "cata", "sao", "paulo night",
               "nothing", "-", "forest red", "a", "art snow", "brûl", "dusk café red"]
    found = {}
    for target in (tmp_path / "s.sqlite3", pg_url):
        db = Database(target)
        db.migrate()
        gallery = GalleryStore(db, tmp_path / db.dialect)
        for i, prompt in enumerate(texts):
            if i % 2:
                gallery.add_image(Image.new("RGB", (4, 4)), task="t", engine="e", prompt=prompt,
                                  negative_prompt="blurry" if i == 3 else "")
            else:
                gallery.add_text(f"reply {i}", task="chat", engine="llm", prompt=prompt)
        found[db.dialect] = {q: [texts.index(item.prompt) for item in
                                 gallery.query(GalleryQuery(search=q)).items] for q in queries}
        db.engine.dispose()
    assert found["sqlite"] == found["postgresql"]
    assert found["postgresql"]["creme brulee"] == [1] and found["postgresql"]["red"] == [4, 2, 0]
    assert found["postgresql"]["cat"] == [7, 6] and found["postgresql"]["nothing"] == []


def test_seeds_up_to_2_32_fit_on_both_databases(database, tmp_path):
    gallery = GalleryStore(database, tmp_path)
    item = gallery.add_image(Image.new("RGB", (4, 4)), task="txt2img", engine="diffusion",
                             seed=2**32 - 1)
    assert gallery.get(item.id).seed == 2**32 - 1


def test_postgres_accent_table_matches_the_python_one():
    from studio.gallery import search

    sql = migration_sql(next(p for v, p in list_migrations("postgresql") if v == 1), "postgresql")
    accented, plain = re.search(r"'(à[^']*)',\s*'([^']*)'", sql).groups()
    assert (accented, plain) == (search.ACCENTED, search.PLAIN)


def test_concurrent_claims_take_every_job_once(database):
    store = JobStore(database)
    ids = store.insert(jobs(120))
    taken: list[list[int]] = [[] for _ in range(6)]

    def work(index: int) -> None:
        while (job := store.claim(f"w{index}")) is not None:
            taken[index].append(job.id)
            store.finish(job.id, "completed", result={}, worker=f"w{index}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = sorted(i for t in taken for i in t)
    assert every == sorted(ids)  # each job exactly once
    if database.dialect == "postgresql":
        assert sum(1 for t in taken if t) >= 2  # SKIP LOCKED: claims did not queue up behind one


@pytest.mark.parametrize("action", ["cancel", "hold", "move"])
def test_read_then_write_actions_are_atomic_against_a_claim(database, action):
    """Race each action against a claim of the same job, many times: the outcome is always one
    of the two orders, never a mix (a canceled job running, a held job running...)."""
    store = JobStore(database)
    for _ in range(25):
        job_id, other = store.insert(jobs(2))
        barrier = threading.Barrier(2)
        outcome: dict[str, object] = {}

        def claim() -> None:
            barrier.wait()
            outcome["claimed"] = store.claim("racer")

        def act() -> None:
            barrier.wait()
            try:
                if action == "cancel":
                    outcome["status"] = store.request_cancel(job_id)
                elif action == "hold":
                    store.hold(job_id, True)
                else:
                    store.move(other, "top")
            except ValueError as error:
                outcome["refused"] = str(error)

        threads = [threading.Thread(target=claim), threading.Thread(target=act)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        claimed = outcome["claimed"]
        final = store.get(job_id)
        if action == "cancel":
            if claimed is not None and claimed.id == job_id:  # claim first: flagged, still running
                assert final.status == RUNNING and final.cancel_requested
            else:
                assert final.status == CANCELED
        elif action == "hold":
            if claimed is not None and claimed.id == job_id:
                assert final.status == RUNNING and "is running" in outcome["refused"]
            else:
                assert final.status == "paused" and claimed.id == other
        else:  # moved to the top before the claim: the claim took it; else the claim took the first
            assert claimed is not None and store.get(claimed.id).status == RUNNING
        for view in store.list(statuses=[RUNNING]):
            store.finish(view.id, "completed", result={})
        for view in store.list(statuses=[PENDING, "paused"]):
            store.request_cancel(view.id)


def test_notify_wakes_a_listener_on_postgres_and_sqlite_polls(pg_url, tmp_path):
    queue_side, worker_side = Database(pg_url), Database(pg_url)
    queue_side.migrate()
    listener = JobStore(worker_side).listen()
    assert listener.wait(0.2) is False  # connects and listens; nothing yet
    timer = threading.Timer(0.3, lambda: JobStore(queue_side).insert(jobs(1)))
    started = time.monotonic()
    timer.start()
    assert listener.wait(10) is True
    assert time.monotonic() - started < 2  # woken by NOTIFY, not by the timeout
    listener.close()
    lite = Database(tmp_path / "s.sqlite3")
    started = time.monotonic()
    assert JobStore(lite).listen().wait(0.3) is False and time.monotonic() - started >= 0.3


def test_recovery_touches_only_provably_dead_workers(database):
    store = JobStore(database)
    ids = store.insert(jobs(5))
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        workers = {"live-here": f"a@{HOST}:{sleeper.pid}", "this-process": "b",
                   "live-far": "c@far-host:10", "silent-far": "d@far-host:11", "hung": "e@far-host:10"}
        for name in workers.values():
            assert store.claim(name) is not None
        with database.transaction() as session:
            for pid, age in ((10, 1), (11, 120)):  # far-host:10 beats, far-host:11 went quiet
                session.add(WorkerProcess(name=f"far-host:{pid}", host="far-host", pid=pid,
                                          process_start=1.0, started_at=now(),
                                          heartbeat_at=now() - timedelta(seconds=age)))
            session.execute(update(Job).where(Job.worker == "e@far-host:10")
                            .values(heartbeat_at=now() - timedelta(seconds=900)))
        assert store.recover(max_attempts=3) == {"completed": 0, "requeued": 1, "failed": 0}
        assert store.get(ids[3]).status == PENDING  # silent-far
        sleeper.kill()
        sleeper.wait()
        assert store.recover(max_attempts=3)["requeued"] == 1  # live-here, now dead
        assert store.get(ids[0]).status == PENDING
        assert store.recover(max_attempts=3, hung_after_s=600)["requeued"] == 1  # hung
        assert [store.get(i).status for i in ids] == [PENDING, RUNNING, RUNNING, PENDING, PENDING]
    finally:
        sleeper.kill()


def test_a_stale_worker_cannot_finish_a_job_taken_back(database):
    store = JobStore(database)
    (job_id,) = store.insert(jobs(1))
    store.claim("slow@far-host:5")
    store.recover(max_attempts=3, hung_after_s=0)  # taken back from the hung worker
    store.claim("fresh")
    assert store.finish(job_id, "completed", result={}, worker="slow@far-host:5") is False
    assert store.get(job_id).status == RUNNING
    assert store.finish(job_id, "completed", result={}, worker="fresh") is True


def test_claim_prefers_the_model_a_worker_holds_within_a_priority(database):
    store = JobStore(database)
    a, b, c = store.insert([NewJob("txt2img", "diffusion", {"model": "sd-a"}),
                            NewJob("txt2img", "diffusion", {"model": "sd-b"}),
                            NewJob("txt2img", "diffusion", {"model": "sd-b"}, priority=5)])
    assert store.claim("w", prefer=[("diffusion", "sd-a")]).id == c  # priority first
    assert store.claim("w", prefer=[("diffusion", "sd-b")]).id == b  # then the held model
    assert store.claim("w", prefer=[("diffusion", "sd-b")]).id == a


def test_the_database_id_is_made_once_and_shared(database):
    first = JobStore(database).database_id()
    assert re.fullmatch(r"[0-9a-f]{8}", first)
    assert JobStore(Database(database.url)).database_id() == first  # another studio, same id


def test_worker_is_recorded_as_name_at_host_and_pid(database):
    import os

    store = JobStore(database)
    (job_id,) = store.insert(jobs(1))
    store.claim("inproc-1")
    assert store.get(job_id).to_dict()["worker"] == f"inproc-1@{HOST}:{os.getpid()}"
    with database.session() as session:
        assert session.scalar(select(WorkerProcess.pid).where(
            WorkerProcess.name == f"{HOST}:{os.getpid()}")) == os.getpid()


def test_one_migration_file_renders_each_dialect_and_refuses_typos(tmp_path):
    """One file per migration for both databases: placeholders become each one's types, the
    other dialect's `-- if` block is left out, and a typo fails before anything runs."""
    good = tmp_path / "0001_x.sql"
    good.write_text("CREATE TABLE t (id {ID}, at {TIMESTAMP}, v {BLOB}, d TEXT DEFAULT '{}');\n"
                    "-- if sqlite\nCREATE INDEX only_sqlite ON t(at);\n-- end if\n"
                    "-- if postgresql\nCREATE INDEX only_pg ON t(at);\n-- end if\n")
    lite, pg = migration_sql(good, "sqlite"), migration_sql(good, "postgresql")
    assert "id INTEGER PRIMARY KEY, at DATETIME, v BLOB, d TEXT DEFAULT '{}'" in lite
    assert "only_sqlite" in lite and "only_pg" not in lite
    assert "GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, at TIMESTAMP, v BYTEA" in pg
    assert "only_pg" in pg and "only_sqlite" not in pg
    for bad, says in [("x {IDD}", "unknown placeholder {IDD}"), ("-- if mysql\n-- end if", "-- if"),
                      ("-- if sqlite\nx", "never closed"), ("-- end if", "without")]:
        good.write_text(bad)
        with pytest.raises(RuntimeError, match=re.escape(says)):
            migration_sql(good, "sqlite")
