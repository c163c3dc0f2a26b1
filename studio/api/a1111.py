"""AUTOMATIC1111-compatible HTTP API (/sdapi/v1/...), so A1111 clients (editor plugins, bots,
scripts) use GenStudio's engines, gallery and queue unchanged. Same server and credentials as
the UI (HTTP Basic, as A1111's --api-auth).

    POST /sdapi/v1/txt2img, /sdapi/v1/img2img   -> {images: [base64 PNG], parameters, info}
    GET  /sdapi/v1/sd-models, samplers, schedulers, options     POST /sdapi/v1/options
    GET  /sdapi/v1/progress    POST /sdapi/v1/interrupt, /sdapi/v1/skip, /sdapi/v1/png-info

Design:
- A request becomes task params (A1111 names -> the image tasks' names;
  studio/api/a1111_requests.py) and goes through `studio.tasks` like a UI generation: txt2img, img2img, or inpaint when a mask is given. So
  every image lands in the gallery with its parameters and A1111 infotext, and the same params
  give the same pixels as the UI.
- Every run is a job on the studio's one runner (studio/api/a1111_runs.py): queued at API
  priority, visible in the Queue tab, on the worker that owns the device; the request waits on
  the event loop and cancels its jobs when the client disconnects. Input images are decoded
  once, here, and stored once (studio/uploads.py); the jobs refer to them by id.
- Errors: a wrong type is pydantic's 422 naming the field; a value the task refuses is a 422
  in the same shape whose `loc` names the A1111 field (`cfg_scale`, not `guidance_scale`); an
  engine failure while generating is a 500 with the message.
- The returned PNGs are the gallery files themselves, so they carry the `parameters` chunk
  and /png-info on them gives the generation parameters back.
"""
from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

from fastapi import APIRouter, Body, Depends, HTTPException, Request

from studio.api.a1111_controlnet import detected_maps
from studio.api.a1111_models import (GenerationResponse, Img2ImgRequest, PNGInfoRequest,
                                     PNGInfoResponse, ProgressResponse, ProgressState, Sampler,
                                     Scheduler, SDModel, Txt2ImgRequest)
from studio.api.a1111_names import SCHEDULE_TYPES, a1111_field, schedulers_table
from studio.api.a1111_options import Checkpoints, Options
from studio.api.a1111_requests import _decode, _encode_png, build_run, unprocessable
from studio.api.a1111_runs import QueueUnavailable, Run, RunFailed, Runs
from studio.api.auth import require_auth



# ------------------------------------------------------------------ router
def router(ctx) -> APIRouter:
    api = APIRouter(prefix="/sdapi/v1", tags=["A1111-compatible"],
                    dependencies=[Depends(require_auth(ctx))])
    checkpoints = Checkpoints(ctx)
    options = Options(ctx, checkpoints)
    runs = Runs(ctx)
    _generation_routes(api, ctx, checkpoints, options, runs)
    _progress_routes(api, runs)
    _model_routes(api, checkpoints, options)
    return api


def _generation_routes(api: APIRouter, ctx, checkpoints: Checkpoints, options: Options,
                       runs: Runs) -> None:
    def model_for(request: Txt2ImgRequest) -> str | None:
        override = (request.override_settings or {}).get("sd_model_checkpoint")
        if override is None:
            model_id = options.model_id
        else:
            try:
                model_id = options.resolve(override).model_id
            except ValueError as error:
                raise unprocessable("override_settings", str(error), override) from None
        return None if model_id == checkpoints.default_id() else model_id

    def refiner_for(request: Txt2ImgRequest) -> str | None:
        if request.refiner_checkpoint in (None, "", "None"):  # A1111 clients send "None" for off
            return None
        found = checkpoints.find(request.refiner_checkpoint)
        if found is None:
            raise unprocessable("refiner_checkpoint", "no such checkpoint; see /sdapi/v1/sd-models",
                                request.refiner_checkpoint)
        return found.model_id

    async def generate(request: Txt2ImgRequest, kind: str, http: Request) -> GenerationResponse:
        model_id = model_for(request)
        settings = {**options.get(), **(request.override_settings or {})}
        run = await asyncio.to_thread(build_run, ctx, request, kind, model_id,
                                      settings.get("sd_vae"), settings,
                                      refiner_for(request))
        try:
            outcomes = await runs.execute(run, http.is_disconnected)
        except ValueError as error:  # refused at enqueue (the queue is full...)
            _forget_uploads(ctx, run)
            raise unprocessable(a1111_field(getattr(error, "field", None)), str(error)) from None
        except QueueUnavailable as error:
            _forget_uploads(ctx, run)
            raise HTTPException(503, detail=str(error), headers={"Retry-After": "30"}) from None
        except TimeoutError as error:
            raise HTTPException(504, detail=f"{error}; its jobs were canceled") from None
        except RunFailed as error:
            if error.field:
                raise unprocessable(a1111_field(error.field), str(error)) from None
            raise HTTPException(500, detail=str(error)) from None
        return await asyncio.to_thread(_response, ctx, checkpoints, request, run, outcomes, model_id,
                                       settings)

    @api.post("/txt2img", response_model=GenerationResponse)
    async def txt2img(request: Txt2ImgRequest, http: Request) -> GenerationResponse:
        """Text to image: queued at API priority on the studio's one runner."""
        return await generate(request, "txt2img", http)

    @api.post("/img2img", response_model=GenerationResponse)
    async def img2img(request: Img2ImgRequest, http: Request) -> GenerationResponse:
        """Image to image; with `mask` (white = repaint) it inpaints."""
        return await generate(request, "img2img", http)

    @api.post("/png-info", response_model=PNGInfoResponse)
    def png_info(request: PNGInfoRequest) -> PNGInfoResponse:
        from studio.gallery.pnginfo import PARAMETERS_CHUNK, read_png_metadata

        image = _decode(request.image, "image")
        metadata = read_png_metadata(image)
        chunks = getattr(image, "text", None) or image.info
        items = {k: v for k, v in chunks.items() if k != PARAMETERS_CHUNK and isinstance(v, str)}
        return PNGInfoResponse(info=metadata["parameters"] or "", items=items,
                               parameters=metadata["parsed"])


