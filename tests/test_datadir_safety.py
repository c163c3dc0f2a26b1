"""One data dir, one owner: a second studio refuses to start; the start-up sweep never deletes rows
because the outputs folder is gone or unmounted, never touches files of a write in progress;
gallery files reach the disk before their rows commit; the A1111 options file is replaced whole."""
from __future__ import annotations

import os
import shutil
import time

from test_gallery_store import add


def test_missing_outputs_folder_keeps_every_row(gallery, data_dir):
    items = [add(gallery) for _ in range(3)]
    shutil.rmtree(data_dir / "outputs")  # an unmounted disk looks like this
    report = gallery.sweep(min_age_s=0)
    assert report["rows_without_file"] == 0 and report["rows_kept_files_missing"] == 3
    assert gallery.query().total == 3
    (data_dir / "outputs").mkdir()  # an empty mount point: same answer
    assert gallery.sweep(min_age_s=0)["rows_kept_files_missing"] == 3
    assert {i.id for i in gallery.query().items} == {i.id for i in items}


def test_mostly_missing_files_keep_their_rows_a_few_go(gallery):
    items = [add(gallery) for _ in range(4)]
    for item in items[:3]:
        item.file_path.unlink()
    assert gallery.sweep(min_age_s=0)["rows_kept_files_missing"] == 3 and gallery.query().total == 4
    more = [add(gallery) for _ in range(4)]  # now 3 of 8 are missing: under half, they go
    assert gallery.sweep(min_age_s=0)["rows_without_file"] == 3
    assert {i.id for i in gallery.query().items} == {items[3].id, *(i.id for i in more)}


def test_young_files_are_a_write_in_progress(gallery, data_dir):
    folder = data_dir / "outputs" / "today"
    folder.mkdir(parents=True)
    fresh_tmp, fresh_orphan = folder / "a.png.tmp", folder / "b.png"
    old_tmp = folder / "c.png.tmp"
    for path in (fresh_tmp, fresh_orphan, old_tmp):
        path.write_bytes(b"data")
    hour_ago = time.time() - 3600
    os.utime(old_tmp, (hour_ago, hour_ago))
    report = gallery.sweep()
    assert report["tmp_files"] == 1 and report["orphan_files"] == 0
    assert fresh_tmp.exists() and fresh_orphan.exists() and not old_tmp.exists()


def test_a_damaged_file_does_not_stop_the_start(gallery):
    item = add(gallery)
    item.thumb_path.unlink()
    item.file_path.write_bytes(b"not a png any more")
    gallery.sweep(min_age_s=0)  # no exception: the thumbnail is just not rebuilt
    assert gallery.get(item.id).id == item.id


def test_files_are_fsynced_before_the_row_commits(gallery, monkeypatch):
    import studio.gallery.store as store

    events = []
    real_fsync = os.fsync
    monkeypatch.setattr(store.os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    original = gallery.db.transaction

    def transaction():
        events.append("begin")
        return original()

    monkeypatch.setattr(gallery.db, "transaction", transaction)
    add(gallery)
    # two files (PNG, thumbnail) before the transaction, two folders inside it before commit
    assert events[:3] == ["fsync", "fsync", "begin"] and events.count("fsync") == 4


def test_options_file_is_replaced_whole(tmp_path, monkeypatch):
    from studio.api.a1111_options import write_atomically

    path = tmp_path / "a1111-options.json"
    write_atomically(path, '{"a": 1}')
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    try:
        write_atomically(path, '{"a": 2, "half": ')
    except OSError:
        pass
    assert path.read_text() == '{"a": 1}' and [p.name for p in tmp_path.iterdir()] == [path.name]
