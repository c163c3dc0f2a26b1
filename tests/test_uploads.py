"""The uploads store (studio/uploads.py): an inpaint mask enters once, as a hash-named PNG outside
the gallery, and the job row holds its short id, not base64 — from the Inpaint tab, the queue
API and the A1111 API; the task opens it when it runs; the file is swept once no live or recent
job refers to it; a forged, unknown or path-like id is a ParamError naming the field."""
from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image
from sqlalchemy import select
from wiring import api_client

from engines.base import ParamError
from studio.gallery.store import GalleryQuery
from studio.jobs.models import Job
from studio.uploads import open_upload, store_upload, sweep_uploads, uploads_dir

SIDE = 64


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def square_mask() -> Image.Image:
    mask = Image.new("L", (SIDE, SIDE), 0)
    mask.paste(255, (16, 16, 48, 48))
    return mask


def job_params(ctx) -> list[dict]:
    with ctx.db.session() as session:
        return [json.loads(p) for p in session.execute(select(Job.params_json).order_by(Job.id)).scalars()]


def settings(prompt="a yellow star"):
    """The Inpaint tab's control values after the editor (see studio/ui/inpaint.SETTINGS), then
    its ControlNet units, disabled (studio/ui/controlnet_panel.py)."""
    from studio.ui import controlnet_panel
    from studio.ui.widgets import DEFAULT_MODEL

    units = ([False] + [None] * (len(controlnet_panel.FIELDS) - 1)) * controlnet_panel.UNITS
    return [None, prompt, "", 2, 7.0, "Euler", 5, 0.75, 2, "fill", False, 32, 1, DEFAULT_MODEL,
            ["right"], 32, *units]


def test_inpaint_tab_job_row_holds_a_short_id_and_the_file_is_swept_after(studio):
    from studio.ui import inpaint

    painted = Image.new("RGBA", (SIDE, SIDE), (0, 0, 0, 0))
    painted.paste((255, 255, 255, 255), (16, 16, 48, 48))
    editor = {"background": Image.new("RGB", (SIDE, SIDE), (40, 90, 200)), "layers": [painted]}
    updates = list(inpaint.generate(studio, "inpaint", editor, *settings()))
    assert updates[-1][4], updates[-1]  # the result's item ids
    (params,) = job_params(studio)
    ref = params["mask"]
    assert ref.startswith("upload:") and len(ref) == 71
    assert len(json.dumps(params)) < 600 and "iVBOR" not in json.dumps(params)  # no PNG base64
    stored = uploads_dir(studio) / f"{ref[7:]}.png"
    assert stored.is_file() and open_upload(studio, ref, "mask").size == (SIDE, SIDE)
    # Not in the gallery: the result and its parent (the uploaded init image) only.
    assert sorted(i.task for i in studio.gallery.query(GalleryQuery()).items) == ["inpaint", "upload"]
    # Kept while a recent finished job refers to it (a rerun from the Queue tab), then swept.
    assert sweep_uploads(studio, min_age_s=0) == 0 and stored.is_file()
    assert sweep_uploads(studio, keep_finished_s=0, min_age_s=0) == 1 and not stored.exists()
    with pytest.raises(ParamError, match="no stored upload") as refused:
        studio.runner.submit("inpaint", params)
    assert refused.value.field == "mask"


def test_a_pending_job_keeps_its_upload_and_the_same_mask_is_one_file(studio):
    studio.queue.pause()
    image = Image.new("RGB", (SIDE, SIDE), (200, 30, 30))
    init_id = studio.gallery.add_image(image, task="upload", engine="").id
    first = studio.runner.submit("inpaint", {"prompt": "x", "steps": 2, "init_image_id": init_id,
                                             "mask": b64(square_mask())})
    second = studio.runner.submit("inpaint", {"prompt": "y", "steps": 2, "init_image_id": init_id,
                                              "mask": "data:image/png;base64," + b64(square_mask())})
    refs = [p["mask"] for p in job_params(studio)]
    assert refs[0] == refs[1] and refs[0].startswith("upload:")
    assert len(list(uploads_dir(studio).iterdir())) == 1
    assert sweep_uploads(studio, keep_finished_s=0, min_age_s=0) == 0  # both jobs wait
    first.cancel(), second.cancel()
    assert sweep_uploads(studio, keep_finished_s=0, min_age_s=0) == 1


def test_a1111_inpaint_mask_is_an_upload_not_a_gallery_item(studio):
    from studio.api import a1111

    with api_client(studio, a1111) as client:
        answer = client.post("/sdapi/v1/img2img", json={
            "prompt": "a star", "steps": 2, "seed": 3, "denoising_strength": 0.75,
            "init_images": [b64(Image.new("RGB", (SIDE, SIDE), (30, 160, 60)))],
            "mask": b64(square_mask()), "inpainting_fill": 1})
    assert answer.status_code == 200, answer.text
    (params,) = job_params(studio)
    assert params["mask"].startswith("upload:") and "init_image_id" in params
    uploads = studio.gallery.query(GalleryQuery(task="upload")).items
    assert [i.prompt for i in uploads] == ["uploaded init image (A1111 API)"]  # the mask is not there


def test_forged_unknown_and_path_like_ids_are_refused_naming_the_field(ctx, tmp_path):
    ref = store_upload(ctx, square_mask(), "mask")
    assert open_upload(ctx, ref, "mask").getextrema() == (0, 255)
    secret = ctx.gallery.data_dir / "secret.png"
    square_mask().save(secret)
    for bad, says in [("upload:" + "0" * 64, "no stored upload"),
                      ("upload:../secret", "must be an upload id"),
                      ("upload:" + ref[7:].upper(), "must be an upload id"),
                      ("upload:" + ref[7:] + "/../../secret", "must be an upload id"),
                      ("upload:" + ref[7:] + ".png", "must be an upload id"),
                      (ref + "\n", "must be an upload id"), (12, "must be an upload id")]:
        with pytest.raises(ParamError, match=says) as refused:
            open_upload(ctx, bad, "mask")
        assert refused.value.field == "mask"
    from studio.tasks import validate_task

    init_id = ctx.gallery.add_image(Image.new("RGB", (SIDE, SIDE)), task="upload", engine="").id
    with pytest.raises(ParamError, match="must be an upload id") as refused:
        validate_task(ctx, "inpaint", {"prompt": "x", "init_image_id": init_id,
                                       "mask": "upload:../../studio.sqlite3"})
    assert refused.value.field == "mask"


def test_an_upload_over_the_pixel_budget_is_refused(ctx, monkeypatch):
    import studio.images

    monkeypatch.setattr(studio.images, "DEFAULT_MAX_PIXELS", 32 * 32)
    with pytest.raises(ParamError, match="too large") as refused:
        store_upload(ctx, square_mask(), "mask")
    assert refused.value.field == "mask" and not uploads_dir(ctx).exists()


def test_a_damaged_stored_upload_is_a_clear_error(ctx):
    ref = store_upload(ctx, square_mask(), "mask")
    (uploads_dir(ctx) / f"{ref[7:]}.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(ParamError, match="damaged") as refused:
        open_upload(ctx, ref, "mask")
    assert refused.value.field == "mask"