def _progress_routes(api: APIRouter, runs: Runs) -> None:
    @api.get("/progress", response_model=ProgressResponse)
    def progress(skip_current_image: bool = False) -> ProgressResponse:
        """The job running now, whoever started it (a tab, the queue or this API)."""
        return _progress(runs, skip_current_image)

    @api.post("/interrupt")
    def interrupt() -> dict:
        """Stop the job running now (a whole A1111 request with all its runs)."""
        return {"interrupted": runs.interrupt()}

    @api.post("/skip")
    def skip() -> dict:
        """Stop the job running now; an A1111 request goes on with its next run."""
        return {"skipped": runs.skip()}


def _model_routes(api: APIRouter, checkpoints: Checkpoints, options: Options) -> None:
    @api.get("/sd-models", response_model=list[SDModel])
    def sd_models() -> list[SDModel]:
        return [SDModel(title=c.title, model_name=c.model_name, hash=c.hash, sha256=None,
                        filename=c.filename) for c in checkpoints.list()]

    @api.get("/samplers", response_model=list[Sampler])
    def samplers() -> list[Sampler]:
        names: dict[str, list[str]] = {}
        for name, sampler, _ in schedulers_table().values():
            names.setdefault(sampler, [])
            if name != sampler:
                names[sampler].append(name)
        return [Sampler(name=n, aliases=a, options={}) for n, a in names.items()]

    @api.get("/schedulers", response_model=list[Scheduler])
    def schedulers() -> list[Scheduler]:
        return [Scheduler(name=name, label=label) for name, label in SCHEDULE_TYPES.items()]

    @api.get("/options")
    def get_options() -> dict[str, Any]:
        return options.get()

    @api.post("/options")
    def set_options(changes: dict[str, Any] = Body(..., examples=[{"sd_model_checkpoint": "genstudio-tiny-sd"}])) -> dict:
        """Change options; `sd_model_checkpoint` (a title, name or file from /sd-models) picks
        the checkpoint later requests use (loaded on first use)."""
        try:
            options.set(changes)
        except ValueError as error:
            field = getattr(error, "field", None) or "sd_model_checkpoint"
            raise unprocessable(field, str(error), changes.get(field)) from None
        return {"sd_model_checkpoint": options.get()["sd_model_checkpoint"]}

    @api.post("/refresh-checkpoints")
    def refresh_checkpoints() -> None:
        """The models folders are read on every /sd-models call; nothing to refresh."""

    # What clients ask for when they connect; GenStudio has none of these, so empty answers.
    # (LoRAs, embeddings, VAEs and upscalers have routers of their own: a1111_lora, a1111_extras.)
    for path, value in (("hypernetworks", []), ("face-restorers", []), ("prompt-styles", []),
                        ("scripts", {"txt2img": [], "img2img": []}), ("cmd-flags", {})):
        api.add_api_route(f"/{path}", _constant(value), methods=["GET"],
                          summary=f"{path} (none in GenStudio)", name=f"a1111_{path}")


