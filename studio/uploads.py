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
* Boundary: `ImageIntake` takes every image a request gives inline (a PIL image from a tab,
  base64 or a data URL from an API) in once: decoded once, checked by the task, then stored, so
  the job row holds ids only. The results' parent (an init image; style's photo) becomes a
  gallery upload item (`init_image_id`, `image_id`; upscale's `images` -> `image_ids`); a mask,
  a style painting, ControlNet unit images and LoRA training images (`images`, a list of ids)
  come here (they would clutter the gallery). JobQueue.check runs it for every job (tabs,
  Gradio endpoints, POST /api/queue); the A1111 API runs it once per request.
* Sweep: a file stays while a pending, running or paused job refers to it (a LoRA training
  job recovered after a restart is pending again: its images stay), or a job that
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
PARENT, UPLOAD = "parent", "upload"  # a gallery upload item `<field>_id` / an id of this store
# How each image field is stored when it arrives inline (add yours); ControlNet units' `image`
# is an UPLOAD too. A task's own fields: TASK_FIELDS; its PARENTs are UPLOADs with save_input
# false (the input must not appear in the gallery).
IMAGE_FIELDS = {"init_image": PARENT, "mask": UPLOAD, "style_image": UPLOAD}
TASK_FIELDS = {"style": {"image": PARENT},  # the photo
               "upscale": {"image": PARENT, "images": PARENT},  # the results' parents
               "train_lora": {"images": UPLOAD}}  # training images stay out of the gallery
LISTS = {"images": "image_ids"}  # fields that hold a list of images -> their PARENT key
# How a gallery upload item is captioned ("uploaded <name>"), by (task, field) or field.
NAMES = {"init_image": "init image", ("style", "image"): "photo", "images": "image"}
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


class ImageIntake:
    """The images of one request (a job, a batch of jobs, an A1111 call), taken in once:

        intake = ImageIntake(ctx, "A1111 API")
        params = intake.decode(task, params)    # base64 -> PIL once (ParamError naming the field)
        validate_task(ctx, task, params)        # the task checks the decoded images
        row = intake.store(task, params)        # ids only: what the job row keeps
        intake.forget()                         # the request failed after all: no item stays

    `store` decodes what `decode` was not asked to. An image given to several jobs of the request
    (a batch, A1111's n_iter) is decoded and stored once. `forget` deletes the gallery items
    stored; files of this store are not deleted (another job may share one, the same image being
    the same file): a sweep removes them once no job refers to them."""

    def __init__(self, ctx, source: str = "") -> None:
        self.ctx, self.source = ctx, source
        self.item_ids: list[int] = []  # gallery upload items stored by this intake
        self._decoded: dict[str, Image.Image] = {}  # inline string -> its image
        self._stored: dict[tuple[int, str], tuple[Image.Image, Any]] = {}  # (id(image), key) -> (image, id)

    def decode(self, task: str, params: dict) -> dict:
        return self._each(task, params, lambda field, kind, image, name: (field, image))

    def store(self, task: str, params: dict) -> dict:
        return self._each(task, params, self._keep)

    def forget(self) -> None:
        for item_id in self.item_ids:
            try:
                self.ctx.gallery.delete(item_id)
            except LookupError:
                pass
        self.item_ids, self._stored = [], {}

    def _each(self, task: str, params: dict, keep) -> dict:
        """`params` with each inline image replaced by keep(field, kind, image) -> (key, value)."""
        if not isinstance(params, dict):
            return params  # refused by the caller's checks
        out = dict(params)
        for field, kind in _image_fields(task, params).items():
            id_key = LISTS.get(field, f"{field}_id")
            if params.get(id_key) is not None and (kind == PARENT or field not in LISTS):
                raise ParamError(field, f"give `{id_key}` or `{field}`, not both")
            name = NAMES.get((task, field)) or NAMES.get(field, field)
            if field in LISTS:
                key, value = self._list(field, kind, params[field], name, keep)
            else:
                key, value = keep(field, kind, self._image(params[field], field), name)
            del out[field]
            out[key] = value
        units = params.get("controlnet")
        if isinstance(units, (list, tuple)) and any(_inline_unit(u) for u in units):
            out["controlnet"] = [self._unit(u, index, keep) if _inline_unit(u) else u
                                 for index, u in enumerate(units)]
        return out

    def _list(self, field: str, kind: str, values: list, name: str, keep) -> tuple[str, list]:
        """A list of images: each element kept (an UPLOAD's stored ids stay as they are)."""
        key, out = field, []
        for index, value in enumerate(values):
            if kind == UPLOAD and is_upload_ref(value):
                out.append(value)
                continue
            try:
                key, kept = keep(field, kind, self._image(value, f"{field}[{index}]"), name)
            except ValueError as error:
                raise ParamError(field, str(error)) from None
            out.append(kept)
        return key, out  # decode keeps `field`; store gives a PARENT list its ids key

    def _unit(self, unit: dict, index: int, keep) -> dict:
        try:
            key, value = keep("image", UPLOAD, self._image(unit["image"], "image"), "image")
        except ValueError as error:
            raise ParamError("controlnet", f"ControlNet unit {index}: {error}") from None
        return {**unit, key: value}

    def _image(self, value: Any, field: str) -> Image.Image:
        if isinstance(value, Image.Image):
            return value
        if isinstance(value, str) and value in self._decoded:
            return self._decoded[value]
        if is_upload_ref(value):  # in a list of PARENTs: it becomes a gallery item too
            return open_upload(self.ctx, value, field)
        from studio.tasks.image import decode_image  # base64 and data URLs, checked as anywhere

        image = decode_image(value, field)
        if isinstance(value, str):
            self._decoded[value] = image
        return image

    def _keep(self, field: str, kind: str, image: Image.Image, name: str) -> tuple[str, Any]:
        key = LISTS.get(field, f"{field}_id") if kind == PARENT else field
        done = self._stored.get((id(image), key))
        if done is not None:
            return key, done[1]
        if kind == PARENT:
            caption = f"uploaded {name}" + (f" ({self.source})" if self.source else "")
            value = self.ctx.gallery.add_image(image, task="upload", engine="", prompt=caption,
                                               params={"source": self.source or "queue"}).id
            self.item_ids.append(value)
        else:
            value = store_upload(self.ctx, image, field)
        self._stored[(id(image), key)] = (image, value)  # the image kept: its id() stays unique
        return key, value


def _image_fields(task: str, params: dict) -> dict[str, str]:
    """{field: PARENT or UPLOAD} of the images `params` gives inline."""
    own = TASK_FIELDS.get(task, {})
    fields = dict(IMAGE_FIELDS, **own)
    if params.get("save_input") is False:  # the input must not appear in the gallery
        fields.update({f: UPLOAD for f, kind in own.items() if kind == PARENT})
    return {f: kind for f, kind in fields.items()
            if (_inline_list(params.get(f)) if f in LISTS else _inline(params.get(f)))}


def _inline(value: Any) -> bool:
    return value is not None and not is_upload_ref(value)


def _inline_list(value: Any) -> bool:
    """A list with an image that is not stored yet (anything else: the task refuses it)."""
    return isinstance(value, list) and any(_inline(v) for v in value)


def _inline_unit(unit: Any) -> bool:
    return isinstance(unit, dict) and unit.get("image_id") is None and _inline(unit.get("image"))


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
