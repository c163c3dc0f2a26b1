"""Uploaded images that a job needs but the gallery should not show (an inpaint mask; ControlNet
control images): stored once, outside the gallery, and referred to from job params by a short id.

    ref = store_upload(ctx, mask, "mask")        # -> "upload:<sha256 of the PNG>"
    params["mask"] = ref                         # the job row holds 71 characters, not base64
    image = open_upload(ctx, ref, "mask")        # in the task, once, when the job runs

* Files: `<storage>/uploads/<sha256>.png` (the gallery's storage root, so that Ray actors on
  shared storage read them too). The image is decoded and checked once (formats, pixel budget:
  studio/images.py), re-encoded as PNG and named by the hash of that PNG: the same upload twice
  is one file, and an id names exactly one file (`upload:` + 64 hex digits, nothing else: no
  path can be smuggled in).
* Boundary: `store_inline_images(ctx, params)` replaces every image in UPLOAD_FIELDS given
  inline (a PIL image from a tab, base64 or a data URL from an API) by its id; the tabs
  (studio/ui/widgets.py), the A1111 API and the queue (JobQueue.check) call it after the params
  are validated.
* Sweep: a file stays while a pending, running or paused job refers to it, or a job that
  finished less than KEEP_FINISHED_S ago (a rerun from the Queue tab), and is never removed
  younger than `min_age_s` (a store whose job is being submitted). `sweep_uploads` runs at
  start-up and, at most once per SWEEP_EVERY_S, when something is stored.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from PIL import Image

from engines.base import ParamError

PREFIX = "upload:"
UPLOAD_FIELDS = ("mask",)  # image params kept here rather than in the gallery (add yours)
KEEP_FINISHED_S = 24 * 3600.0
MIN_AGE_S = 600.0
SWEEP_EVERY_S = 3600.0
_REF = re.compile(r"upload:([0-9a-f]{64})")
_last_sweep = {"at": time.monotonic()}  # the start-up sweep counts as the first
_sweep_lock = threading.Lock()


def uploads_dir(ctx) -> Path:
    return Path(ctx.gallery.data_dir) / "uploads"


def is_upload_ref(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


def store_upload(ctx, image: Image.Image, field: str = "image") -> str:
    """Store a decoded image; returns its id. ParamError(field) when it is over the pixel budget."""
    from studio.images import DEFAULT_MAX_PIXELS

    if image.width * image.height > DEFAULT_MAX_PIXELS:
        raise ParamError(field, f"`{field}` is too large: {image.width}x{image.height}; the "
                         f"limit is {DEFAULT_MAX_PIXELS:,} pixels")
    if image.mode not in ("1", "L", "LA", "RGB", "RGBA", "P", "I", "I;16"):
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")  # CMYK, YCbCr...
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    data = buffer.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    path = uploads_dir(ctx) / f"{digest}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        os.utime(path)  # young again: a sweep running now leaves it alone
    else:
        tmp = path.with_name(f"{digest}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)  # readers see the whole file or none
    _maybe_sweep(ctx)
    return PREFIX + digest


def open_upload(ctx, ref: Any, field: str = "image") -> Image.Image:
    """The stored image of `ref`; ParamError(field) for a malformed, forged or swept id."""
    match = _REF.fullmatch(ref) if isinstance(ref, str) else None
    if match is None:
        raise ParamError(field, f"`{field}` must be an upload id ({PREFIX} and 64 hex digits), "
                         f"got {str(ref)[:80]!r}")
    path = uploads_dir(ctx) / f"{match.group(1)}.png"
    if not path.is_file():
        raise ParamError(field, f"`{field}`: no stored upload {ref} (uploads are kept while a "
                         f"job refers to them; upload the image again)")
    try:  # our own PNG, checked when stored (a large photo may exceed the 64 MB upload cap)
        image = Image.open(path, formats=("PNG",))
        image.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise ParamError(field, f"`{field}`: the stored upload {ref} is damaged ({error}); "
                         f"upload the image again") from None
    return image


def store_inline_images(ctx, params: dict, fields: tuple[str, ...] = UPLOAD_FIELDS) -> dict:
    """`params` with each image of `fields` given inline (PIL, base64, data URL) replaced by its
    upload id; call after validation, so a refused request stores nothing."""
    inline = {f: params[f] for f in fields
              if params.get(f) is not None and not is_upload_ref(params[f])}
    if not inline:
        return params
    from studio.tasks.image import decode_image  # base64 and data URLs, checked as on any path

    stored = dict(params)
    for field, value in inline.items():
        stored[field] = store_upload(ctx, decode_image(value, field), field)
    return stored


# ------------------------------------------------------------------ sweep
def referenced(ctx, keep_finished_s: float = KEEP_FINISHED_S) -> set[str]:
    """The digests that live jobs, or jobs finished within `keep_finished_s`, refer to."""
    from sqlalchemy import or_, select

    from studio.jobs.models import FINISHED, Job
    from studio.jobs.store import now

    recent = now() - timedelta(seconds=keep_finished_s)
    with ctx.db.session() as session:
        rows = session.execute(select(Job.params_json).where(
            Job.params_json.like(f"%{PREFIX}%"),
            or_(Job.status.not_in(FINISHED), Job.finished_at >= recent))).scalars()
        return {digest for text in rows for digest in _REF.findall(text)}


def sweep_uploads(ctx, keep_finished_s: float = KEEP_FINISHED_S,
                  min_age_s: float = MIN_AGE_S) -> int:
    """Remove the uploads no job needs any more (and stale tmp files); returns how many."""
    folder = uploads_dir(ctx)
    if not folder.is_dir():
        return 0
    with _sweep_lock:
        keep = referenced(ctx, keep_finished_s)
        cutoff, removed = time.time() - min_age_s, 0
        for path in folder.iterdir():
            try:
                if path.stat().st_mtime > cutoff:
                    continue  # being stored, or its job is being submitted
            except FileNotFoundError:
                continue
            if path.suffix == ".png" and path.stem in keep:
                continue
            path.unlink(missing_ok=True)
            removed += 1
        return removed


def _maybe_sweep(ctx) -> None:
    if time.monotonic() - _last_sweep["at"] < SWEEP_EVERY_S:
        return
    _last_sweep["at"] = time.monotonic()
    try:
        sweep_uploads(ctx)
    except Exception:  # a sweep is housekeeping: it must never fail an upload
        import logging

        logging.getLogger("genstudio.uploads").exception("upload sweep failed")
