"""Gallery store on an in-memory database and a temp data dir."""
from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

import pytest
from PIL import Image
from sqlalchemy import inspect

from studio.db.database import Base, Database
from studio.gallery.pnginfo import read_png_metadata
from studio.gallery.store import GalleryQuery, GalleryStore, NewImage


def red(size=(32, 24)):
    return Image.new("RGB", size, (200, 10, 10))


def add(gallery, prompt="a red star", **kw):
    fields = dict(task="txt2img", engine="diffusion", model="tiny", prompt=prompt,
                  params={"steps": 20, "guidance_scale": 7.5, "scheduler": "Euler a"}, seed=7)
    fields.update(kw)
    return gallery.add_image(red(), **fields)


def test_image_row_file_thumbnail_and_png_chunks(gallery):
    item = add(gallery, negative_prompt="blurry, ugly")
    assert item.file_path.exists() and item.thumb_path.exists()
    assert (item.width, item.height) == (32, 24)
    meta = read_png_metadata(str(item.file_path))
    assert meta["parameters"].startswith("a red star\nNegative prompt: blurry, ugly\nSteps: 20, ")
    assert meta["parsed"]["Seed"] == "7" and meta["parsed"]["CFG scale"] == "7.5"
    assert meta["parsed"]["Sampler"] == "Euler a" and meta["parsed"]["Size"] == "32x24"
    assert meta["genstudio"]["params"]["steps"] == 20
    with Image.open(item.thumb_path) as thumb:
        assert thumb.format == "WEBP"


def test_text_item_lineage_and_children(gallery):
    image = add(gallery)
    edit = add(gallery, task="img2img", parent_id=image.id)
    text = gallery.add_text("A red star.", task="chat", engine="llm", model="smol",
                            prompt="describe", parent_id=edit.id)
    assert [i.id for i in gallery.lineage(text.id)] == [image.id, edit.id, text.id]
    assert [c.id for c in gallery.children(image.id)] == [edit.id]
    gallery.delete(edit.id)  # parent removed: the child keeps existing, its link is cleared
    assert gallery.get(text.id).parent_id is None


def test_failed_batch_writes_nothing(gallery, data_dir, monkeypatch):
    good = NewImage(image=red(), task="txt2img", engine="diffusion")
    calls = {"n": 0}
    real_replace = os.replace

    def failing_replace(src, dst):  # fail while moving the second batch member into place
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        return real_replace(src, dst)

    monkeypatch.setattr("studio.gallery.store.os.replace", failing_replace)
    with pytest.raises(OSError):
        gallery.add_images([good, good])
    assert gallery.query().total == 0
    assert [p for p in data_dir.rglob("*") if p.is_file()] == []


def test_search_filters_and_pages(gallery):
    for i in range(30):
        add(gallery, prompt=f"a {'blue' if i % 3 else 'green'} circle number{i}",
            engine="diffusion" if i % 2 else "style", model="m1" if i < 10 else "m2")
    gallery.add_text("def is_prime(n): ...", task="code", engine="llm", model="smol", prompt="primes")
    assert gallery.query(GalleryQuery(search="green")).total == 10
    assert gallery.query(GalleryQuery(search="prime")).total == 1  # prefix match on text output
    assert gallery.query(GalleryQuery(search="GREEN circ")).total == 10
    assert gallery.query(GalleryQuery(search='green" (*')).total == 10  # no FTS syntax leaks
    assert gallery.query(GalleryQuery(kind="text")).total == 1
    assert gallery.query(GalleryQuery(engine="style", model="m2")).total == 10
    page2 = gallery.query(GalleryQuery(kind="image", page=2, page_size=12))
    assert page2.total == 30 and page2.pages == 3 and len(page2.items) == 12
    ids = [i.id for i in page2.items]
    assert ids == sorted(ids, reverse=True)  # newest first
    first = gallery.query(GalleryQuery(page_size=1)).items[0]
    gallery.set_favourite(first.id, True)
    gallery.set_tags(first.id, ["Keeper", " best "])
    assert [i.id for i in gallery.query(GalleryQuery(favourites_only=True)).items] == [first.id]
    assert gallery.get(first.id).tags == ("best", "keeper")
    assert gallery.query(GalleryQuery(tag="keeper")).total == 1
    tomorrow = datetime.now(timezone.utc) + timedelta(days=1)
    assert gallery.query(GalleryQuery(date_from=tomorrow)).total == 0
    assert gallery.query(GalleryQuery(date_to=tomorrow)).total == 31
    with pytest.raises(ValueError, match="page"):
        gallery.query(GalleryQuery(page=0))


def test_delete_removes_row_and_files(gallery):
    item = add(gallery)
    gallery.delete(item.id)
    assert not item.file_path.exists() and not item.thumb_path.exists()
    with pytest.raises(LookupError):
        gallery.get(item.id)


def test_sweep_repairs_what_a_crash_left(gallery, data_dir):
    keep = add(gallery)
    lost = add(gallery)
    lost.file_path.unlink()  # row without its file
    keep.thumb_path.unlink()  # a lost thumbnail is rebuilt
    (data_dir / "outputs" / "x").mkdir(parents=True)
    (data_dir / "outputs" / "x" / "deadbeef.png").write_bytes(b"orphan")  # file without a row
    (data_dir / "outputs" / "x" / "cafe.png.tmp").write_bytes(b"half")
    report = gallery.sweep(min_age_s=0)  # the default leaves files younger than a minute alone
    assert report == {"tmp_files": 1, "orphan_files": 1, "rows_without_file": 1, "rows_kept_files_missing": 0}
    assert [i.id for i in gallery.query().items] == [keep.id]
    assert not lost.thumb_path.exists()
    assert keep.thumb_path.exists()


def test_migrations_backup_and_orm_agree(tmp_path, monkeypatch):
    import studio.db.database as dbmodule

    path = tmp_path / "studio.sqlite3"
    every = dbmodule.list_migrations()
    # An "older release" knew only the first migration; it stored an item.
    monkeypatch.setattr(dbmodule, "list_migrations", lambda dialect="sqlite": every[:1])
    old = Database(path)
    assert old.migrate() == [1]
    add(GalleryStore(old, tmp_path))
    old.engine.dispose()
    # The current release applies the rest, after a backup that still holds the item.
    monkeypatch.setattr(dbmodule, "list_migrations", lambda dialect="sqlite": every)
    current = Database(path)
    assert current.migrate() == [v for v, _ in every[1:]]
    assert current.migrate() == []
    if len(every) > 1:
        backups = list(tmp_path.glob("studio.sqlite3.v1.*.bak"))
        assert len(backups) == 1
        assert GalleryStore(Database(backups[0]), tmp_path).query().total == 1
    assert GalleryStore(current, tmp_path).query().total == 1
    # Every ORM table's columns exist in the migrated schema.
    import importlib
    for module in ("studio.gallery.models", "studio.jobs.models", "studio.chat.models"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError:
            pass
    inspector = inspect(current.engine)
    for table in Base.metadata.sorted_tables:
        actual = {c["name"] for c in inspector.get_columns(table.name)}
        assert {c.name for c in table.columns} <= actual, table.name
    with current.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
