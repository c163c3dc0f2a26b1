"""Gallery at scale: insert 100,000 items, then time a page of 50 thumbnails, an FTS query and a
filtered query.  Run: .venv/bin/python benchmarks/gallery.py [--items 100000] [--data-dir DIR]

The first 1,000 items go through GalleryStore.add_image (PNG + WEBP thumbnail + row, the real
path); the rest are bulk-inserted rows with tiny real thumbnail files in the same layout, so the
queries run on a realistic table without spending minutes encoding images.
"""
from __future__ import annotations

import argparse
import io
import json
import random
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Run as `python benchmarks/<x>.py`, this folder comes first on sys.path and its queue.py would
# shadow the standard library's `queue` (torch imports it): put the repo root there instead.
sys.path[:] = [str(REPO)] + [p for p in sys.path if Path(p or ".").resolve() != REPO / "benchmarks"]

from PIL import Image
from sqlalchemy import insert

from studio.db.database import Database
from studio.gallery.models import Item
from studio.gallery.store import GalleryQuery, GalleryStore

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]
SHAPES = ["circle", "square", "triangle", "star", "castle", "dragon", "portrait", "forest"]
ENGINES = [("diffusion", "genstudio-tiny-sd"), ("style", "vintage"), ("llm", "smollm2-135m-instruct")]


def timed(fn, repeat=7):
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--data-dir", type=Path, default=None)
    args = parser.parse_args()
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="gallery-bench-"))
    db = Database(data_dir / "studio.sqlite3")
    db.migrate()
    store = GalleryStore(db, data_dir)
    rng = random.Random(0)

    # 1. Through the store (the real write path).
    real = min(1000, args.items)
    started = time.perf_counter()
    for i in range(real):
        store.add_image(Image.new("RGB", (64, 64), tuple(rng.randrange(256) for _ in range(3))),
                        task="txt2img", engine="diffusion", model="genstudio-tiny-sd",
                        prompt=f"a {rng.choice(COLOURS)} {rng.choice(SHAPES)}", params={"steps": 20}, seed=i)
    store_rate = real / (time.perf_counter() - started)

    # 2. Bulk rows + small thumbnail files for the rest.
    thumb = io.BytesIO()
    Image.new("RGB", (64, 64), (90, 90, 90)).save(thumb, format="WEBP")
    thumb_bytes = thumb.getvalue()
    base_time = datetime(2026, 1, 1)
    started = time.perf_counter()
    batch = []
    (data_dir / "thumbnails" / "bulk").mkdir(parents=True, exist_ok=True)
    (data_dir / "outputs" / "bulk").mkdir(parents=True, exist_ok=True)
    for i in range(real, args.items):
        engine, model = rng.choice(ENGINES)
        uid = uuid.uuid4().hex
        is_text = engine == "llm"
        if not is_text:
            (data_dir / "thumbnails" / "bulk" / f"{uid}.webp").write_bytes(thumb_bytes)
        batch.append(dict(
            uid=uid, kind="text" if is_text else "image", task="chat" if is_text else "txt2img",
            engine=engine, model=model,
            prompt=f"a {rng.choice(COLOURS)} {rng.choice(SHAPES)} number {i}",
            negative_prompt="", text=f"reply {i} about {rng.choice(SHAPES)}" if is_text else None,
            params_json=json.dumps({"steps": 20}), seed=i, width=None if is_text else 64,
            height=None if is_text else 64, duration_s=1.0, parent_id=None,
            favourite=int(rng.random() < 0.05),
            file_path=None if is_text else f"outputs/bulk/{uid}.png",
            thumb_path=None if is_text else f"thumbnails/bulk/{uid}.webp",
            created_at=base_time + timedelta(minutes=i)))
        if len(batch) == 5000:
            with db.transaction() as session:
                session.execute(insert(Item), batch)
            batch = []
    if batch:
        with db.transaction() as session:
            session.execute(insert(Item), batch)
    bulk_seconds = time.perf_counter() - started
    total = store.query(GalleryQuery(page_size=1)).total

    # 3. Queries.
    def page_of_thumbnails(page_number):
        def run():
            page = store.query(GalleryQuery(page=page_number, page_size=50))
            return sum(len(i.thumb_path.read_bytes()) for i in page.items if i.thumb_path)
        return run

    first_ms, _ = timed(page_of_thumbnails(1))
    deep_ms, _ = timed(page_of_thumbnails(total // 50 - 1))
    fts_ms, fts = timed(lambda: store.query(GalleryQuery(search="purple dragon", page_size=50)))
    filtered_ms, filtered = timed(lambda: store.query(GalleryQuery(
        engine="diffusion", favourites_only=True, date_from=datetime(2026, 1, 15),
        date_to=datetime(2026, 2, 15), page_size=50)))
    facets_ms, _ = timed(store.facets)
    combined_ms, combined = timed(lambda: store.query(GalleryQuery(
        search="castle", kind="image", model="vintage", page=3, page_size=50)))

    print(f"items: {total:,} ({real} through the store at {store_rate:.0f} items/s; "
          f"{args.items - real:,} bulk in {bulk_seconds:.1f} s)")
    print("| operation (median of 7) | ms | rows matched |")
    print("|---|---|---|")
    print(f"| page 1 of 50 thumbnails (query + read files) | {first_ms:.1f} | 50 |")
    print(f"| page {total // 50 - 1:,} of 50 thumbnails (deep offset) | {deep_ms:.1f} | 50 |")
    print(f"| full-text search \"purple dragon\" (page 1 + count) | {fts_ms:.1f} | {fts.total:,} |")
    print(f"| filtered: engine + favourites + date range | {filtered_ms:.1f} | {filtered.total:,} |")
    print(f"| filter choices (distinct engines, models, tasks, tags) | {facets_ms:.1f} | - |")
    print(f"| search + kind + model, page 3 | {combined_ms:.1f} | {combined.total:,} |")


if __name__ == "__main__":
    main()