def _progress(runs: Runs, skip_current_image: bool) -> ProgressResponse:
    current = runs.current()
    if current is None:
        return ProgressResponse(progress=0, eta_relative=0, state=ProgressState())
    job_id, live, run = current
    job_no, job_count = (run.job_ids.index(job_id), run.job_count) if run else (0, 1)
    fraction = min(1.0, (job_no + live.fraction) / job_count)
    preview = None
    if live.preview is not None and not skip_current_image:
        preview = _encode_png(live.preview)
    state = ProgressState(
        skipped=bool(run and run.skips), interrupted=bool(run and run.interrupted),
        job=f"{run.kind if run else 'job'} {job_no + 1}", job_count=job_count,
        job_timestamp=run.timestamp if run else "", job_no=job_no,
        sampling_step=live.step, sampling_steps=live.total)
    return ProgressResponse(progress=round(fraction, 4), eta_relative=round(live.eta_s or 0.0, 3),
                            state=state, current_image=preview,
                            textinfo=f"job #{job_id}: step {live.step}/{live.total}")


def _forget_uploads(ctx, run: Run) -> None:
    """A request refused before any job ran leaves nothing behind."""
    for item_id in run.uploads:
        ctx.gallery.delete(item_id)


def _response(ctx, checkpoints, request: Txt2ImgRequest, run: Run, outcomes,
              model_id: str | None, settings: dict) -> GenerationResponse:
    item_ids = [i for outcome in outcomes for i in outcome.item_ids]
    images = []
    if request.send_images:
        for item_id in item_ids:  # the gallery files themselves: they carry the infotext
            images.append(base64.b64encode(ctx.gallery.get(item_id).file_path.read_bytes())
                          .decode("ascii"))
        images += detected_maps(ctx, request.alwayson_scripts, run.task, run.iterations[0],
                                item_ids, settings)  # sd-webui-controlnet's maps come last
    for outcome in outcomes:
        checkpoints.remember_hash(model_id or checkpoints.default_id(),
                                  outcome.info.get("model_hash"))
    parameters = request.model_dump()
    if isinstance(request, Img2ImgRequest) and not request.include_init_images:
        parameters.update(init_images=None, mask=None)
    return GenerationResponse(images=images, parameters=parameters,
                              info=json.dumps(_info(ctx, request, run, outcomes, item_ids)))


def _constant(value: Any):
    def endpoint() -> Any:
        return value
    return endpoint


def _info(ctx, request: Txt2ImgRequest, run: Run, outcomes, item_ids: list[int]) -> dict:
    """A1111's `info` object (sent as a JSON string)."""
    seeds = [s for o in outcomes for s in (o.info.get("seeds") or [])]
    infotexts = [t for o in outcomes for t in (o.info.get("infotexts") or [])]
    first = outcomes[0].info if outcomes else {}
    n = len(seeds)
    width = height = None
    if item_ids:
        item = ctx.gallery.get(item_ids[0])
        width, height = item.width, item.height
    schedule = first.get("schedule_type")
    return {
        "prompt": request.prompt, "all_prompts": [request.prompt] * n,
        "negative_prompt": request.negative_prompt,
        "all_negative_prompts": [request.negative_prompt] * n,
        "seed": run.iterations[0]["seed"], "all_seeds": seeds,
        "subseed": -1, "all_subseeds": [-1] * n, "subseed_strength": 0,
        "width": width or request.width, "height": height or request.height,
        "sampler_name": first.get("sampler") or request.sampler_name,
        "scheduler": schedule or "Automatic",
        "cfg_scale": request.cfg_scale, "steps": request.steps,
        "batch_size": request.batch_size, "restore_faces": False, "face_restoration_model": None,
        "sd_model_name": first.get("model"), "sd_model_hash": first.get("model_hash"),
        "sd_vae_name": None, "sd_vae_hash": None,
        "seed_resize_from_w": -1, "seed_resize_from_h": -1,
        "denoising_strength": request.denoising_strength if run.task != "txt2img" else None,
        "extra_generation_params": {"Schedule type": schedule} if schedule else {},
        "index_of_first_image": 0, "infotexts": infotexts, "styles": request.styles or [],
        "job_timestamp": run.timestamp, "clip_skip": run.iterations[0].get("clip_skip", 1),
        "is_using_inpainting_conditioning": False, "version": "GenStudio",
        # GenStudio's own: where the images went, and what happened to the runs.
        "task": run.task, "gallery_ids": item_ids, "interrupted": run.interrupted,
        "skipped_runs": run.skips, "queued": True,
        "job_ids": list(run.job_ids),
        "warnings": sorted({w for o in outcomes for w in (o.info.get("warnings") or [])}),
    }
