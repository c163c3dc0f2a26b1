"""The start-up sweep for a gallery on a shared database and shared storage (docs/scale-out.md).

`GalleryStore.sweep()` assumes it is alone: any tmp file or file without a row is a crash's
leftover. With other studios and Ray actors writing to the same storage, a tmp file or a file
whose row is not committed yet may belong to a write in progress elsewhere. A write holds such
files only for the length of one `add_images` call (milliseconds to seconds), so one older than
`min_age_s` belongs to a writer that died; only those are removed. Rows whose file is missing
are reported, never deleted: on another machine that usually means the share is not mounted
there, and deleting them would empty everyone's gallery.
"""
from __future__ import annotations

import time

from sqlalchemy import select

from studio.gallery.models import Item

MIN_AGE_S = 3600.0


def sweep_shared(gallery, min_age_s: float = MIN_AGE_S) -> dict[str, int]:
    report = {"tmp_files": 0, "orphan_files": 0, "rows_without_file": 0}
    cutoff = time.time() - min_age_s
    with gallery.db.session() as session:
        known = {uid: f for uid, f in session.execute(
            select(Item.uid, Item.file_path).where(Item.kind == "image"))}
    for folder in (gallery.outputs_dir, gallery.thumbnails_dir):
        if not folder.exists():
            continue
        for path in folder.rglob("*"):
            try:
                if not path.is_file() or path.stat().st_mtime > cutoff:
                    continue  # possibly a write in progress elsewhere
            except FileNotFoundError:  # renamed or removed by its writer meanwhile
                continue
            if path.name.endswith(".tmp"):
                path.unlink(missing_ok=True)
                report["tmp_files"] += 1
            elif path.stem not in known:
                path.unlink(missing_ok=True)
                report["orphan_files"] += 1
    report["rows_without_file"] = sum(
        1 for f in known.values() if not f or not (gallery.data_dir / f).exists())
    return report
