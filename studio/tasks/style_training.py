"""Task "train_style": train a new CycleGAN style from the user's images, as a queue job.

Params (JSON; images enter as gallery items, uploads are saved to the gallery by the caller):
  name                  the style's name; its id becomes "user:<slug>"
  style_image_ids       gallery item ids of the paintings/photos whose look to learn (1..64)
  content_image_ids     gallery item ids of ordinary photos to translate from (1..64)
  size                  training crop side, 32..256 px (default 128)
  iterations            1..20000 (default 600)
  width, blocks         generator width 8..64 (default 32) and residual blocks 1..9 (default 3):
                        bigger learns more, and each iteration takes longer

It runs on the "training" lane (a worker of its own, studio/jobs/queue.py) for minutes on one
CPU thread, without the device lock, so generation goes on beside it. The checkpoint lives in
<data_dir>/styles/.runs/<slug>/: cancel, a shutdown or a crash keeps it, and the job (requeued
at the next start, or started again with the same name) resumes from it. The finished style is
written to <data_dir>/styles/<slug>/ with the id of the job that made it, so a job that is run
again after a crash right at the end finds its style done instead of training it anew.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from engines.base import CancelToken, ParamError, Progress, ProgressCallback, check_int
from studio.tasks import TaskResult, TaskSpec, register

MAX_IMAGES = 64
MADE_BY = ".made-by-job"  # in a finished style folder: the id of the job that trained it


def slugify(name: str) -> str:
    if not isinstance(name, str):
        raise ParamError("name", f"`name` must be text, got {name!r}")
    slug = re.sub(r"[^a-z0-9]+", "-", name.strip().lower()).strip("-")[:40]
    if not slug:
        raise ParamError("name", f"`name` must contain letters or digits, got {name!r}")
    return slug


def _ids(params: dict, field: str) -> list[int]:
    ids = params.get(field)
    if not isinstance(ids, list) or not 1 <= len(ids) <= MAX_IMAGES or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise ParamError(field, f"`{field}` must be a list of 1 to {MAX_IMAGES} gallery item ids, "
                                f"got {ids!r}")
    return ids


def validate(ctx, params: dict) -> None:
    unknown = set(params) - {"name", "style_image_ids", "content_image_ids", "size", "iterations",
                             "width", "blocks"}
    if unknown:
        raise ParamError(sorted(unknown)[0], f"unknown parameter(s) for train_style: "
                                             f"{', '.join(sorted(unknown))}")
    slugify(params.get("name"))
    for field in ("style_image_ids", "content_image_ids"):
        for item_id in _ids(params, field):
            try:
                item = ctx.gallery.get(item_id)
            except LookupError:
                raise ParamError(field, f"`{field}`: no gallery item #{item_id}") from None
            if item.kind != "image":
                raise ParamError(field, f"`{field}`: gallery item #{item_id} is not an image")
    check_int("size", params.get("size", 128), 32, 256)
    if params.get("size", 128) % 4:
        raise ParamError("size", f"`size` must be a multiple of 4, got {params['size']}")
    check_int("iterations", params.get("iterations", 600), 1, 20_000)
    check_int("width", params.get("width", 32), 8, 64)
    check_int("blocks", params.get("blocks", 3), 1, 9)


def run(ctx, params: dict, on_progress: ProgressCallback, cancel: CancelToken) -> TaskResult:
    from engines.training import cyclegan
    from engines.training.cyclegan import TrainConfig
    from engines.training.style_export import export_style

    # 1. Already done by this job (a crash after the export, before the job's row)?
    name, slug = params["name"].strip(), slugify(params["name"])
    styles_dir = Path(ctx.config.styles_dir)
    style_dir, run_dir = styles_dir / slug, styles_dir / ".runs" / slug
    if ctx.job_id is not None and _made_by(style_dir) == ctx.job_id:
        return _result(slug, json.loads((style_dir / "style.json").read_text()))

    # 2. Images from the gallery, settings.
    open_rgb = lambda i: ctx.gallery.open_image(i).convert("RGB")  # noqa: E731
    styles = [open_rgb(i) for i in params["style_image_ids"]]
    contents = [open_rgb(i) for i in params["content_image_ids"]]
    iterations = params.get("iterations", 600)
    width = params.get("width", 32)
    config = TrainConfig(size=params.get("size", 128), iterations=iterations, threads=1,
                         ngf=width, ndf=width, n_blocks=params.get("blocks", 3),
                         sample_every=max(10, min(100, iterations // 20)), checkpoint_every=50)
    config.check()

    # 3. Train (resuming from the checkpoint when there is one); Cancelled keeps the checkpoint.
    model, state = cyclegan.train(config, styles, contents, run_dir, on_progress=on_progress,
                                  cancel=cancel)

    # 4. Export the style, mark it as this job's, drop the checkpoint, reload the engine.
    folder = export_style(
        model, state, style_dir, name,
        f"Trained here from {len(styles)} style and {len(contents)} content images",
        styles, contents)
    samples = sorted((run_dir / "samples").glob("*.png"))
    if samples:
        shutil.copyfile(samples[-1], folder / "preview.png")
    if ctx.job_id is not None:
        (folder / MADE_BY).write_text(str(ctx.job_id))
    shutil.rmtree(run_dir, ignore_errors=True)  # the 40 MB checkpoint is done with
    ctx.engines.unload("style")  # a style retrained under the same name reloads
    on_progress(Progress(state.iteration, iterations, f"saved as style user:{slug}"))
    return _result(slug, json.loads((folder / "style.json").read_text()))


def training_curve(ctx, name: str) -> dict[str, Any]:
    """The losses logged so far by a running or paused training of `name` (for a plot)."""
    path = Path(ctx.config.styles_dir) / ".runs" / slugify(name) / "losses.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _made_by(style_dir: Path) -> int | None:
    try:
        return int((style_dir / MADE_BY).read_text())
    except (OSError, ValueError):
        return None


def _result(slug: str, meta: dict) -> TaskResult:
    training = meta.get("training", {})
    return TaskResult(text=f"saved as style user:{slug}", info={
        "style_id": f"user:{slug}", "iterations": training.get("iterations_done"),
        "seconds": training.get("seconds"), "final_losses": meta.get("final_losses", {})})


register(TaskSpec("train_style", "style", validate, run,
                  "Train a new GAN style from your images (resumable)", lane="training"))
