"""The start-up sweep: remove what a crash left in the gallery, and nothing else.

`sweep_alone` is for a studio that owns its data dir (the SQLite default, locked by
studio/db/database.py): tmp files and files without a row are a crash's leftovers, and so are
rows whose file is gone — unless their files are all or mostly gone, which is an unmounted or
lost outputs folder, not a crash (a crash loses at most one batch): those rows are kept and
reported. A lost thumbnail is rebuilt, not a reason to delete the row.

`sweep_shared` is for a shared database and shared storage (docs/scale-out.md): other studios
and Ray actors write there too, and a write holds its tmp file (or a file whose row is not
committed yet) only for one `add_images` call, so only files older than an hour belong to a
writer that died. Rows whose file is missing are reported, never deleted: on another machine
that usually means the share is not mounted there.

Both never touch a file younger than `min_age_s` (a write in progress).
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from PIL import Image
from sqlalchemy import delete, select

from studio.gallery.models import Item

if TYPE_CHECKING:
    from studio.gallery.store import GalleryStore

SHARED_MIN_AGE_S = 3600.0
log = logging.getLogger("genstudio.gallery")


def sweep_alone(gallery: "GalleryStore", min_age_s: float) -> dict[str, int]:
    report = {"tmp_files": 0, "orphan_files": 0, "rows_without_file": 0,
              "rows_kept_files_missing": 0}
    known = _image_rows(gallery)
    _remove_stray_files(gallery, set(known), time.time() - min_age_s, report)
    missing = [uid for uid, (f, _) in known.items() if not f or not (gallery.data_dir / f).exists()]
    if missing and (not gallery.outputs_dir.is_dir() or 2 * len(missing) > len(known)):
        log.warning("%d of %d gallery files are missing from %s: kept their rows (is the folder "
                    "mounted?)", len(missing), len(known), gallery.outputs_dir)
        report["rows_kept_files_missing"] = len(missing)
        missing = []
    for uid in missing:  # its thumbnail goes with it
        thumb = known[uid][1]
        if thumb:
            (gallery.data_dir / thumb).unlink(missing_ok=True)
    if missing:
        with gallery.db.transaction() as session:
            for chunk in range(0, len(missing), 500):
                session.execute(delete(Item).where(Item.uid.in_(missing[chunk:chunk + 500])))
        report["rows_without_file"] = len(missing)
    _rebuild_thumbnails(gallery, known, set(missing))
    return report


def sweep_shared(gallery: "GalleryStore", min_age_s: float = SHARED_MIN_AGE_S) -> dict[str, int]:
    report = {"tmp_files": 0, "orphan_files": 0, "rows_without_file": 0}
    known = _image_rows(gallery)
    _remove_stray_files(gallery, set(known), time.time() - min_age_s, report)
    report["rows_without_file"] = sum(
        1 for f, _ in known.values() if not f or not (gallery.data_dir / f).exists())
    return report


def _image_rows(gallery: "GalleryStore") -> dict[str, tuple[str | None, str | None]]:
    with gallery.db.session() as session:
        return {uid: (f, t) for uid, f, t in session.execute(
            select(Item.uid, Item.file_path, Item.thumb_path).where(Item.kind == "image"))}


def _remove_stray_files(gallery: "GalleryStore", uids: set[str], cutoff: float,
                        report: dict[str, int]) -> None:
    """tmp files and files without a row, older than `cutoff` (time.time() seconds)."""
    for folder in (gallery.outputs_dir, gallery.thumbnails_dir):
        if not folder.exists():
            continue
        for path in folder.rglob("*"):
            try:
                if not path.is_file() or path.stat().st_mtime > cutoff:
                    continue  # possibly a write in progress
            except FileNotFoundError:  # renamed or removed by its writer meanwhile
                continue
            if path.name.endswith(".tmp"):
                path.unlink(missing_ok=True)
                report["tmp_files"] += 1
            elif path.stem not in uids:
                path.unlink(missing_ok=True)
                report["orphan_files"] += 1


def _rebuild_thumbnails(gallery: "GalleryStore", known: dict, removed: set[str]) -> None:
    from studio.gallery.store import _thumbnail

    for uid, (file, thumb) in known.items():
        if uid in removed or not (thumb and file):
            continue
        if (gallery.data_dir / thumb).exists() or not (gallery.data_dir / file).exists():
            continue
        try:
            with Image.open(gallery.data_dir / file) as image:
                (gallery.data_dir / thumb).parent.mkdir(parents=True, exist_ok=True)
                (gallery.data_dir / thumb).write_bytes(_thumbnail(image))
        except (OSError, ValueError) as error:  # a damaged file must not stop the start
            log.warning("no thumbnail for %s: %s", file, error)
